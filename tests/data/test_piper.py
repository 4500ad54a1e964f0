"""Tests for the Piper person (speechswarm.data.piper) and the gate's pitch measure.

PYTHONPATH=src python -m pytest tests/data/test_piper.py -q
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from speechswarm.data import piper
from speechswarm.data.voice_gate import median_pitch_hz


def test_phoneme_ids_interleave_the_pad():
    id_map = {"^": [1], "$": [2], "_": [0], "k": [23], "æ": [39], "t": [32], ".": [10], " ": [3]}
    # "kæt" + the sentence end; ˈ is unknown here and dropped; lines are joined by one space.
    assert piper.phoneme_ids("kˈæt\n", id_map) == [1, 0, 23, 0, 39, 0, 32, 0, 10, 0, 2]
    assert piper.phoneme_ids("k\nt", id_map) == [1, 0, 23, 0, 3, 0, 32, 0, 10, 0, 2]


def test_median_pitch_of_a_pulse_train():
    rate = 16000
    t = np.arange(rate) / rate  # 1 s
    saw = 2 * ((120.0 * t) % 1.0) - 1  # 120 Hz sawtooth: harmonics like a voice
    assert median_pitch_hz(saw, rate) == pytest.approx(120.0, rel=0.03)
    assert np.isnan(median_pitch_hz(np.zeros(rate), rate))
    assert np.isnan(median_pitch_hz(np.random.default_rng(0).standard_normal(rate), rate))


def test_real_synthesis_is_deterministic():
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make setup`")
    model = piper.load()
    if model.reason:
        pytest.fail(
            f"{model.reason}\nPiper's joe is a dependency of speechswarm: run `make setup`."
        )
    audio = model.synthesize("the cat sat down", 1.0)
    assert 0.8 < audio.size / model.sample_rate < 3.0
    assert np.sqrt(np.mean(audio**2)) > 0.01
    assert np.array_equal(audio, model.synthesize("the cat sat down", 1.0))  # noise scales are 0
    assert median_pitch_hz(audio, model.sample_rate) < 160  # joe is a man
