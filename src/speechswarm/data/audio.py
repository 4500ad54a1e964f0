"""Audio files to float32 mono waves at the corpus sample rate.

    wave = load_audio("a.flac", 16000)            # (S,) float32, mono, 16 kHz

Reading goes through soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...); multichannel audio is
down-mixed by the mean over channels; other sample rates are resampled with soxr ("HQ").
Every failure is an `AudioError` whose `reason` is one of `AUDIO_REASONS`, so the dataset can
skip and count a bad file and `speechswarm validate` can report it by name. Truncated WAV and
FLAC files are caught (unreadable_audio); a truncated OGG or MP3 file decodes as a shorter
one, which `validate_utterances` reports as duration_mismatch.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speechswarm.errors import ConfigError, SpeechswarmError

AUDIO_REASONS = (
    "missing_file",
    "unreadable_audio",
    "empty_audio",
    "nonfinite_samples",
    "bad_duration",
    "too_long",
)

_HINTS = {
    "missing_file": "check the path (a manifest's audio paths are relative to its folder)",
    "unreadable_audio": "the file is truncated or not audio; re-download or re-encode it",
    "empty_audio": "drop the utterance or fix its offset/duration",
    "nonfinite_samples": "the file holds NaN/inf samples; re-encode it from the source",
    "bad_duration": "offset and duration must be finite seconds >= 0; re-run the preparer",
    "too_long": "split it into parts (e.g. `ffmpeg -i IN -f segment -segment_time 600 "
    "part%03d.flac`) or raise SPEECHSWARM_MAX_AUDIO_SECONDS if memory allows",
}
# The most audio one read may decode. Recognising a file takes memory in proportion to its
# length (about 35 MB per minute with the demo model on a CPU, on top of ~300 MB), so an
# hours-long recording is refused by its header before a byte is decoded, not run out of
# memory on. Training utterances are capped far lower by data.max_duration.
MAX_AUDIO_SECONDS = float(os.environ.get("SPEECHSWARM_MAX_AUDIO_SECONDS", "3600") or 3600)

# libsndfile's header log for a WAV whose data chunk runs past the end of the file, e.g.
# "data : 32000 (should be 15978)". libsndfile silently clamps such files, so without this
# check a half-downloaded WAV would load as a shorter, valid-looking wave.
_WAV_SHORT_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers leave the data size at 0 or 0xFFFFFFFF ("unknown"): not truncation.
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


# What `transcribe` picks up in a folder: the formats libsndfile reads (MP3 since 1.1).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au")


def audio_files_under(root: str | os.PathLike, suffixes=AUDIO_SUFFIXES) -> list[Path]:
    """The files below folder `root` (any depth) whose suffix is in `suffixes`
    (case-insensitive), sorted by path; a folder named like an audio file is not one."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def expand_audio_paths(paths: list[str]) -> list[str]:
    """`paths` with each folder replaced by `audio_files_under` it; files, and folders
    without audio, stay as given, so the caller reports them."""
    out = []
    for path in paths:
        if not Path(path).is_dir():
            out.append(path)
            continue
        out.extend([str(f) for f in audio_files_under(path)] or [path])
    return out


class AudioError(SpeechswarmError):
    """An audio file that cannot be used; `reason` is one of `AUDIO_REASONS`."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = ""):
        if reason not in AUDIO_REASONS:
            raise ValueError(f"unknown AudioError reason {reason!r}; use one of {AUDIO_REASONS}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        what = f"{reason} ({detail})" if detail else reason
        super().__init__(f"{self.path}: {what}; {_HINTS[reason]}")


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample_rate Hz, num_frames, channels) from the file header, without decoding.

    Raises AudioError (missing_file, unreadable_audio) like `load_audio`.
    """
    info = _open_info(path)
    return int(info.samplerate), int(info.frames), int(info.channels)


