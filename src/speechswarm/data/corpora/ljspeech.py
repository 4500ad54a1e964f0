"""LJ Speech (keithito.com/LJ-Speech-Dataset): one speaker reading 13,100 clips.

    speechswarm prepare ljspeech /data/LJSpeech-1.1 --out lj.jsonl

Layout: `LJSpeech-1.1/metadata.csv`, pipe-separated, no header, one line per clip:
`<id>|<raw text>|<normalized text>`; quotes are literal characters (read with
QUOTE_NONE). Audio: `LJSpeech-1.1/wavs/<id>.wav`. The normalized column (numbers and
abbreviations already expanded) is used, or the raw one where it is empty. `src` may be
the `LJSpeech-1.1` folder or the folder holding it. Speaker is "LJ"; no extras.
"""

from __future__ import annotations

import csv
import os

from speechswarm.data.corpora import Candidate, ImportResult, build_result, require_dir
from speechswarm.data.text import DEFAULT_ALPHABET
from speechswarm.errors import InputNotFoundError


def prepare_ljspeech(
    src: str | os.PathLike,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """Every clip listed in `metadata.csv` (file order)."""
    hint = "the LJSpeech-1.1 folder (metadata.csv + wavs/)"
    root = require_dir(src, "ljspeech", hint)
    if not (root / "metadata.csv").is_file() and (root / "LJSpeech-1.1").is_dir():
        root = root / "LJSpeech-1.1"
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise InputNotFoundError(f"ljspeech: no metadata.csv in {root}; expected {hint}")
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    with open(metadata, encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(rows, 1):
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                problems.append((f"{metadata}:{lineno}", "bad_line: expected id|raw|normalized"))
                continue
            clip_id = row[0].strip()
            text = row[2] if len(row) > 2 and row[2].strip() else row[1]
            cands.append(
                Candidate(
                    id=clip_id,
                    audio=root / "wavs" / f"{clip_id}.wav",
                    raw_text=text,
                    speaker="LJ",
                )
            )
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)
