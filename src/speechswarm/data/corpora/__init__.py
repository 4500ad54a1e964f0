"""Corpus importers: a corpus as distributed -> a list of `Utterance`s (the CLI writes them).

    speechswarm prepare librispeech /data/LibriSpeech/dev-clean --out data/dev.jsonl

Every `prepare_<name>(src, *, alphabet, digits, workers, ...) -> ImportResult` reads only
(nothing is written, so re-running is safe and gives the same result) and:

- normalises each transcript with `normalize_text(raw, alphabet, digits)`, keeping the
  original in `extra["raw_text"]` when normalisation changed it;
- takes durations from the audio headers (`soundfile.info`: frames / sample rate), read by
  `workers` threads;
- never drops anything silently: an utterance whose audio is missing or unreadable, whose
  transcript is missing or normalises to nothing, or whose id repeats an earlier one, is
  left out of `utts` and listed in `problems` as `(where, reason)`: `where` is a file path
  (or `file:line`), `reason` starts with one of `missing_file`, `unreadable_audio`,
  `empty_audio`, `missing_transcript`, `empty_text`, `duplicate_id`, `bad_line`,
  `offset_beyond_end`, `unsupported_audio`, `unsupported_cut`, then `: detail`;
- counts the transcripts' characters outside the alphabet (`ImportResult.outside`), which
  normalisation folded, spelled or removed (`alphabet="auto"`: only punctuation and
  symbols), so the report says what changed.

`IMPORTERS` maps the CLI's format names to the functions; `prepare(format, src, **kw)`
dispatches. `EXPORTERS` writes a manifest in a format its importer reads back unchanged
(`speechswarm manifest export`). Shared machinery (`Candidate`, `build_result`, `probe_durations`) sits here,
above the importer imports at the bottom, because every importer needs it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from speechswarm.data.manifest import Utterance
from speechswarm.data.text import DEFAULT_ALPHABET, normalize_text, outside_alphabet
from speechswarm.errors import InputNotFoundError, UsageError


@dataclass(frozen=True)
class ImportResult:
    """What an importer found: usable utterances and everything it had to leave out."""

    utts: list[Utterance]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    # {character: count} of the kept transcripts' characters outside the alphabet, which
    # normalisation folded, spelled or removed (`text.outside_alphabet`)
    outside: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for people: `3,102 utts, 12.4 h audio, 2 problems`."""
        hours = sum(u.duration for u in self.utts) / 3600.0
        return f"{len(self.utts):,} utts, {hours:.1f} h audio, {len(self.problems):,} problems"


@dataclass(frozen=True)
class Candidate:
    """An utterance as a layout parser found it, before audio probing and normalisation.

    `duration=None`: the audio file's length minus `offset`; a number: a segment of that
    many seconds starting at `offset` (NeMo manifests with offsets).
    """

    id: str
    audio: Path
    raw_text: str
    speaker: str = ""
    extra: dict = field(default_factory=dict)
    offset: float = 0.0
    duration: float | None = None


def probe_duration(path: Path) -> tuple[float, str]:
    """(seconds, "") for a readable audio file, or (0.0, reason) saying what is wrong."""
    if not path.is_file():
        return 0.0, "missing_file"
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        return 0.0, f"unreadable_audio: {e}"
    if info.frames <= 0 or info.samplerate <= 0:
        return 0.0, "empty_audio: no samples"
    return info.frames / info.samplerate, ""


def probe_durations(paths: Sequence[Path], workers: int = 1) -> list[tuple[float, str]]:
    """`probe_duration` for every path, in order, on `workers` threads (header reads are
    I/O-bound and libsndfile releases the GIL, so threads help on network disks)."""
    progress = dict(total=len(paths), desc="reading audio headers", unit="file", disable=None)
    if workers <= 1:
        return [probe_duration(p) for p in tqdm(paths, **progress)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(probe_duration, paths), **progress))


