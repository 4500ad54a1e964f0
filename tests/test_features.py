"""Feature extraction against independent numpy / scipy references.

PYTHONPATH=src .venv/bin/python -m pytest tests/test_features.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.fft
import scipy.signal
import torch

from speechswarm.features import (
    KINDS,
    FeatureExtractor,
    compute_global_stats,
    dct_matrix,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _speechlike(num_samples: int, seed: int = 0, sample_rate: int = 16000) -> np.ndarray:
    """Two chirping harmonics plus a little noise: energy in every bin, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / sample_rate
    x = 0.4 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.2 * np.sin(2 * np.pi * 2700 * t)
    return (x + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)


def _np_frames(x: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """Hand framing as described: zero-pad n_fft // 2 both sides, frame t starts at t * hop."""
    padded = np.pad(x.astype(np.float64), n_fft // 2)
    num_frames = len(x) // hop + 1
    idx = np.arange(num_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    return np.fft.rfft(padded[idx] * window, axis=1)  # (T, n_fft // 2 + 1) complex


def _np_slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    out = hz * 3.0 / 200.0
    above = hz >= 1000.0
    out[above] = 15.0 + 27.0 * np.log(hz[above] / 1000.0) / np.log(6.4)
    return out


def _np_slaney_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    out = mel * 200.0 / 3.0
    above = mel >= 15.0
    out[above] = 1000.0 * 6.4 ** ((mel[above] - 15.0) / 27.0)
    return out


def _np_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """One filter at a time with np.interp over its three corner frequencies (librosa's recipe)."""
    freqs = np.linspace(0, sample_rate / 2, n_freqs)
    edges = _np_slaney_hz(
        np.linspace(0, _np_slaney_mel(np.array([sample_rate / 2]))[0], n_mels + 2)
    )
    fb = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m : m + 3]
        fb[:, m] = np.interp(freqs, [lo, c, hi], [0.0, 1.0, 0.0]) * 2.0 / (hi - lo)
    return fb


def _run(fe: FeatureExtractor, waves: list[np.ndarray], pad_value: float = 0.0):
    """Pad a list of 1-D arrays into (N, S) with `pad_value` and extract."""
    lens = torch.tensor([len(w) for w in waves])
    batch = torch.full((len(waves), int(lens.max())), pad_value)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return fe(batch, lens)


def test_slaney_mel_scale_hand_values():
    hz = torch.tensor([0.0, 200.0, 1000.0, 6400.0], dtype=torch.float64)
    assert hz_to_mel(hz).tolist() == pytest.approx([0.0, 3.0, 15.0, 42.0], abs=1e-9)
    assert mel_to_hz(hz_to_mel(hz)).tolist() == pytest.approx(hz.tolist(), abs=1e-6)


@pytest.mark.parametrize(
    "n_freqs,n_mels,sample_rate", [(161, 80, 16000), (201, 40, 16000), (257, 64, 8000)]
)
def test_mel_filterbank_matches_numpy(n_freqs, n_mels, sample_rate):
    ours = mel_filterbank(n_freqs, n_mels, sample_rate).numpy()
    ref = _np_filterbank(n_freqs, n_mels, sample_rate)
    assert ours.shape == (n_freqs, n_mels)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    assert (ours.sum(0) > 0).all()


def test_dct_matrix_matches_scipy():
    x = np.random.default_rng(1).standard_normal((5, 80))
    ours = x @ dct_matrix(13, 80).double().numpy()
    np.testing.assert_allclose(
        ours, scipy.fft.dct(x, type=2, norm="ortho")[:, :13], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", KINDS)
def test_num_frames_agrees_with_forward_for_every_length(kind):
    fe = FeatureExtractor(kind=kind)
    lengths = list(range(1, 340)) + [479, 480, 481, 16000, 16001]
    for n in lengths:
        feats, feat_lens = fe(torch.zeros(1, n), torch.tensor([n]))
        assert feats.shape == (1, fe.num_frames(n), fe.num_features), n
        assert feat_lens.tolist() == [fe.num_frames(n)]
    assert fe.num_frames(1) == 1 and fe.num_frames(159) == 1 and fe.num_frames(160) == 2
    assert fe.num_frames(0) == 0
    lens = torch.tensor([0, 1, 159, 160, 161, 3200])
    assert fe.num_frames(lens).tolist() == [fe.num_frames(int(n)) for n in lens]
    feats, feat_lens = fe(torch.randn(len(lens), 3200), lens)
    assert feat_lens.tolist() == fe.num_frames(lens).tolist()
    assert feats.shape[1] == fe.num_frames(3200)


@pytest.mark.parametrize("n", [1, 100, 320, 4000, 4321])
def test_spectrogram_matches_numpy_framing(n):
    x = _speechlike(n)
    feats, _ = _run(FeatureExtractor(kind="spectrogram", normalize="none"), [x])
    window = scipy.signal.windows.hamming(320, sym=True)
    ref = np.log1p(np.abs(_np_frames(x, 320, 160, window)))
    assert feats.shape == (1, *ref.shape) and ref.shape[1] == 161
    np.testing.assert_allclose(feats[0].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_spectrogram_matches_scipy_stft():
    x = _speechlike(8000, seed=3)
    feats, _ = _run(FeatureExtractor(kind="spectrogram", normalize="none"), [x])
    window = scipy.signal.windows.hamming(320, sym=True)
    # scipy: boundary="zeros" is the same n_fft // 2 zero padding; it scales by 1 / sum(window).
    _, _, z = scipy.signal.stft(
        x.astype(np.float64), window=window, nperseg=320, noverlap=160, boundary="zeros"
    )
    ref = np.log1p(np.abs(z.T[: feats.shape[1]]) * window.sum())
    np.testing.assert_allclose(feats[0].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_logmel_and_mfcc_match_numpy():
    x = _speechlike(5000, seed=4)
    logmel, _ = _run(FeatureExtractor(kind="logmel", normalize="none"), [x])
    mfcc, _ = _run(FeatureExtractor(kind="mfcc", normalize="none"), [x])
    window = scipy.signal.windows.hann(320, sym=False)
    power = np.abs(_np_frames(x, 320, 160, window)) ** 2
    ref = np.log(power @ _np_filterbank(161, 80, 16000) + 1e-6)
    np.testing.assert_allclose(logmel[0].numpy(), ref, rtol=1e-4, atol=1e-4)
    ref_mfcc = scipy.fft.dct(ref, type=2, norm="ortho", axis=1)[:, :13]
    np.testing.assert_allclose(mfcc[0].numpy(), ref_mfcc, rtol=1e-4, atol=2e-4)


def test_logmel_25ms_window_gives_400_point_fft():
    fe = FeatureExtractor(kind="logmel", win_ms=25, normalize="none")
    assert fe.n_fft == 400 and fe.num_features == 80
    x = _speechlike(3000)
    feats, _ = _run(fe, [x])
    power = np.abs(_np_frames(x, 400, 160, scipy.signal.windows.hann(400, sym=False))) ** 2
    ref = np.log(power @ _np_filterbank(201, 80, 16000) + 1e-6)
    np.testing.assert_allclose(feats[0].numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("normalize", ["utterance", "none", "global"])
def test_frames_do_not_depend_on_padding(kind, normalize):
    stats = {}
    if normalize == "global":
        num = FeatureExtractor(kind=kind).num_features
        stats = {
            "mean": torch.linspace(-1, 1, num).tolist(),
            "std": torch.linspace(0.5, 2, num).tolist(),
        }
    fe = FeatureExtractor(kind=kind, normalize=normalize, **stats)
    short, long = _speechlike(1234, seed=5), _speechlike(9000, seed=6)
    alone, alone_lens = _run(fe, [short])
    # Garbage (not zeros) in the padding must not leak into the short utterance's frames.
    batch, lens = _run(fe, [long, short], pad_value=0.7)
    n = int(alone_lens[0])
    assert lens.tolist() == [fe.num_frames(9000), n]
    np.testing.assert_allclose(batch[1, :n].numpy(), alone[0].numpy(), atol=1e-5)
    assert torch.count_nonzero(batch[1, n:]) == 0  # padded frames exactly 0
    assert torch.count_nonzero(batch[1, :n]) > 0


def test_utterance_normalization_uses_valid_frames_only():
    raw_fe = FeatureExtractor(kind="spectrogram", normalize="none")
    fe = FeatureExtractor(kind="spectrogram", normalize="utterance")
    waves = [_speechlike(2000, seed=7), _speechlike(6000, seed=8)]
    raw, lens = _run(raw_fe, waves)
    out, _ = _run(fe, waves)
    n = int(lens[0])
    valid = raw[0, :n].double().numpy()
    ref = (valid - valid.mean(0)) / np.sqrt(valid.var(0) + 1e-5)
    np.testing.assert_allclose(out[0, :n].numpy(), ref, rtol=1e-4, atol=1e-4)
    assert np.abs(out[0, :n].numpy().mean(0)).max() < 1e-4


def test_compute_global_stats_matches_numpy_and_normalizes():
    fe = FeatureExtractor(kind="logmel", normalize="none")
    batches, valid = [], []
    for seed, sizes in enumerate([(3000, 1200), (5000,), (800, 4100, 2500)]):
        waves = [_speechlike(s, seed=10 * seed + i) * (i + 1) for i, s in enumerate(sizes)]
        lens = torch.tensor(sizes)
        batch = torch.zeros(len(sizes), max(sizes))
        for i, w in enumerate(waves):
            batch[i, : len(w)] = torch.from_numpy(w)
            feats, _ = fe(torch.from_numpy(w)[None], torch.tensor([len(w)]))
            valid.append(feats[0].double().numpy())
        batches.append((batch, lens))
    mean, std = compute_global_stats(fe, batches)
    allv = np.concatenate(valid)
    np.testing.assert_allclose(mean.numpy(), allv.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), allv.std(0), rtol=1e-4, atol=1e-5)

    norm = FeatureExtractor(kind="logmel", normalize="global", mean=mean, std=std)
    out, lens = norm(*batches[2])
    raw, _ = fe(*batches[2])
    n = int(lens[0])
    np.testing.assert_allclose(
        out[0, :n].numpy(), ((raw[0, :n] - mean) / std).numpy(), rtol=1e-5, atol=1e-5
    )


def test_settings_round_trip_through_json():
    mean, std = torch.arange(13.0), torch.arange(1.0, 14.0)
    fe = FeatureExtractor(kind="mfcc", win_ms=25, n_mels=40, normalize="global", mean=mean, std=std)
    settings = json.loads(json.dumps(fe.feature_settings()))
    assert settings["mean"] == mean.tolist() and settings["win_ms"] == 25.0
    rebuilt = FeatureExtractor.from_settings(settings)
    x = torch.from_numpy(_speechlike(4000))[None]
    lens = torch.tensor([4000])
    torch.testing.assert_close(rebuilt(x, lens)[0], fe(x, lens)[0])
    with pytest.raises(ValueError, match="unknown keys \\['frobnicate'\\]"):
        FeatureExtractor.from_settings({**settings, "frobnicate": 1})


def test_errors_say_what_and_what_to_do():
    with pytest.raises(ValueError, match="kind='fbank' is not one of spectrogram"):
        FeatureExtractor(kind="fbank")
    with pytest.raises(ValueError, match="lower n_mels or raise win_ms"):
        FeatureExtractor(kind="logmel", n_mels=128)
    with pytest.raises(RuntimeError, match="compute_global_stats"):
        FeatureExtractor(normalize="global")(torch.zeros(1, 400), torch.tensor([400]))
    with pytest.raises(ValueError, match="wave_lens max 500 exceeds the 400 samples"):
        FeatureExtractor()(torch.zeros(2, 400), torch.tensor([400, 500]))
    with pytest.raises(ValueError, match="expected \\(161,\\)"):
        FeatureExtractor(normalize="global", mean=[0.0] * 80, std=[1.0] * 80)


def test_fp32_inside_autocast():
    fe = FeatureExtractor(kind="logmel")
    x, lens = torch.from_numpy(_speechlike(3000))[None], torch.tensor([3000])
    ref, _ = fe(x, lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = fe(x, lens)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_input_device_with_module_left_on_cpu(device):
    fe = FeatureExtractor(kind="mfcc")
    x, lens = torch.from_numpy(_speechlike(3000))[None], torch.tensor([3000])
    ref, _ = fe(x, lens)
    out, out_lens = fe(x.to(device), lens.to(device))
    assert out.device.type == device and out_lens.device.type == device
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
