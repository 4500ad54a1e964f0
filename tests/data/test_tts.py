"""Tests for festival batch rendering (speechswarm.data.tts.render_festival_batch).

    PYTHONPATH=src python -m pytest tests/data/test_tts.py -q

The rest of tts.py is tested through the corpus in test_synth.py. These tests skip when
festival is not installed; sox is needed as for every corpus test.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from speechswarm.data import synth_plan, tts

needs_festival = pytest.mark.skipif(
    shutil.which("festival") is None or shutil.which("text2wave") is None,
    reason="festival is not installed",
)
# Apostrophes are the only punctuation the corpus text keeps (text.DEFAULT_ALPHABET).
TEXTS = ["don't look back something might be gaining on you", "it's five o'clock", "the cat sat"]
AWKWARD = 'say "hi" to C:\\dir\\ it\'s \\\\ done\\'


def test_scheme_string_escapes_backslash_and_quote():
    assert tts.scheme_string('a "b" c\\d') == '"a \\"b\\" c\\\\d"'
    assert tts.scheme_string("plain it's") == '"plain it\'s"'


@needs_festival
def test_scheme_string_round_trips_through_festival(tmp_path):
    out, script = tmp_path / "s.txt", tmp_path / "s.scm"
    script.write_text(
        f'(set! fd (fopen {tts.scheme_string(str(out))} "w"))\n'
        f'(format fd "%s" {tts.scheme_string(AWKWARD)})\n(fclose fd)\n'
    )
    subprocess.run(["festival", "-b", str(script)], check=True, timeout=60)
    assert out.read_text() == AWKWARD


@needs_festival
@pytest.mark.parametrize("name", ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"])
def test_festival_batch_equals_text2wave(name, tmp_path):
    voice = tts.Voice("festival", name, "", "x")
    spk = synth_plan.Speaker(1, 11, "train", voice, 1.0, 0.0)
    utts = [  # three speeds: Duration_Stretch is set per utterance inside the one process
        dataclasses.replace(synth_plan._draw_utterance(f"1-11-{i:04d}", spk, text, 0), speed=speed)
        for i, (text, speed) in enumerate(zip(TEXTS, (0.85, 1.0, 1.2), strict=True))
    ]
    batch = [tmp_path / f"b{i}.flac" for i in range(len(utts))]
    single = [tmp_path / f"s{i}.flac" for i in range(len(utts))]
    seconds = tts.render_festival_batch(utts, voice, batch, 16000, tmp_path)
    for utt, b, s, sec in zip(utts, batch, single, seconds, strict=True):
        assert sec == tts.render_utterance(utt, voice, s, 16000, tmp_path)
        assert np.array_equal(sf.read(str(b))[0], sf.read(str(s))[0]), utt.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in batch + single)
