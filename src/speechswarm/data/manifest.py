"""Utterance manifests: one JSON object per line, one line per utterance.

    speechswarm prepare librispeech /data/LibriSpeech/dev-clean --out dev.jsonl

A record holds `id`, `audio` (path), `duration` (seconds), `text` (normalised transcript),
`speaker`, `offset` (seconds into the audio file) and free-form string/number fields in
`extra` (chapter, book, client, split, voice, ...). Audio paths are written relative to the
manifest's folder when the audio lies under it, so a corpus folder can be moved as a whole;
`read_manifest` always returns absolute paths.

Paths from elsewhere: a relative path is read from the manifest's folder, `../audio/a.flac`
included; an absolute path is read as it is (NeMo and lhotse manifests hold absolute
paths). Either may point anywhere the user can read, so a manifest from someone else can
make a run read any audio file the user can: `speechswarm validate` counts the paths that
lie outside the manifest's folder (note outside_folder). Audio paths are only ever read,
never written to: shards, exports and reports go where the command's --out says, and a
shard's member names come from the ids made safe (`data.shards.shard_key`). A device or
FIFO (/dev/zero, a named pipe) is refused unopened (`data.audio`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from speechswarm.atomic import atomic_open
from speechswarm.errors import DataError, InputNotFoundError

_CORE_KEYS = ("id", "audio", "duration", "text", "speaker", "offset")


@dataclass(frozen=True)
class Utterance:
    """One utterance. `duration` and `offset` are seconds; `audio` is a file path."""

    id: str
    audio: str
    duration: float
    text: str
    speaker: str = ""
    offset: float = 0.0
    extra: dict = field(default_factory=dict)

    def with_(self, **changes) -> Utterance:
        return replace(self, **changes)


class ManifestError(DataError):
    """A manifest line that cannot be read; the message names file and line."""


def utterance_to_json(utt: Utterance, base_dir: Path | None = None) -> dict:
    record = asdict(utt)
    extra = record.pop("extra")
    if base_dir is not None:
        record["audio"] = _relative_if_under(Path(utt.audio), base_dir)
    record.update(extra)  # extras sit flat beside the core keys, as in NeMo/lhotse manifests
    return record


def utterance_from_json(record: dict, base_dir: Path | None = None) -> Utterance:
    if not isinstance(record, dict):  # `"id" in "an id"` would look for a substring
        names = {str: "string", list: "list", int: "number", float: "number"}
        raise TypeError(f"a JSON {names.get(type(record), type(record).__name__)}, not an object")
    missing = [k for k in ("id", "audio", "duration", "text") if k not in record]
    if missing:
        raise KeyError(f"missing key(s) {missing}")
    audio = Path(str(record["audio"]))
    if base_dir is not None and not audio.is_absolute():
        audio = base_dir / audio
    extra = {k: v for k, v in record.items() if k not in _CORE_KEYS}
    return Utterance(
        id=str(record["id"]),
        audio=str(audio),
        duration=float(record["duration"]),
        text=str(record["text"]),
        speaker=str(record.get("speaker", "")),
        offset=float(record.get("offset", 0.0)),
        extra=extra,
    )


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> int:
    """Write `utts` atomically (temp file + rename) and return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base_dir = path.parent.resolve()
    n = 0
    with atomic_open(path) as f:
        for utt in utts:
            f.write(json.dumps(utterance_to_json(utt, base_dir), ensure_ascii=False))
            f.write("\n")
            n += 1
    return n


def iter_manifest(path: str | os.PathLike) -> Iterator[Utterance]:
    path = Path(path)
    base_dir = path.parent.resolve()
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named, not a traceback
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); re-save the manifest as UTF-8"
                ) from e
            if not line.strip():
                continue
            try:
                yield utterance_from_json(json.loads(line), base_dir)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ManifestError(f"{path}:{lineno}: not a manifest record ({e})") from e


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """All utterances of a JSONL manifest, audio paths made absolute."""
    if not Path(path).is_file():
        raise InputNotFoundError(
            f"manifest {path} does not exist; make one with `speechswarm prepare` or `speechswarm synth`"
        )
    return list(iter_manifest(path))


def total_hours(utts: Iterable[Utterance]) -> float:
    return sum(u.duration for u in utts) / 3600.0


def _relative_if_under(audio: Path, base_dir: Path) -> str:
    audio_abs = audio if audio.is_absolute() else audio.resolve()
    try:
        return str(audio_abs.relative_to(base_dir))
    except ValueError:
        return str(audio_abs)


def spread_subset(utts: list[Utterance], n: int) -> list[Utterance]:
    """At most `n` utterances taken at even intervals, in order: a capped dev set that keeps
    every part of a manifest sorted by speaker or voice (the first n would be one voice)."""
    if n <= 0 or len(utts) <= n:
        return list(utts)
    step = len(utts) / n
    return [utts[int(i * step)] for i in range(n)]
