"""Augmentation: measured SNR / gain / shift / speed / masks against what was asked for.

PYTHONPATH=src .venv/bin/python -m pytest tests/test_augment.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from speechswarm.augment import (
    FrequencyWarp,
    SpecAugment,
    WaveAugment,
    exponential_rir,
    fft_convolve,
)
from speechswarm.data.audio import speed_perturb
from speechswarm.errors import ConfigError
from speechswarm.features import FeatureExtractor, frequency_warp_matrix

SR = 16000


def _batch(lens=(16000, 9000, 4001), seed=0, pad_value=0.0):
    """Padded (N, S) batch of tones + noise with distinct levels; padding filled with pad_value."""
    g = torch.Generator().manual_seed(seed)
    s = max(lens)
    t = torch.arange(s) / SR
    waves = torch.full((len(lens), s), pad_value)
    for i, n in enumerate(lens):
        tone = 0.3 * (i + 1) * torch.sin(2 * math.pi * (300 + 200 * i) * t[:n])
        waves[i, :n] = tone + 0.01 * torch.randn(n, generator=g)
    return waves, torch.tensor(lens)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _snr_db(clean: torch.Tensor, noisy: torch.Tensor, n: int) -> float:
    noise = noisy[:n].double() - clean[:n].double()
    return 10 * math.log10(float(clean[:n].double().square().mean() / noise.square().mean()))


@pytest.mark.parametrize("snr", [0.0, 7.5, 20.0])
def test_white_noise_snr_measured_on_valid_samples(snr):
    waves, lens = _batch()
    out = WaveAugment(noise_snr_db=(snr, snr), noise_prob=1.0)(waves, lens, _gen(1))
    for i, n in enumerate(lens.tolist()):
        assert _snr_db(waves[i], out[i], n) == pytest.approx(snr, abs=0.5)
        assert torch.count_nonzero(out[i, n:]) == 0


def test_noise_files_are_resampled_cropped_and_mixed_at_snr(tmp_path):
    # A 1 kHz tone recorded at 8 kHz: after resampling to 16 kHz the added noise must peak at 1 kHz.
    t = np.arange(12000) / 8000
    sf.write(tmp_path / "hum.flac", 0.5 * np.sin(2 * np.pi * 1000 * t), 8000)
    sf.write(tmp_path / "hum2.wav", 0.2 * np.sin(2 * np.pi * 1000 * np.arange(8000) / SR), SR)
    aug = WaveAugment(noise_snr_db=(10, 10), noise_dir=tmp_path)
    assert len(aug.noise_bank) == 24000 + 8000  # 1.5 s resampled to 16 kHz, then 0.5 s
    waves, lens = _batch()
    out = aug(waves, lens, _gen(2))
    for i, n in enumerate(lens.tolist()):
        assert _snr_db(waves[i], out[i], n) == pytest.approx(10.0, abs=0.5)
        added = (out[i, :n] - waves[i, :n]).double().numpy()
        peak_hz = np.argmax(np.abs(np.fft.rfft(added))) * SR / n
        assert peak_hz == pytest.approx(1000, abs=5)


def test_noise_dir_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .wav or .flac files under noise_dir"):
        WaveAugment(noise_snr_db=(5, 10), noise_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        WaveAugment(noise_snr_db=(5, 10), noise_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="noise_snr_db unset"):
        WaveAugment(noise_dir=tmp_path)


def test_gain_in_db_is_exact_and_within_range():
    waves, lens = _batch()
    out = WaveAugment(gain_db=(-6.0, -6.0))(waves, lens, _gen(3))
    torch.testing.assert_close(out, waves * 10 ** (-6 / 20))
    out = WaveAugment(gain_db=(-10.0, 4.0))(waves, lens, _gen(4))
    for i, n in enumerate(lens.tolist()):
        ratio = out[i, :n] / waves[i, :n]
        db = 20 * math.log10(float(ratio[0]))
        assert -10.0 <= db <= 4.0
        torch.testing.assert_close(
            ratio, torch.full_like(ratio, float(ratio[0]))
        )  # one gain per utterance


def test_same_seed_same_output_and_input_untouched():
    aug = WaveAugment(
        shift_ms=50, gain_db=(-6, 6), noise_snr_db=(5, 20), noise_prob=0.7, reverb_prob=0.5
    )
    waves, lens = _batch()
    before = waves.clone()
    a, b = aug(waves, lens, _gen(7)), aug(waves, lens, _gen(7))
    c = aug(waves, lens, _gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(waves, before)
    # The global RNG is neither used nor advanced.
    torch.manual_seed(0)
    state = torch.get_rng_state()
    aug(waves, lens, _gen(7))
    assert torch.equal(torch.get_rng_state(), state)


def test_padded_samples_stay_zero_with_every_effect():
    aug = WaveAugment(shift_ms=100, gain_db=(-3, 3), noise_snr_db=(0, 5), reverb_prob=1.0)
    waves, lens = _batch(pad_value=0.9)  # garbage in the padding must not leak or survive
    out = aug(waves, lens, _gen(9))
    for i, n in enumerate(lens.tolist()):
        assert torch.count_nonzero(out[i, n:]) == 0
        assert torch.count_nonzero(out[i, :n]) > 0.9 * n


def test_shift_is_zero_filled_inside_valid_region():
    waves, lens = _batch(lens=(8000, 5000))
    shift = 160  # 10 ms
    out = WaveAugment(shift_ms=10)(waves, lens, _gen(10))
    seen = set()
    for i, n in enumerate(lens.tolist()):
        x, y = waves[i, :n], out[i, :n]
        matches = [
            k
            for k in range(-shift, shift + 1)
            if torch.equal(y[max(k, 0) : n + min(k, 0)], x[max(-k, 0) : n - max(k, 0)])
            and torch.count_nonzero(y[: max(k, 0)]) == 0
            and torch.count_nonzero(y[n + min(k, 0) :]) == 0
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen != {0}


def test_probabilities_select_utterances():
    waves, lens = _batch(lens=(2000,) * 64)
    out = WaveAugment(gain_db=(6, 6), gain_prob=0.25)(waves, lens, _gen(11))
    changed = (~torch.isclose(out, waves).all(1)).sum().item()
    assert 6 <= changed <= 26  # binomial(64, 0.25): mean 16, sd 3.5
    out = WaveAugment(noise_snr_db=(10, 10), noise_prob=0.0)(waves, lens, _gen(11))
    assert torch.equal(out, waves)


def test_fft_convolve_matches_numpy_convolve():
    g = _gen(12)
    x, h = torch.randn(3, 1000, generator=g), torch.randn(3, 257, generator=g)
    out = fft_convolve(x, h)
    for i in range(3):
        ref = np.convolve(x[i].double().numpy(), h[i].double().numpy())[:1000]
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-4, atol=1e-4)


def test_exponential_rir_decays_60_db_at_rt60():
    rt60 = 0.3
    rirs = exponential_rir(torch.full((200,), rt60), int(0.4 * SR), SR, _gen(13))
    assert torch.linalg.vector_norm(rirs, dim=1).tolist() == pytest.approx([1.0] * 200, rel=1e-5)
    energy = rirs.double().square().mean(0)  # (K,) average energy envelope of 200 draws

    def level_db(t_s: float) -> float:  # 10 ms window centred on t_s
        c = round(t_s * SR)
        return 10 * math.log10(float(energy[c - 80 : c + 80].mean()))

    # Energy falls 60 dB per rt60: from 0.05 s to 0.3 s that is 60 * 0.25 / 0.3 = 50 dB.
    assert level_db(0.3) - level_db(0.05) == pytest.approx(-50.0, abs=2.0)


def test_reverb_keeps_length_and_finite_comparable_energy():
    waves, lens = _batch()
    out = WaveAugment(reverb_prob=1.0)(waves, lens, _gen(14))
    assert out.shape == waves.shape and torch.isfinite(out).all()
    for i, n in enumerate(lens.tolist()):
        ratio_db = 10 * math.log10(float(out[i, :n].square().sum() / waves[i, :n].square().sum()))
        assert -10 < ratio_db < 10
        assert not torch.allclose(out[i, :n], waves[i, :n], atol=1e-3)


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_speed_perturb_scales_length_and_frequency(factor):
    n = 16000
    wave = np.sin(2 * np.pi * 440 * np.arange(n) / SR).astype(np.float32)
    out = speed_perturb(wave, factor, SR)
    assert out.dtype == np.float32
    assert abs(len(out) - n / factor) <= 2
    peak_hz = np.argmax(np.abs(np.fft.rfft(out * np.hanning(len(out))))) * SR / len(out)
    assert peak_hz == pytest.approx(440 * factor, abs=2)
    assert speed_perturb(wave, 1.0, SR) is wave
    with pytest.raises(ValueError, match="must be > 0"):
        speed_perturb(wave, 0.0, SR)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_a_tone_by_alpha_below_the_knee_and_keeps_the_band_ends(alpha):
    n_freqs = 161  # 20 ms at 16 kHz: 50 Hz per bin
    w = frequency_warp_matrix(torch.tensor([alpha, 1.0]), n_freqs, SR)
    assert torch.allclose(w[1], torch.eye(n_freqs))  # alpha 1 is the identity
    assert torch.allclose(w.sum(2), torch.ones(2, n_freqs))  # each output bin interpolates
    power = torch.zeros(n_freqs, 1)
    power[20] = 1.0  # 1 kHz
    warped = (w[0] @ power)[:, 0]
    centre = float((warped * torch.arange(n_freqs)).sum() / warped.sum())
    assert centre * 50 == pytest.approx(1000 * alpha, abs=30)  # below the knee: f -> alpha f
    assert w[0, 0, 0] == 1 and w[0, -1, -1] == 1  # 0 Hz and Nyquist stay put


def test_vtlp_warps_features_per_utterance_and_draws_from_the_generator():
    waves, lens = _batch()
    ext = FeatureExtractor("logmel", SR)
    plain, _ = ext(waves, lens)
    same, _ = ext(waves, lens, torch.ones(len(waves)))
    assert torch.allclose(plain, same, atol=1e-4)
    warp = FrequencyWarp((0.9, 1.1))
    alphas = warp(3, _gen(1), torch.device("cpu"))
    assert torch.equal(alphas, warp(3, _gen(1), torch.device("cpu")))
    assert ((alphas >= 0.9) & (alphas < 1.1)).all() and len(set(alphas.tolist())) == 3
    warped, _ = ext(waves, lens, alphas)
    assert not torch.allclose(plain, warped, atol=1e-2)
    assert torch.equal(
        FrequencyWarp((0.9, 1.1), p=0.0)(3, _gen(1), torch.device("cpu")), torch.ones(3)
    )
    for kind in ("spectrogram", "mfcc"):  # every feature kind takes a warp
        out, _ = FeatureExtractor(kind, SR)(waves, lens, alphas)
        assert torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="vtlp_alpha"):
        FrequencyWarp((0.0, 1.1))
    with pytest.raises(ConfigError, match="vtlp_alpha"):
        FrequencyWarp((1.1, 0.9))


def _mask_structure(out: torch.Tensor, n: int):
    """Masked frames (all bins 0) and masked bins (0 on all valid frames) of a ones input."""
    zero = out[:n] == 0
    return zero.all(1), zero.all(0), zero


def test_specaugment_masks_stay_in_bounds():
    lens = torch.tensor([400, 250, 60, 1000])
    feats = torch.full((4, 1000, 80), 5.0)  # padding filled with 5: masks must leave it alone
    for i, n in enumerate(lens.tolist()):
        feats[i, :n] = 1.0
    spec = SpecAugment(freq_masks=2, freq_width=27, time_masks=3, time_width=0.05)
    widest_bins = widest_frames = 0
    for seed in range(20):
        out = spec(feats, lens, _gen(seed))
        for i, n in enumerate(lens.tolist()):
            frames, bins, zero = _mask_structure(out[i], n)
            # Every zero is in a masked frame or a masked bin, nothing beyond the valid frames.
            assert torch.equal(zero, frames[:, None] | bins[None, :])
            assert torch.equal(out[i, n:], feats[i, n:])
            assert int(bins.sum()) <= 2 * 27
            assert int(frames.sum()) <= 3 * math.floor(0.05 * n)
            widest_bins = max(widest_bins, _longest_run(bins))
            widest_frames = max(widest_frames, _longest_run(frames) / max(1, math.floor(0.05 * n)))
    assert 0 < widest_bins <= 2 * 27 and 0 < widest_frames <= 3


def _longest_run(mask: torch.Tensor) -> int:
    best = run = 0
    for v in mask.tolist():
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def test_specaugment_single_mask_width_bounds_and_seeding():
    lens = torch.tensor([200] * 32)
    feats = torch.ones(32, 200, 40)
    spec = SpecAugment(freq_masks=1, freq_width=10, time_masks=1, time_width=0.1)
    out = spec(feats, lens, _gen(1))
    bin_widths = [(out[i] == 0).all(0).sum().item() for i in range(32)]
    frame_widths = [(out[i] == 0).all(1).sum().item() for i in range(32)]
    assert max(bin_widths) <= 10 and max(frame_widths) <= 20  # one span each: 10 bins, 0.1 x 200
    assert len(set(bin_widths)) > 3 and len(set(frame_widths)) > 3  # widths vary per utterance
    assert torch.equal(out, spec(feats, lens, _gen(1)))
    assert not torch.equal(out, spec(feats, lens, _gen(2)))
    assert torch.equal(SpecAugment(p=0.0)(feats, lens, _gen(1)), feats)
    with pytest.raises(ValueError, match="fraction of each utterance's frames"):
        SpecAugment(time_width=5)
