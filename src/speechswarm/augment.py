"""Data augmentation on the training device: batched waveform effects and SpecAugment.

    speechswarm train --config tiny augment.noise_snr_db=[5,20] augment.noise_prob=0.5

Every random draw comes from the explicit `torch.Generator` passed in (never the global RNG),
so a run is reproducible from its seed and a checkpoint's generator state. Draws are made on
the generator's device and moved to the data's: pass a generator on the data's device (e.g.
`torch.Generator("cuda")`) to avoid copying noise across. Each effect draws its numbers for
the whole batch whether or not an utterance gets it, so one effect's probability does not
shift another's randomness.

- `WaveAugment` (GPU or CPU, on padded batches): time shift, reverb, additive noise, gain.
- `FrequencyWarp` (VTLP): a random factor per utterance that the feature extractor applies
  to the power spectrum's frequency axis (`features.frequency_warp_matrix`), so one person
  sounds like persons with longer or shorter vocal tracts.
- `SpecAugment` (on normalised features): frequency and adaptive time masks, filled with 0.

Speed perturbation runs per utterance in the loader workers: `data.audio.speed_perturb`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from speechswarm.data.audio import audio_files_under
from speechswarm.errors import ConfigError, DataError, InputNotFoundError

NOISE_SUFFIXES = (".wav", ".flac")


def _uniform(
    n: int, lo: float, hi: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """(n,) float32 uniform in [lo, hi), drawn on the generator's device, returned on `device`."""
    u = torch.rand(n, generator=generator, device=generator.device)
    return (lo + (hi - lo) * u).to(device)


def _coin(n: int, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """(n,) bool, each True with probability p (a draw is made even when p is 0 or 1)."""
    return _uniform(n, 0.0, 1.0, generator, device) < p


def _valid_mask(lens: Tensor, length: int) -> Tensor:
    """(N, length) bool, True on the valid (unpadded) positions."""
    return torch.arange(length, device=lens.device) < lens[:, None]


def _check_range(name: str, value: Sequence[float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2 or value[0] > value[1]:
        raise ConfigError(
            f"augment: {name} must be a (low, high) pair with low <= high, got {value!r}"
        )
    return float(value[0]), float(value[1])


def _check_prob(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment: {name}={p} must be a probability in [0, 1]")
    return float(p)


def fft_convolve(waves: Tensor, irs: Tensor) -> Tensor:
    """The first S samples of the full linear convolution of each row: (N, S) * (N, K) -> (N, S).

    Done with real FFTs of a power-of-two size >= S + K - 1 (no circular wrap-around). Keeping
    S samples drops the reverb tail past the end, so lengths stay what the labels assume.
    """
    num_samples, num_taps = waves.shape[1], irs.shape[1]
    n_fft = 1 << (num_samples + num_taps - 2).bit_length()  # next power of two >= S + K - 1
    spec = torch.fft.rfft(waves, n_fft) * torch.fft.rfft(irs, n_fft)
    return torch.fft.irfft(spec, n_fft)[:, :num_samples]


def exponential_rir(
    rt60_s: Tensor, num_taps: int, sample_rate: int, generator: torch.Generator
) -> Tensor:
    """Synthetic room impulse responses: Gaussian noise under an exp decay, unit energy.

    rt60_s: (N,) seconds for the energy to fall by 60 dB (amplitude x 1e-3). Returns (N, num_taps)
    on rt60_s's device. Amplitude envelope exp(-3 ln(10) t / rt60) reaches 1e-3 at t = rt60.
    Unit energy keeps the reverberated speech at roughly its dry loudness.
    """
    noise = torch.randn(rt60_s.shape[0], num_taps, generator=generator, device=generator.device)
    t = torch.arange(num_taps, device=rt60_s.device) / sample_rate  # (K,) seconds
    envelope = torch.exp(-3.0 * math.log(10.0) * t[None, :] / rt60_s[:, None])  # (N, K)
    rir = noise.to(rt60_s.device) * envelope
    return rir / torch.linalg.vector_norm(rir, dim=1, keepdim=True)


def load_noise_bank(noise_dir: str | Path, sample_rate: int, max_seconds: float) -> Tensor:
    """Every .wav/.flac under noise_dir (sorted, recursive), mono, resampled, joined: (B,) float32.

    Stops after `max_seconds` of noise so a large collection (MUSAN: ~100 h) cannot fill memory.
    """
    root = Path(noise_dir)
    if not root.is_dir():
        raise InputNotFoundError(
            f"augment: noise_dir {root} is not a directory; fix augment.noise_dir"
        )
    paths = audio_files_under(root, NOISE_SUFFIXES)
    if not paths:
        raise InputNotFoundError(f"augment: no .wav or .flac files under noise_dir {root}")
    chunks, total = [], 0
    for path in paths:
        try:
            audio, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, channels)
        except (sf.LibsndfileError, RuntimeError) as err:
            raise DataError(
                f"augment: cannot read noise file {path}: {err}; remove or re-encode it"
            ) from err
        audio = audio.mean(axis=1)
        if sr != sample_rate:
            audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
        chunks.append(torch.from_numpy(np.ascontiguousarray(audio)))
        total += len(audio)
        if total >= max_seconds * sample_rate:
            break
    bank = torch.cat(chunks)
    if not torch.isfinite(bank).all() or float(bank.abs().max()) == 0.0:
        raise DataError(f"augment: noise files under {root} are silent or contain NaN/inf")
    return bank


class WaveAugment:
    """waves (N, S) float32, wave_lens (N,) samples, generator -> augmented (N, S) float32.

    Effects, in this order, each given to an utterance with its own probability:
      shift   delay or advance by up to `shift_ms` (uniform, whole samples) INSIDE the valid
              region, zero-filled: the length and the padding stay as they were (circular
              shift would wrap the end of a sentence onto its start).
      reverb  convolve with `exponential_rir` (RT60 uniform in `rt60_s`) by FFT, keep length.
      noise   add noise at an SNR uniform in `noise_snr_db`, with signal and noise power
              measured over each utterance's VALID samples only. Noise is white Gaussian, or,
              with `noise_dir`, a random crop of its .wav/.flac files (loaded once, resampled,
              joined end to end, so a crop can run across a file boundary or wrap around).
      gain    multiply by 10^(g / 20), g uniform in `gain_db`. No clipping: the features are
              logarithmic, and clipping would add distortion the test audio never has.
    The input is not modified; padded samples of the output are exactly 0. A `None` range or a
    zero probability switches an effect off.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        shift_ms: float = 0.0,
        shift_prob: float = 1.0,
        gain_db: Sequence[float] | None = None,
        gain_prob: float = 1.0,
        noise_snr_db: Sequence[float] | None = None,
        noise_prob: float = 1.0,
        noise_dir: str | Path | None = None,
        noise_max_seconds: float = 3600.0,
        reverb_prob: float = 0.0,
        rt60_s: Sequence[float] = (0.1, 0.6),
    ) -> None:
        self.sample_rate = int(sample_rate)
        if shift_ms < 0:
            raise ConfigError(
                f"augment: shift_ms={shift_ms} is the largest |shift|; use a value >= 0"
            )
        self.shift_samples = round(shift_ms * self.sample_rate / 1000)
        self.shift_prob = _check_prob("shift_prob", shift_prob)
        self.gain_db = _check_range("gain_db", gain_db)
        self.gain_prob = _check_prob("gain_prob", gain_prob)
        self.noise_snr_db = _check_range("noise_snr_db", noise_snr_db)
        self.noise_prob = _check_prob("noise_prob", noise_prob)
        self.reverb_prob = _check_prob("reverb_prob", reverb_prob)
        self.rt60_s = _check_range("rt60_s", rt60_s)
        if self.rt60_s[0] <= 0:
            raise ConfigError(f"augment: rt60_s={rt60_s} must be positive seconds")
        self.noise_bank: Tensor | None = None  # (B,) float32 on the CPU
        self._banks: dict[torch.device, Tensor] = {}  # the bank copied to each device used
        if noise_dir:
            if self.noise_snr_db is None:
                raise ConfigError(
                    "augment: noise_dir given but noise_snr_db unset; set noise_snr_db=[low, high]"
                )
            self.noise_bank = load_noise_bank(noise_dir, self.sample_rate, noise_max_seconds)

    def __call__(self, waves: Tensor, wave_lens: Tensor, generator: torch.Generator) -> Tensor:
        if waves.dim() != 2:
            raise ValueError(f"augment: waves must be (N, S), got shape {tuple(waves.shape)}")
        wave_lens = wave_lens.to(device=waves.device, dtype=torch.long)
        valid = _valid_mask(wave_lens, waves.shape[1])  # (N, S)
        out = torch.where(valid, waves.float(), 0.0)
        if self.shift_samples:
            out = self._shift(out, wave_lens, valid, generator)
        if self.reverb_prob:
            out = self._reverb(out, valid, generator)
        if self.noise_snr_db is not None and self.noise_prob:
            out = self._add_noise(out, wave_lens, valid, generator)
        if self.gain_db is not None and self.gain_prob:
            apply = _coin(len(out), self.gain_prob, generator, out.device)
            gain_db = _uniform(len(out), *self.gain_db, generator, out.device)
            out = out * torch.where(apply, 10.0 ** (gain_db / 20.0), 1.0)[:, None]
        return out

    def _shift(
        self, out: Tensor, wave_lens: Tensor, valid: Tensor, generator: torch.Generator
    ) -> Tensor:
        """Delay (k > 0) or advance (k < 0) each row by k samples within its valid region."""
        n, s = out.shape
        apply = _coin(n, self.shift_prob, generator, out.device)
        span = 2 * self.shift_samples + 1
        k = (_uniform(n, 0.0, 1.0, generator, out.device) * span).long().clamp(max=span - 1)
        k = torch.where(apply, k - self.shift_samples, 0)  # (N,) samples in [-max, max]
        src = torch.arange(s, device=out.device) - k[:, None]  # (N, S): out[t] = in[t - k]
        keep = valid & (src >= 0) & (src < wave_lens[:, None])
        return torch.where(keep, out.gather(1, src.clamp(0, s - 1)), 0.0)

    def _reverb(self, out: Tensor, valid: Tensor, generator: torch.Generator) -> Tensor:
        n = len(out)
        apply = _coin(n, self.reverb_prob, generator, out.device)
        rt60 = _uniform(n, *self.rt60_s, generator, out.device)  # (N,) seconds
        num_taps = math.ceil(self.rt60_s[1] * self.sample_rate)  # enough for the slowest decay
        rirs = exponential_rir(rt60, num_taps, self.sample_rate, generator)  # (N, K)
        rows = apply.nonzero().flatten()
        if len(rows) == 0:
            return out
        out = out.clone()
        wet = fft_convolve(out[rows], rirs[rows])  # (n_apply, S)
        out[rows] = torch.where(valid[rows], wet, 0.0)
        return out

    def _add_noise(
        self, out: Tensor, wave_lens: Tensor, valid: Tensor, generator: torch.Generator
    ) -> Tensor:
        n, s = out.shape
        apply = _coin(n, self.noise_prob, generator, out.device)
        snr_db = _uniform(n, *self.noise_snr_db, generator, out.device)
        noise = torch.where(valid, self._noise(n, s, generator, out.device), 0.0)  # (N, S)
        count = wave_lens.clamp_min(1).float()
        signal_power = out.square().sum(1) / count  # (N,) mean square over valid samples
        noise_power = noise.square().sum(1) / count
        # Scale so that 10 log10(signal_power / (scale^2 noise_power)) = snr_db; a silent
        # utterance gets no noise (scale 0) rather than noise at an undefined SNR.
        scale = torch.sqrt(signal_power / (noise_power.clamp_min(1e-20) * 10.0 ** (snr_db / 10.0)))
        return out + torch.where(apply, scale, 0.0)[:, None] * noise

    def _noise(self, n: int, s: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """(N, S) unscaled noise: white Gaussian, or random circular crops of the noise bank."""
        if self.noise_bank is None:
            return torch.randn(n, s, generator=generator, device=generator.device).to(device)
        if device not in self._banks:
            self._banks[device] = self.noise_bank.to(device)
        bank = self._banks[device]
        starts = (_uniform(n, 0.0, 1.0, generator, device) * len(bank)).long().tolist()
        offsets = torch.arange(s, device=device)
        return torch.stack([bank[(start + offsets) % len(bank)] for start in starts])


class FrequencyWarp:
    """n, generator, device -> (n,) float32 VTLP factors for `FeatureExtractor(..., warp=)`.

    Each utterance gets a factor uniform in `alpha` (Jaitly & Hinton 2013 used 0.9-1.1) with
    probability `p`, else 1 (no warp). Both draws are made for the whole batch.
    """

    def __init__(self, alpha: Sequence[float] = (0.9, 1.1), p: float = 1.0) -> None:
        lo, hi = _check_range("vtlp_alpha", alpha)
        if lo <= 0.0:
            raise ConfigError(f"augment: vtlp_alpha={alpha!r} must be > 0 (1.0 is no warp)")
        self.alpha = (lo, hi)
        self.p = _check_prob("vtlp_prob", p)

    def __call__(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        alphas = _uniform(n, *self.alpha, generator, device)
        return torch.where(_coin(n, self.p, generator, device), alphas, 1.0)


class SpecAugment:
    """feats (N, T, F), feat_lens (N,) frames, generator -> masked copy of feats (N, T, F).

    Per utterance (Park et al. 2019, with adaptive time masks from Park et al. 2020):
    `freq_masks` bands of width uniform in [0, freq_width] bins, and `time_masks` spans of
    width uniform in [0, floor(time_width * its valid frames)], each placed uniformly inside
    the feature axis / the utterance's valid frames. Masked values become 0, the mean of
    normalised features; padded frames stay as they were. An utterance is augmented at all
    with probability `p`. Vectorised over the batch; the only loop is over masks.
    """

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 27,
        time_masks: int = 2,
        time_width: float = 0.05,
        p: float = 1.0,
    ) -> None:
        if freq_masks < 0 or time_masks < 0 or freq_width < 0:
            raise ConfigError(
                f"augment: freq_masks={freq_masks}, time_masks={time_masks} and "
                f"freq_width={freq_width} must be >= 0"
            )
        if not 0.0 <= time_width <= 1.0:
            raise ConfigError(
                f"augment: time_width={time_width} is a fraction of each utterance's frames; use 0..1"
            )
        self.freq_masks, self.freq_width = int(freq_masks), int(freq_width)
        self.time_masks, self.time_width = int(time_masks), float(time_width)
        self.p = _check_prob("p", p)

    def __call__(self, feats: Tensor, feat_lens: Tensor, generator: torch.Generator) -> Tensor:
        n, num_frames, num_bins = feats.shape
        device = feats.device
        feat_lens = feat_lens.to(device=device, dtype=torch.long)
        apply = _coin(n, self.p, generator, device)
        max_freq = torch.full((n,), min(self.freq_width, num_bins), device=device)
        freq = _random_spans(
            self.freq_masks, max_freq, torch.full_like(max_freq, num_bins), num_bins, generator
        )
        max_time = (self.time_width * feat_lens).floor().long()  # (N,) adaptive width bound
        time = _random_spans(self.time_masks, max_time, feat_lens, num_frames, generator)
        valid = _valid_mask(feat_lens, num_frames)  # (N, T)
        masked = (time[:, :, None] | freq[:, None, :]) & (valid & apply[:, None])[:, :, None]
        return feats.masked_fill(masked, 0.0)


def _random_spans(
    count: int, max_width: Tensor, extent: Tensor, size: int, generator: torch.Generator
) -> Tensor:
    """(N, size) bool: the union of `count` spans per row, each of width uniform in
    [0, max_width[i]] starting uniformly in [0, extent[i] - width], so it ends within extent[i].
    """
    device = max_width.device
    positions = torch.arange(size, device=device)
    mask = torch.zeros(len(max_width), size, dtype=torch.bool, device=device)
    for _ in range(count):
        # floor(u * (k + 1)) is uniform on 0..k; the clamp guards float rounding at u ~ 1.
        u_width = _uniform(len(max_width), 0.0, 1.0, generator, device)
        width = torch.minimum((u_width * (max_width + 1)).long(), max_width)
        room = (extent - width).clamp_min(0)
        u_start = _uniform(len(max_width), 0.0, 1.0, generator, device)
        start = torch.minimum((u_start * (room + 1)).long(), room)
        mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return mask
