"""Hostile inputs to transcribe, eval and prepare: each is handled or refused in one line.

Audio: an hours-long file (refused by its header before decoding: `data.audio.
MAX_AUDIO_SECONDS`, lowered here to 2 s), 0 samples, NaN/inf float samples, 8 kHz, 48 kHz and
stereo (resampled and down-mixed). Manifests: a line that is not UTF-8, a line that is not
JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from speechswarm.data import audio
from speechswarm.data.audio import AudioError, load_audio
from speechswarm.data.manifest import ManifestError, read_manifest
from speechswarm.transcribe import transcribe_paths

SR = 16000
TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)  # 1 s


@pytest.fixture
def files(tmp_path):
    """name -> path of one hostile file each (all 1 s of a 440 Hz tone unless said)."""
    d = tmp_path
    nan = TONE.copy()
    nan[100], nan[200] = np.nan, np.inf
    sf.write(d / "ok.wav", TONE, SR, subtype="PCM_16")
    sf.write(d / "empty.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(d / "8k.wav", soxr.resample(TONE, SR, 8000), 8000, subtype="PCM_16")
    sf.write(d / "48k.wav", soxr.resample(TONE, SR, 48000), 48000, subtype="PCM_16")
    sf.write(d / "stereo.wav", np.stack([TONE, 0.5 * TONE], 1), SR, subtype="PCM_16")
    sf.write(d / "long.flac", np.tile(TONE, 3), SR, subtype="PCM_16")  # 3 s > the 2 s cap
    (d / "junk.wav").write_bytes(b"<html>not audio</html>")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture
def two_second_cap(monkeypatch):
    monkeypatch.setattr(audio, "MAX_AUDIO_SECONDS", 2.0)


class LengthRecognizer:
    """Stands in for a model: the 'transcript' is the wave's length in samples."""

    sample_rate = SR

    def transcribe_batch(self, waves):
        return [str(len(w)) for w in waves]


def test_transcribe_handles_or_refuses_each_hostile_file(files, two_second_cap):
    names = ["ok", "empty", "nan", "8k", "48k", "stereo", "long", "junk"]
    out = list(transcribe_paths(LengthRecognizer(), [str(files[n]) for n in names], 4))
    assert [o[0] for o in out] == [str(files[n]) for n in names]  # every file, in order
    result = dict(zip(names, out, strict=True))
    for name in ("ok", "8k", "48k", "stereo"):  # resampled / down-mixed to 1 s at 16 kHz
        path, text, seconds, error = result[name]
        assert (
            error is None and abs(int(text) - SR) <= 1 and seconds == pytest.approx(1.0, abs=1e-3)
        )
    reasons = {n: result[n][3].reason for n in ("empty", "nan", "long", "junk")}
    assert reasons == {"empty": "empty_audio", "nan": "nonfinite_samples", "long": "too_long",
                       "junk": "unreadable_audio"}  # fmt: skip
    assert all(result[n][1] is None for n in reasons)


def test_an_hours_long_file_is_refused_by_its_header_before_decoding(files, two_second_cap, monkeypatch):  # fmt: skip
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file that is too long")

    with monkeypatch.context() as m, pytest.raises(AudioError) as caught:
        m.setattr(sf.SoundFile, "read", no_decoding)
        load_audio(files["long"], SR)
    assert str(caught.value) == (
        f"{files['long']}: too_long (3.0 s > 2 s at once); split it into parts (e.g. "
        "`ffmpeg -i IN -f segment -segment_time 600 part%03d.flac`) or raise "
        "SPEECHSWARM_MAX_AUDIO_SECONDS if memory allows"
    )
    assert len(load_audio(files["long"], SR, offset=1.0, duration=1.5)) == 24000  # a part fits


def test_stereo_and_other_rates_become_the_same_mono_wave(files):
    mono = load_audio(files["ok"], SR)
    np.testing.assert_allclose(load_audio(files["stereo"], SR), 0.75 * mono, atol=1e-4)
    for name in ("8k", "48k"):
        wave = load_audio(files[name], SR)
        assert abs(len(wave) - SR) <= 1
        assert np.abs(wave[1000:-1000] - mono[1000 : len(wave) - 1000]).max() < 0.02, name


def _manifest(tmp_path, *lines: bytes):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


GOOD = json.dumps({"id": "a", "audio": "ok.wav", "duration": 1.0, "text": "a"}).encode()


def test_a_manifest_line_that_is_not_utf8_is_named(tmp_path):
    bad = b'{"id": "b", "audio": "ok.wav", "duration": 1.0, "text": "caf\xe9"}'
    path = _manifest(tmp_path, GOOD, bad)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert str(caught.value) == (
        f"{path}:2: not UTF-8 (byte 0xe9 at column 61); re-save the manifest as UTF-8"
    )


def test_a_manifest_line_that_is_not_json_is_named(tmp_path):
    path = _manifest(tmp_path, GOOD, b"this is not json")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not a manifest record \(Expecting"):
        read_manifest(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    assert [u.id for u in read_manifest(_manifest(tmp_path, b"\xef\xbb\xbf" + GOOD))] == ["a"]


def test_validate_on_a_non_utf8_manifest_fails_in_one_line(tmp_path):
    """`eval` and `train` read manifests the same way (`read_manifest`)."""
    path = _manifest(tmp_path, GOOD, b'{"id": "b", "text": "\xff"}')
    proc = subprocess.run([sys.executable, "-m", "speechswarm", "validate", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"speechswarm validate: error: {path}:2: not UTF-8 (byte 0xff at column 22); "
        "re-save the manifest as UTF-8"
    ]
