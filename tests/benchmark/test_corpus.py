"""Synthetic benchmark audio: lengths, transcripts and the manifest agree with the request."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from speechswarm.benchmark.corpus import (
    CHARS_PER_SECOND,
    librispeech_like_durations,
    short_durations,
    write_bench_corpus,
)
from speechswarm.data.manifest import read_manifest
from speechswarm.data.tokenizer import CharTokenizer


def test_duration_generators_are_seeded_and_in_range():
    d = librispeech_like_durations(2000, seed=1)
    assert np.array_equal(d, librispeech_like_durations(2000, seed=1))
    assert d.min() >= 1.5 and d.max() <= 17.0
    assert abs(d.mean() - 12.5) < 0.5  # normal(12.7, 3.5) clipped at 17 pulls it down a bit
    s = short_durations(50)
    assert s.min() >= 0.4 and s.max() <= 1.2


def test_written_corpus_matches_its_manifest(tmp_path):
    manifest = write_bench_corpus(tmp_path, np.array([0.5, 1.25]), sample_rate=8000)
    utts = read_manifest(manifest)
    assert [u.id for u in utts] == ["utt00000", "utt00001"]
    for u, seconds in zip(utts, (0.5, 1.25), strict=True):
        wave, sr = sf.read(u.audio, dtype="float32")
        assert sr == 8000 and len(wave) == round(seconds * 8000) == round(u.duration * 8000)
        assert 0.1 < np.abs(wave).max() <= 0.5
        assert len(u.text) >= CHARS_PER_SECOND * seconds
        CharTokenizer().encode(u.text)  # every character is in the default alphabet