def build_result(
    candidates: Sequence[Candidate],
    problems: list[tuple[str, str]],
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """Probe audio, normalise text, drop (and report) what cannot be used."""
    problems = list(problems)
    probes = probe_durations([c.audio for c in candidates], workers)
    outside: Counter[str] = Counter()
    utts: list[Utterance] = []
    seen: dict[str, Path] = {}
    for cand, (file_seconds, reason) in zip(candidates, probes, strict=True):
        where = str(cand.audio)
        if reason:
            problems.append((where, reason))
            continue
        if cand.id in seen:
            problems.append((where, f"duplicate_id: {cand.id} (also {seen[cand.id]})"))
            continue
        if cand.offset >= file_seconds:
            problems.append(
                (where, f"offset_beyond_end: offset {cand.offset}s >= {file_seconds:.3f}s")
            )
            continue
        text = normalize_text(cand.raw_text, alphabet, digits)
        if not text:
            problems.append((where, f"empty_text: transcript {cand.raw_text!r}"))
            continue
        outside.update(outside_alphabet(cand.raw_text, alphabet, digits))
        extra = dict(cand.extra)
        if text != cand.raw_text:
            extra["raw_text"] = cand.raw_text
        duration = cand.duration if cand.duration is not None else file_seconds - cand.offset
        seen[cand.id] = cand.audio
        utts.append(
            Utterance(
                id=cand.id,
                audio=str(cand.audio),
                duration=round(duration, 6),  # microseconds; avoids float noise in JSON
                text=text,
                speaker=cand.speaker,
                offset=cand.offset,
                extra=extra,
            )
        )
    return ImportResult(utts, problems, dict(outside.most_common()))


def require_dir(src: str | os.PathLike, corpus: str, hint: str) -> Path:
    """`src` as an absolute Path, or an InputNotFoundError saying what was expected there."""
    path = Path(src).expanduser().resolve()
    if not path.is_dir():
        raise InputNotFoundError(f"{corpus}: {src} is not a folder; expected {hint}")
    return path


def portable_path(audio: str | os.PathLike, base_dir: Path) -> str:
    """`audio` relative to `base_dir` when it lies under it (a corpus folder moves as a
    whole), else absolute: how manifests and exports name audio files."""
    audio = Path(audio).resolve()
    try:
        return str(audio.relative_to(base_dir))
    except ValueError:
        return str(audio)


def require_file(src: str | os.PathLike, corpus: str, hint: str) -> Path:
    path = Path(src).expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(f"{corpus}: {src} is not a file; expected {hint}")
    return path


# Importers are imported after the shared machinery above, which they use.
from speechswarm.data.corpora.commonvoice import prepare_commonvoice  # noqa: E402
from speechswarm.data.corpora.csv_manifest import prepare_csv_manifest  # noqa: E402
from speechswarm.data.corpora.kaldi import prepare_kaldi  # noqa: E402
from speechswarm.data.corpora.lhotse import export_lhotse, prepare_lhotse  # noqa: E402
from speechswarm.data.corpora.librispeech import prepare_librispeech  # noqa: E402
from speechswarm.data.corpora.ljspeech import prepare_ljspeech  # noqa: E402
from speechswarm.data.corpora.nemo import export_nemo, prepare_nemo  # noqa: E402
from speechswarm.data.corpora.userlibri import (  # noqa: E402
    prepare_userlibri,
    userlibri_lm_metadata,
    userlibri_lm_texts,
)

IMPORTERS: dict[str, Callable[..., ImportResult]] = {
    "librispeech": prepare_librispeech,
    "ljspeech": prepare_ljspeech,
    "userlibri": prepare_userlibri,
    "commonvoice": prepare_commonvoice,
    "csv": prepare_csv_manifest,
    "nemo": prepare_nemo,
    "kaldi": prepare_kaldi,
    "lhotse": prepare_lhotse,
}

# Formats a manifest can be written in: `fn(utts, out) -> count`, read back by IMPORTERS.
EXPORTERS: dict[str, Callable[[list[Utterance], str | os.PathLike], int]] = {
    "nemo": export_nemo,
    "lhotse": export_lhotse,
}


def prepare(format: str, src: str | os.PathLike, **kwargs) -> ImportResult:
    """Run the importer registered as `format` (a key of `IMPORTERS`) on `src`."""
    if format not in IMPORTERS:
        raise UsageError(f"unknown corpus format {format!r}; choose one of {sorted(IMPORTERS)}")
    return IMPORTERS[format](src, **kwargs)


__all__ = [
    "EXPORTERS",
    "IMPORTERS",
    "Candidate",
    "ImportResult",
    "build_result",
    "export_lhotse",
    "export_nemo",
    "portable_path",
    "prepare",
    "prepare_commonvoice",
    "prepare_csv_manifest",
    "prepare_kaldi",
    "prepare_lhotse",
    "prepare_librispeech",
    "prepare_ljspeech",
    "prepare_nemo",
    "prepare_userlibri",
    "probe_duration",
    "probe_durations",
    "userlibri_lm_metadata",
    "userlibri_lm_texts",
]
