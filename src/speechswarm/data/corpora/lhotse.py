"""lhotse CutSets (JSONL, or JSONL.gz) in, and a manifest out as one, without lhotse.

    speechswarm prepare lhotse data/manifests/librispeech_cuts_dev-clean.jsonl.gz --out dev.jsonl
    speechswarm manifest export --format lhotse --manifest dev.jsonl --out dev_cuts.jsonl.gz

Reading: one cut (a `MonoCut` dict, as `CutSet.to_file` writes it) per line becomes one
utterance: id = the cut's id, audio = its recording's file source (relative paths from the
manifest's folder), offset = the cut's `start`, duration = its `duration`, text = its
supervisions' texts in time order joined by spaces, speaker = the first supervision's
speaker, extra = the cut's `custom` (flat strings and numbers). A cut of another type
(MixedCut, PaddingCut, MultiCut), with no file source (url, command, memory), or with no
supervision text is a problem (`unsupported_cut`, `unsupported_audio`, `empty_text`).

Writing: one MonoCut per utterance with one supervision covering it; a recording per audio
file (its header gives `sampling_rate` and `num_samples`), shared by the utterances cut from
it; `custom` = the utterance's extra. Reading what was written gives the manifest back.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import soundfile as sf

from speechswarm.data.corpora import (
    Candidate,
    ImportResult,
    build_result,
    portable_path,
    require_file,
)
from speechswarm.data.manifest import Utterance
from speechswarm.data.text import DEFAULT_ALPHABET
from speechswarm.errors import DataError


def _open_text(path: Path, mode: str):
    """A text stream of `path`, gzip-compressed when its name ends in .gz."""
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


class _UnsupportedSource(ValueError):
    """A recording whose audio is not a file we can open (url, command, memory)."""


def _file_source(recording: dict, channel: int) -> str:
    """The path of the recording's file source holding `channel`; _UnsupportedSource if that
    source is not a file, ValueError if none holds the channel."""
    sources = recording["sources"]
    for source in sources:
        channels = source.get("channels") or [0]
        if channel in channels or len(sources) == 1:
            if source["type"] != "file":
                raise _UnsupportedSource(f"a {source['type']!r} audio source, not a file")
            return str(source["source"])
    raise ValueError(f"no audio source holds channel {channel}")


def _candidate(cut: dict, base: Path) -> Candidate:
    """One MonoCut dict -> Candidate; KeyError/TypeError/ValueError on a bad cut."""
    audio = base / Path(_file_source(cut["recording"], int(cut.get("channel") or 0)))
    sups = sorted(cut.get("supervisions") or [], key=lambda s: float(s.get("start", 0.0)))
    text = " ".join(str(s["text"]) for s in sups if s.get("text"))
    custom = cut.get("custom") or {}
    return Candidate(
        id=str(cut["id"]),
        audio=audio,
        raw_text=text,
        speaker=str(sups[0].get("speaker") or "") if sups else "",
        extra={k: v for k, v in custom.items() if isinstance(v, str | int | float | bool)},
        offset=float(cut.get("start") or 0.0),
        duration=float(cut["duration"]),
    )


def _cut_problem(cut: dict) -> str:
    """Why this cut cannot be imported ("" if it can, as far as its type and source go)."""
    kind = cut.get("type", "MonoCut")  # cuts written before lhotse 1.0 carry no type
    if kind != "MonoCut" or "tracks" in cut:
        return f"unsupported_cut: {cut.get('id', '?')} is a {kind}; only MonoCuts are read"
    if "recording" not in cut:
        return f"unsupported_cut: {cut.get('id', '?')} has no recording"
    return ""


def prepare_lhotse(
    src: str | os.PathLike,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """Every MonoCut of the lhotse CutSet file `src` (.jsonl or .jsonl.gz, file order)."""
    manifest = require_file(src, "lhotse", "a lhotse CutSet (cuts.jsonl or cuts.jsonl.gz)")
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    try:
        with _open_text(manifest, "r") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{manifest}:{lineno}"
                try:
                    cut = json.loads(line)
                    reason = _cut_problem(cut)
                    if reason:
                        problems.append((where, reason))
                        continue
                    cands.append(_candidate(cut, manifest.parent))
                except json.JSONDecodeError as e:
                    problems.append((where, f"bad_line: not JSON ({e.msg})"))
                except _UnsupportedSource as e:
                    problems.append((where, f"unsupported_audio: {e}"))
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    problems.append((where, f"bad_line: {e!r}"))
    except (OSError, EOFError, UnicodeDecodeError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"lhotse: cannot read {manifest} ({e})") from e
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)


def _recording(audio: str, rec_id: str, where: Path) -> dict:
    try:
        info = sf.info(audio)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(f"lhotse export: cannot read the audio header of {audio} ({e})") from e
    return {
        "id": rec_id,
        "sources": [
            {
                "type": "file",
                "channels": list(range(info.channels)),
                "source": portable_path(audio, where),
            }
        ],
        "sampling_rate": info.samplerate,
        "num_samples": info.frames,
        "duration": round(info.frames / info.samplerate, 6),
        "channel_ids": list(range(info.channels)),
    }


def _cut(utt: Utterance, recording: dict) -> dict:
    supervision = {
        "id": utt.id,
        "recording_id": recording["id"],
        "start": 0.0,
        "duration": utt.duration,
        "channel": 0,
        "text": utt.text,
    }
    if utt.speaker:
        supervision["speaker"] = utt.speaker
    cut = {
        "id": utt.id,
        "start": utt.offset,
        "duration": utt.duration,
        "channel": 0,
        "supervisions": [supervision],
        "recording": recording,
    }
    if utt.extra:
        cut["custom"] = dict(utt.extra)
    return cut | {"type": "MonoCut"}


def export_lhotse(utts: list[Utterance], out: str | os.PathLike) -> int:
    """Write `utts` as a lhotse CutSet at `out` (.jsonl.gz: gzip, else plain JSONL),
    atomically; audio paths relative to `out`'s folder when under it. Returns the count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()
    recordings: dict[str, dict] = {}  # audio path -> recording dict
    rec_ids: set[str] = set()
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as raw:
            # mtime=0, no file name in the header: the same manifest gives the same bytes.
            gz = out.suffix == ".gz"
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw as f:
                for utt in utts:
                    if utt.audio not in recordings:
                        rec_id = _unique(Path(utt.audio).stem, rec_ids)
                        recordings[utt.audio] = _recording(utt.audio, rec_id, base)
                    cut = _cut(utt, recordings[utt.audio])
                    f.write((json.dumps(cut, ensure_ascii=False) + "\n").encode("utf-8"))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(utts)


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`, ... : the first not in `taken` (which it joins)."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate
