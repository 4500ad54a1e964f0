"""Check a manifest before training: audio that loads, text the tokenizer covers, CTC room.

    speechswarm validate data/train.jsonl          # exit 1 and report.json if anything is off

`validate_utterances` returns a `ValidationReport`: the usable utterances (`ok`), one
`Problem(id, audio, reason, detail)` per thing wrong (an utterance can have several) and
counted notes. Problem reasons (`PROBLEM_REASONS`):

- missing_file, unreadable_audio (incl. truncated files), empty_audio, nonfinite_samples
- bad_duration: `duration` or `offset` is not a finite number of seconds >= 0 (NaN, -1.5);
  too_long: longer than `max_duration` seconds (`data.max_duration` when training). Neither
  has its audio read: the manifest's numbers are wrong, or the file is too long to train on.
- empty_text; text_out_of_alphabet (detail lists the characters)
- too_short_for_ctc: CTC needs T' >= tokens + adjacent repeats (a blank must separate
  repeated tokens), T' = ceil(duration * frames_per_second / time_reduction)
- duplicate_id: the second and later occurrences of an id (the first is kept)
- duration_mismatch: the file holds more than 0.1 s LESS audio after `offset` than the
  manifest's duration. A problem, not a note: the manifest is stale or points at the wrong
  file, so the transcript may not match the audio and batch costs are computed wrongly.

Notes (counted, the utterance stays ok): resampled (file rate != sample_rate), downmixed
(more than one channel), trimmed (the file holds more than 0.1 s MORE audio than offset +
duration; only `duration` seconds are used, which is right for segments of a long
recording, so this cannot be a problem, but a whole-file manifest with many "trimmed" notes
has wrong durations). With `base_dir` (`speechswarm validate` passes the manifest's folder):
outside_folder, audio paths that lie outside it (absolute, or climbing out with `..`):
read as given (`data.manifest`), counted so that a manifest from elsewhere shows where
it reads from.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from speechswarm.atomic import atomic_open
from speechswarm.data.audio import AudioError, audio_info, read_audio
from speechswarm.data.manifest import Utterance
from speechswarm.data.text import out_of_alphabet

PROBLEM_REASONS = (
    "missing_file",
    "unreadable_audio",
    "empty_audio",
    "nonfinite_samples",
    "text_out_of_alphabet",
    "empty_text",
    "too_short_for_ctc",
    "duplicate_id",
    "duration_mismatch",
    "bad_duration",
    "too_long",
)
NOTE_REASONS = ("resampled", "downmixed", "trimmed")
DURATION_TOLERANCE = 0.1  # seconds
_CHUNK = 4096  # utterances whose audio checks are queued at once


@dataclass(frozen=True)
class Problem:
    id: str
    audio: str
    reason: str  # one of PROBLEM_REASONS
    detail: str = ""


@dataclass
class ValidationReport:
    ok: list[Utterance]
    problems: list[Problem]
    notes: dict[str, int] = field(default_factory=dict)
    num_utts: int = 0  # utterances checked

    @property
    def num_skipped(self) -> int:
        return self.num_utts - len(self.ok)

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.reason for p in self.problems).most_common())

    def summary(self) -> str:
        """One line for people: '3,102 utts (12.4 h) ok, 2 skipped: missing_file 1, ...'."""
        seconds = sum(u.duration for u in self.ok)
        line = (
            f"{len(self.ok):,} utts ({_format_duration(seconds)}) ok, {self.num_skipped:,} skipped"
        )
        if self.problems:
            line += ": " + ", ".join(f"{r} {n:,}" for r, n in self.problem_counts().items())
        notes = {k: n for k, n in self.notes.items() if n}
        if notes:
            line += "; notes: " + ", ".join(f"{k} {n:,}" for k, n in notes.items())
        return line

    def to_json(self) -> dict:
        return {
            "num_utts": self.num_utts,
            "num_ok": len(self.ok),
            "num_skipped": self.num_skipped,
            "hours_ok": round(sum(u.duration for u in self.ok) / 3600, 4),
            "problem_counts": self.problem_counts(),
            "notes": dict(self.notes),
            "problems": [asdict(p) for p in self.problems],
            "summary": self.summary(),
        }

    def write(self, path: str | os.PathLike) -> None:
        """The JSON report, written atomically (temp file + rename)."""
        with atomic_open(path) as f:
            json.dump(self.to_json(), f, indent=1, ensure_ascii=False)


def output_frames(duration: float, frames_per_second: float, time_reduction: int) -> int:
    """T' = ceil(duration * frames_per_second / time_reduction): model output frames.
    The product is rounded to 1e-6 first so 0.3 s * 100 is 30 frames, not 31."""
    return math.ceil(round(duration * frames_per_second, 6) / time_reduction)


def ctc_min_frames(tokens: Sequence[int]) -> int:
    """Fewest output frames CTC can align `tokens` to: one per token plus a blank between
    each pair of equal neighbours ('hello' -> 5 + 1 = 6)."""
    repeats = sum(1 for a, b in zip(tokens, tokens[1:], strict=False) if a == b)
    return len(tokens) + repeats


def validate_utterances(
    utts: Sequence[Utterance],
    tokenizer,
    *,
    sample_rate: int = 16000,
    frames_per_second: float = 100.0,
    time_reduction: int = 2,
    check_audio: bool = True,
    max_duration: float | None = None,
    workers: int = 2,
    progress: bool = False,
    base_dir: Path | None = None,
) -> ValidationReport:
    """Check every utterance (see module docstring); audio files are read in `workers`
    threads (decoding releases the GIL) with a progress bar when `progress`.
    `check_audio=False` checks only ids, durations and text (no file is opened).
    `base_dir`: also count audio paths outside this folder (note outside_folder)."""
    utts = list(utts)
    first_seen: dict[str, int] = {}
    early = []  # per utterance: a problem found without its audio (duplicate, duration)
    for i, u in enumerate(utts):
        early.append(_check_record(u, first_seen, max_duration))
        first_seen.setdefault(u.id, i)
    to_check = [u for u, e in zip(utts, early, strict=True) if e is None and check_audio]
    audio_results = iter(_check_all_audio(to_check, sample_rate, workers, progress))
    oov_cache: dict[str, bool] = {}
    ok, problems, notes = [], [], Counter({k: 0 for k in NOTE_REASONS})
    for u, problem in zip(utts, early, strict=True):
        if problem is not None:
            found = [problem]
        else:
            found, seconds = [], u.duration
            if check_audio:
                audio_problems, utt_notes, seconds = next(audio_results)
                found += audio_problems
                notes.update(utt_notes)
            # broken audio has no trustworthy length: report it, skip the CTC length check
            seconds = None if found else seconds
            found += _check_text(
                u, seconds, tokenizer, oov_cache, frames_per_second, time_reduction
            )
        problems += found
        if not found:
            ok.append(u)
    if base_dir is not None:
        notes["outside_folder"] = sum(not _is_under(u.audio, base_dir) for u in utts)
    return ValidationReport(ok, problems, dict(notes), len(utts))


def _is_under(audio: str, folder: Path) -> bool:
    """Whether `audio` lies in `folder` once "a/../b" is folded (links are not followed)."""
    return Path(os.path.normpath(os.path.abspath(audio))).is_relative_to(folder)


def _check_record(u: Utterance, first_seen: dict[str, int], max_duration: float | None):
    """The problem of `u` that needs no audio (a repeated id, a duration that is not one or
    too long), or None."""
    if u.id in first_seen:
        detail = f"first seen at record {first_seen[u.id] + 1} of the manifest"
        return Problem(u.id, u.audio, "duplicate_id", detail)
    for name, value in (("duration", u.duration), ("offset", u.offset)):
        if not (math.isfinite(value) and value >= 0):
            detail = f"{name} {value} s is not a finite number >= 0; re-run the preparer"
            return Problem(u.id, u.audio, "bad_duration", detail)
    if max_duration is not None and u.duration > max_duration:
        detail = f"{u.duration:.2f} s > data.max_duration={max_duration} s"
        return Problem(u.id, u.audio, "too_long", detail)
    return None


def _check_all_audio(utts: list[Utterance], sample_rate: int, workers: int, progress: bool):
    """(problems, notes, seconds) per utterance, in order."""
    bar = tqdm(total=len(utts), unit="file", desc="checking audio", disable=not progress)
    with bar, ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(utts), _CHUNK):  # chunks: not a million futures at once
            chunk = utts[start : start + _CHUNK]
            for result in pool.map(lambda u: _check_audio(u, sample_rate), chunk):
                bar.update()
                yield result


def _check_audio(u: Utterance, sample_rate: int) -> tuple[list[Problem], list[str], float]:
    try:
        file_rate, frames, channels = audio_info(u.audio)
        data, _ = read_audio(u.audio, u.offset, u.duration)  # (S, C): decodes, checks NaN
    except AudioError as e:
        return [Problem(u.id, u.audio, e.reason, e.detail)], [], u.duration
    notes = []
    if file_rate != sample_rate:
        notes.append("resampled")
    if channels > 1:
        notes.append("downmixed")
    available = frames / file_rate - u.offset  # seconds of audio after the offset
    if available < u.duration - DURATION_TOLERANCE:
        detail = (
            f"manifest says {u.duration:.2f} s from offset {u.offset:.2f} s, the file holds "
            f"{available:.2f} s; re-run the preparer for this corpus"
        )
        return [Problem(u.id, u.audio, "duration_mismatch", detail)], notes, available
    if available > u.duration + DURATION_TOLERANCE:
        notes.append("trimmed")
    return [], notes, len(data) / file_rate


def _check_text(
    u: Utterance, seconds: float | None, tokenizer, oov_cache, frames_per_second, time_reduction
) -> list[Problem]:
    """Text problems; the CTC length check only when `seconds` (of usable audio) is known."""
    if not u.text.strip():
        return [Problem(u.id, u.audio, "empty_text", "the transcript is empty")]
    oov = _out_of_vocabulary(u.text, tokenizer, oov_cache)
    if oov:
        chars = " ".join(repr(c) for c in sorted(oov))
        detail = f"characters {chars} not in the tokenizer's alphabet; normalise the text"
        return [Problem(u.id, u.audio, "text_out_of_alphabet", detail)]
    if seconds is None:
        return []
    needed = ctc_min_frames(tokenizer.encode(u.text))
    have = output_frames(seconds, frames_per_second, time_reduction)
    if have < needed:
        detail = (
            f"{seconds:.2f} s gives {have} output frames, the transcript needs {needed} "
            "(tokens + repeats); the audio is cut or the transcript is wrong"
        )
        return [Problem(u.id, u.audio, "too_short_for_ctc", detail)]
    return []


def _out_of_vocabulary(text: str, tokenizer, cache: dict[str, bool]) -> set[str]:
    """Characters of `text` the tokenizer cannot encode: outside a CharTokenizer's alphabet,
    or encoded to <unk> by a subword tokenizer."""
    alphabet = getattr(tokenizer, "alphabet", None)
    if alphabet is not None:
        return out_of_alphabet(text, alphabet)
    unk = tokenizer.tokens.index("<unk>") if "<unk>" in tokenizer.tokens else None
    for c in set(text) - set(cache):
        try:
            cache[c] = c != " " and unk is not None and unk in tokenizer.encode(c)
        except ValueError:
            cache[c] = True
    return {c for c in set(text) if cache[c]}


def _format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