def read_audio(
    path: str | os.PathLike, offset: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode `duration` seconds from `offset` at the file's own rate, all channels.

    Returns (data (S, C) float32, sample_rate Hz). `offset`/`duration` are seconds,
    converted to frames by rounding. Raises AudioError for missing, truncated or undecodable
    files, an empty selection and NaN/inf samples.
    """
    _check_exists(path)
    try:
        with sf.SoundFile(str(path)) as f:  # one open: header checks, seek, decode
            _check_wav_complete(path, f.format, f.extra_info)
            data = _decode(path, f, offset, duration)
            return data, int(f.samplerate)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, "unreadable_audio", str(e).strip()) from e


def load_audio(
    path: str | os.PathLike, sample_rate: int, offset: float = 0.0, duration: float | None = None
) -> np.ndarray:
    """(S,) float32 mono wave at `sample_rate` Hz: `duration` seconds from `offset` seconds.

    `duration=None` reads to the end of the file. Down-mixes by the channel mean, then
    resamples with soxr when the file's rate differs. Raises AudioError.
    """
    data, file_rate = read_audio(path, offset, duration)
    return to_mono_rate(data, file_rate, sample_rate)


def load_audio_bytes(data: bytes, sample_rate: int, name: str = "<bytes>") -> np.ndarray:
    """Like `load_audio` for an encoded file held in memory (a TAR shard member); `name`
    is the label errors carry."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            file_rate = f.samplerate
            frames = f.read(dtype="float32", always_2d=True)  # (S, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(name, "unreadable_audio", str(e).strip()) from e
    _check_samples(name, frames)
    return to_mono_rate(frames, file_rate, sample_rate)


def to_mono_rate(data: np.ndarray, file_rate: int, sample_rate: int) -> np.ndarray:
    """(S, C) float32 at `file_rate` -> (S',) float32 mono at `sample_rate` (soxr HQ)."""
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if file_rate != sample_rate:
        mono = soxr.resample(mono, file_rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def speed_perturb(wave: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play `wave` `factor` times faster: duration x 1/factor, every frequency x factor.

    wave: (S,) float32 at sample_rate -> (about S / factor,) float32 at the same rate. soxr
    resamples it as if it had been recorded at sample_rate * factor (pitch moves with tempo,
    as in Kaldi's and deepspeech.pytorch's speed perturbation). Runs per utterance, on the CPU.
    """
    if not factor > 0:
        raise ConfigError(f"speed_perturb: factor={factor} must be > 0 (e.g. 0.9, 1.0, 1.1)")
    if factor == 1.0:
        return wave
    return soxr.resample(wave, sample_rate * factor, sample_rate).astype(np.float32, copy=False)


def _check_exists(path: str | os.PathLike) -> None:
    if Path(path).is_dir():
        raise AudioError(path, "missing_file", "a folder, not an audio file")
    if not Path(path).is_file():
        # A FIFO, device or socket (a named pipe, /dev/zero) is never opened: reading one
        # could wait forever or never end.
        what = "not a regular file (a device, pipe or socket)" if Path(path).exists() else ""
        raise AudioError(path, "missing_file", what or "no such file")


def _open_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    _check_exists(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, "unreadable_audio", str(e).strip()) from e
    _check_wav_complete(path, info.format, info.extra_info)
    return info


def _check_wav_complete(path: str | os.PathLike, fmt: str, extra_info: str) -> None:
    if not fmt.startswith("WAV"):
        return  # FLAC/OGG/MP3 decoders fail loudly on truncation (checked while decoding)
    m = _WAV_SHORT_DATA.search(extra_info)
    if m is None:
        return
    declared, present = int(m.group(1)), int(m.group(2))
    if declared not in _UNKNOWN_WAV_SIZES and present < declared:
        raise AudioError(
            path, "unreadable_audio", f"truncated WAV: {present} of {declared} data bytes"
        )


def _decode(
    path: str | os.PathLike, f: sf.SoundFile, offset: float, duration: float | None
) -> np.ndarray:
    """(S, C) float32 frames of an open file: `duration` s (None: to the end) from `offset` s."""
    for name, value in (("offset", offset), ("duration", duration)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise AudioError(path, "bad_duration", f"{name} {value} s")
    start = max(0, round(offset * f.samplerate))
    frames = -1 if duration is None else max(0, round(duration * f.samplerate))
    if start > 0:
        if start >= f.frames:
            detail = f"offset {offset:.3f} s is past the end ({f.frames} frames)"
            raise AudioError(path, "empty_audio", detail)
        f.seek(start)
    available = f.frames - start
    wanted = available if frames < 0 else min(frames, available)
    if wanted > MAX_AUDIO_SECONDS * f.samplerate:
        seconds = wanted / f.samplerate
        length = f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.1f} s"
        detail = f"{length} > {MAX_AUDIO_SECONDS:g} s at once"
        raise AudioError(path, "too_long", detail)
    data = f.read(frames, dtype="float32", always_2d=True)  # (S, C)
    # The decoder stopped early: a damaged or truncated stream. MP3 frame counts are
    # estimates, so a short read there is not evidence of damage.
    if len(data) < wanted and f.format != "MPEG":
        raise AudioError(path, "unreadable_audio", f"decoded {len(data)} of {wanted} frames")
    _check_samples(path, data)
    return data


def _check_samples(path: str | os.PathLike, data: np.ndarray) -> None:
    if data.size == 0:
        raise AudioError(path, "empty_audio", "0 samples")
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise AudioError(path, "nonfinite_samples", f"{bad} NaN/inf of {data.size} samples")
