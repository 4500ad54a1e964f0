"""deepspeech.pytorch / MLPerf-style CSV manifests: one `audio_path,transcript_path` a line.

    speechswarm prepare csv /data/libri_train_manifest.csv --out train.jsonl

No header. Paths are absolute or relative to the CSV's folder; the transcript file holds
the utterance's text (surrounding whitespace ignored). Utterance id: the audio file name
without its suffix (two lines naming the same stem: the second is a `duplicate_id`
problem). No speaker information; extra is empty.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from speechswarm.data.corpora import Candidate, ImportResult, build_result, require_file
from speechswarm.data.text import DEFAULT_ALPHABET


def prepare_csv_manifest(
    src: str | os.PathLike,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """Every line of the CSV file `src` (file order)."""
    manifest = require_file(src, "csv", "a CSV file of audio_path,transcript_path lines")
    base = manifest.parent
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    with open(manifest, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            where = f"{manifest}:{lineno}"
            if len(row) != 2:
                problems.append((where, f"bad_line: expected 2 fields, got {len(row)}"))
                continue
            audio = base / Path(row[0].strip())  # an absolute row[0] replaces base
            transcript = base / Path(row[1].strip())
            if not transcript.is_file():
                problems.append((str(transcript), f"missing_transcript: named on line {lineno}"))
                continue
            cands.append(
                Candidate(
                    id=audio.stem,
                    audio=audio,
                    raw_text=transcript.read_text(encoding="utf-8").strip(),
                )
            )
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)
