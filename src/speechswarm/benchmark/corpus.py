"""Synthetic benchmark audio: speech-like FLAC files and a manifest, deterministic from a seed.

    from speechswarm.benchmark.corpus import write_bench_corpus, librispeech_like_durations
    manifest = write_bench_corpus(folder, librispeech_like_durations(200, seed=0))

Speed does not depend on what is said, only on how long it is and how it compresses, so the
waves are a 100-200 Hz voice with 8 harmonics gated by a ~4 Hz syllable envelope plus noise
30 dB down (FLAC shrinks it to about half, like speech), and the transcripts are random words
at ~12 characters per second of audio (LibriSpeech reads at ~15).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from speechswarm.data.manifest import Utterance, write_manifest

# Short English words: transcripts a character tokenizer always encodes.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "was",
    "he",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "from",
]
CHARS_PER_SECOND = 12.0


def librispeech_like_durations(n: int, seed: int = 0) -> np.ndarray:
    """(n,) seconds: normal around LibriSpeech train-clean-100's mean (12.7 s, sd 3.5 s),
    clipped to [1.5, 17] s, in random (manifest) order."""
    rng = np.random.default_rng([seed, 1])
    return np.clip(rng.normal(12.7, 3.5, n), 1.5, 17.0)


def short_durations(n: int, seed: int = 0) -> np.ndarray:
    """(n,) seconds uniform in [0.4, 1.2]: for quick checks with tiny models."""
    return np.random.default_rng([seed, 2]).uniform(0.4, 1.2, n)


def speechlike_wave(seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(round(seconds * sample_rate),) float32 in [-0.5, 0.5] (see the module docstring)."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(100, 200) * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 9))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None)
    wave = voice * envelope + 0.03 * rng.standard_normal(len(t))
    return (0.5 * wave / max(np.abs(wave).max(), 1e-9)).astype(np.float32)


def random_text(seconds: float, rng: np.random.Generator) -> str:
    """Random words, about CHARS_PER_SECOND characters per second (at least one word)."""
    words: list[str] = []
    while not words or len(" ".join(words)) < CHARS_PER_SECOND * seconds:
        words.append(_WORDS[int(rng.integers(len(_WORDS)))])
    return " ".join(words)


def write_bench_corpus(
    folder: Path, durations: np.ndarray, sample_rate: int = 16000, seed: int = 0
) -> Path:
    """Write one 16-bit FLAC per duration (in order) and `folder/bench.jsonl`; return its path.
    Durations in the manifest are the files' exact lengths (samples / sample_rate)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    utts = []
    for i, seconds in enumerate(durations):
        wave = speechlike_wave(float(seconds), sample_rate, rng)
        path = folder / f"utt{i:05d}.flac"
        sf.write(path, wave, sample_rate, format="FLAC", subtype="PCM_16")
        text = random_text(float(seconds), rng)
        utts.append(Utterance(f"utt{i:05d}", str(path), len(wave) / sample_rate, text, "bench"))
    manifest = folder / "bench.jsonl"
    write_manifest(manifest, utts)
    return manifest
