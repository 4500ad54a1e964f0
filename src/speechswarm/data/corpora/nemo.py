"""NVIDIA NeMo ASR manifests: JSON lines with `audio_filepath`, `duration`, `text`.

    speechswarm prepare nemo /data/an4/train_manifest.json --out an4.jsonl
    speechswarm manifest export --format nemo --manifest dev.jsonl --out dev_nemo.json

Optional keys: `offset` (seconds into the file) and `speaker`. Relative paths are taken
from the manifest's folder. Durations: the audio header is always read (so missing or
unreadable files are reported); without an `offset` the header's length is used, with
one the record's `duration` (a segment of a longer file) is kept. Utterance id: the record's
`id` where it has one, else the audio file name without suffix, plus `_<offset in ms>` for
segments (several segments of one file stay distinct). Other string/number keys of the
record are copied to `extra`.

`export_nemo` writes one record per utterance: `audio_filepath` (relative to the output's
folder when under it), `duration`, `text`, `offset` and `speaker` where set, `id`, and the
extra fields beside them; `prepare_nemo` reads it back unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from speechswarm.atomic import atomic_open
from speechswarm.data.corpora import (
    Candidate,
    ImportResult,
    build_result,
    portable_path,
    require_file,
)
from speechswarm.data.manifest import Utterance
from speechswarm.data.text import DEFAULT_ALPHABET

_KNOWN_KEYS = {"audio_filepath", "duration", "text", "offset", "speaker", "id"}


def _candidate(record: dict, base: Path) -> Candidate:
    """One manifest record -> Candidate; KeyError/TypeError/ValueError on a bad record."""
    audio = base / Path(str(record["audio_filepath"]))
    offset = float(record.get("offset") or 0.0)
    duration = float(record["duration"]) if offset and "duration" in record else None
    utt_id = audio.stem if not offset else f"{audio.stem}_{round(offset * 1000):08d}"
    utt_id = str(record.get("id") or utt_id)
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


def nemo_record(utt: Utterance, base_dir: Path) -> dict:
    """One utterance as a NeMo manifest record (audio path relative to `base_dir` if under it)."""
    record = {
        "audio_filepath": portable_path(utt.audio, base_dir),
        "duration": utt.duration,
        "text": utt.text,
    }
    if utt.offset:
        record["offset"] = utt.offset
    if utt.speaker:
        record["speaker"] = utt.speaker
    record["id"] = utt.id
    return {k: v for k, v in utt.extra.items() if k not in _KNOWN_KEYS} | record


def export_nemo(utts: list[Utterance], out: str | os.PathLike) -> int:
    """Write `utts` as a NeMo JSON-lines manifest at `out`, atomically; returns the count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base_dir = out.parent.resolve()
    with atomic_open(out) as f:
        for utt in utts:
            f.write(json.dumps(nemo_record(utt, base_dir), ensure_ascii=False) + "\n")
    return len(utts)
