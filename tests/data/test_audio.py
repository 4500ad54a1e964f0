"""load_audio / audio_info against hand-built files: exact samples, reasons for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechswarm.data.audio import (
    AudioError,
    audio_info,
    expand_audio_paths,
    load_audio,
    load_audio_bytes,
    read_audio,
)

SR = 16000


def _ramp(n: int) -> np.ndarray:
    # int16-exact values so PCM_16 files round-trip bit for bit: k / 32768
    return (np.arange(n) % 2000 - 1000).astype(np.float32) / 32768.0


def _reason(path, **kw) -> str:
    with pytest.raises(AudioError) as e:
        load_audio(path, SR, **kw)
    assert str(path) in str(e.value)  # errors name the file
    return e.value.reason


def test_wav_pcm16_round_trips_exactly(tmp_path):
    x = _ramp(SR)
    sf.write(tmp_path / "a.wav", x, SR, subtype="PCM_16")
    y = load_audio(tmp_path / "a.wav", SR)
    assert y.dtype == np.float32 and y.shape == (SR,)
    np.testing.assert_array_equal(y, x)
    assert audio_info(tmp_path / "a.wav") == (SR, SR, 1)


def test_offset_and_duration_are_seconds(tmp_path):
    x = _ramp(SR)
    sf.write(tmp_path / "a.flac", x, SR, subtype="PCM_16")
    y = load_audio(tmp_path / "a.flac", SR, offset=0.25, duration=0.5)
    np.testing.assert_array_equal(y, x[4000:12000])  # 0.25 s = 4000 frames, 0.5 s = 8000
    tail = load_audio(tmp_path / "a.flac", SR, offset=0.75)
    np.testing.assert_array_equal(tail, x[12000:])
    over = load_audio(tmp_path / "a.flac", SR, offset=0.5, duration=5.0)  # clipped at the end
    np.testing.assert_array_equal(over, x[8000:])


def test_stereo_is_downmixed_by_mean(tmp_path):
    left, right = _ramp(800), np.full(800, 0.25, np.float32)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), SR, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav", SR)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)
    data, rate = read_audio(tmp_path / "s.wav")
    assert data.shape == (800, 2) and rate == SR


def test_resample_44k1_to_16k_matches_analytic_sine(tmp_path):
    t44 = np.arange(44100) / 44100
    sf.write(tmp_path / "h.wav", 0.5 * np.sin(2 * np.pi * 440 * t44), 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "h.wav", SR)
    assert y.dtype == np.float32 and len(y) == SR  # 1 s at 16 kHz
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)
    mid = slice(500, SR - 500)  # filter edge effects aside
    assert np.max(np.abs(y[mid] - expected[mid])) < 1e-3


def test_missing_file(tmp_path):
    assert _reason(tmp_path / "nope.wav") == "missing_file"
    with pytest.raises(AudioError) as e:
        audio_info(tmp_path / "nope.wav")
    assert e.value.reason == "missing_file"
    assert "nope.wav: missing_file (no such file); check the path" in str(e.value)


def test_folders_expand_to_their_audio_files(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("in/z.wav", "in/sub/a.MP3", "in/b.flac", "in/readme.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    given = [str(tmp_path / "x.wav"), str(tmp_path / "in"), str(tmp_path / "empty")]
    assert expand_audio_paths(given) == [
        str(tmp_path / "x.wav"),  # files stay as given, existing or not
        str(tmp_path / "in/b.flac"),
        str(tmp_path / "in/sub/a.MP3"),
        str(tmp_path / "in/z.wav"),
        str(tmp_path / "empty"),  # nothing inside: kept, so its error is reported
    ]


def test_a_folder_is_named_as_one(tmp_path):
    with pytest.raises(AudioError, match=r"missing_file \(a folder, not an audio file\)"):
        load_audio(tmp_path, 16000)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_truncated_files_are_unreadable(tmp_path, fmt):
    good = tmp_path / f"good.{fmt.lower()}"
    sf.write(good, 0.3 * np.sin(np.arange(SR) * 0.05), SR, format=fmt, subtype="PCM_16")
    cut = tmp_path / f"cut.{fmt.lower()}"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert _reason(cut) == "unreadable_audio"


def test_zero_byte_and_garbage_files_are_unreadable(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "text.flac").write_text("not audio at all")
    assert _reason(tmp_path / "zero.wav") == "unreadable_audio"
    assert _reason(tmp_path / "text.flac") == "unreadable_audio"


def test_zero_frames_and_offset_past_end_are_empty(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")
    assert _reason(tmp_path / "empty.wav") == "empty_audio"
    sf.write(tmp_path / "short.wav", _ramp(1600), SR, subtype="PCM_16")  # 0.1 s
    assert _reason(tmp_path / "short.wav", offset=0.5) == "empty_audio"


def test_nan_samples_in_float_wav(tmp_path):
    x = _ramp(1600)
    x[100] = np.nan
    x[200] = np.inf
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "nan.wav", SR)
    assert e.value.reason == "nonfinite_samples"
    assert "2 NaN/inf" in e.value.detail


def test_load_audio_bytes_matches_file(tmp_path):
    x = _ramp(3200)
    sf.write(tmp_path / "a.flac", x, SR, subtype="PCM_16")
    y = load_audio_bytes((tmp_path / "a.flac").read_bytes(), SR)
    np.testing.assert_array_equal(y, x)
    with pytest.raises(AudioError) as e:
        load_audio_bytes(b"garbage", SR, name="shard-0.tar:k.flac")
    assert e.value.reason == "unreadable_audio" and e.value.path == "shard-0.tar:k.flac"


def test_unknown_reason_is_rejected():
    with pytest.raises(ValueError):
        AudioError("x.wav", "broken")
