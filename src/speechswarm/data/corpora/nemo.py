"""NVIDIA NeMo ASR manifests: JSON lines with `audio_filepath`, `duration`, `text`.

    speechswarm prepare nemo /data/an4/train_manifest.json --out an4.jsonl

Optional keys: `offset` (seconds into the file) and `speaker`. Relative paths are taken
from the manifest's folder. Durations: the audio header is always read (so missing or
unreadable files are reported); without an `offset` the header's length is used, with
one the record's `duration` (a segment of a longer file) is kept. Utterance id: the audio
file name without suffix, plus `_<offset in ms>` for segments (several segments of one
file stay distinct). Other string/number keys of the record are copied to `extra`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from speechswarm.data.corpora import Candidate, ImportResult, build_result, require_file
from speechswarm.data.text import DEFAULT_ALPHABET

_KNOWN_KEYS = {"audio_filepath", "duration", "text", "offset", "speaker"}


def _candidate(record: dict, base: Path) -> Candidate:
    """One manifest record -> Candidate; KeyError/TypeError/ValueError on a bad record."""
    audio = base / Path(str(record["audio_filepath"]))
    offset = float(record.get("offset") or 0.0)
    duration = float(record["duration"]) if offset and "duration" in record else None
    utt_id = audio.stem if not offset else f"{audio.stem}_{round(offset * 1000):08d}"
    extra = {  # manifests keep flat strings and numbers; nested values are dropped
        k: v
        for k, v in record.items()
        if k not in _KNOWN_KEYS and isinstance(v, str | int | float | bool)
    }
    return Candidate(
        id=utt_id,
        audio=audio,
        raw_text=str(record["text"]),
        speaker=str(record.get("speaker", "")),
        extra=extra,
        offset=offset,
        duration=duration,
    )


def prepare_nemo(
    src: str | os.PathLike,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """Every record of the NeMo JSONL manifest `src` (file order)."""
    manifest = require_file(src, "nemo", "a NeMo JSON-lines manifest")
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    with open(manifest, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                cands.append(_candidate(record, manifest.parent))
            except json.JSONDecodeError as e:
                problems.append((f"{manifest}:{lineno}", f"bad_line: not JSON ({e.msg})"))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                problems.append((f"{manifest}:{lineno}", f"bad_line: {e!r}"))
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)
