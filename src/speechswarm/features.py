"""Batched, device-agnostic speech features: DS2 log-spectrogram, log-mel and MFCC.

    PYTHONPATH=src python bench/bench_features.py   # x-real-time of each kind, 1 and 2 threads

`FeatureExtractor(kind=...)(waves, wave_lens) -> (feats, feat_lens)` runs on whatever device
`waves` lives on (CPU or CUDA): every tensor it makes is created there, there is no numpy in
the forward path, and it computes in fp32 even inside an autocast region.

Framing, the same for every kind: a window of `win_ms` (n_fft = win_length, no zero padding:
20 ms at 16 kHz is 320 samples -> 161 frequency bins), a hop of `hop_ms`, and `center=True`
with ZERO padding of n_fft // 2 on both sides (librosa >= 0.10's default pad_mode="constant").
deepspeech.pytorch calls librosa.stft with center=True under older librosa's reflect padding,
so its first and last frames differ slightly; zeros are chosen because in a padded batch the
reflection happens at the batch's end, not each utterance's, so a short utterance's last
frames would change with its neighbours. Frame t is centred on sample
t * hop, so an utterance of S > 0 samples has exactly S // hop + 1 frames (0 samples: 0 frames)
and even a 1-sample utterance gets a frame. Samples beyond `wave_lens` are zeroed before the
STFT, so an utterance's frames are the same alone or next to a long neighbour.

Kinds:
  spectrogram  DS2 / deepspeech.pytorch: symmetric Hamming window (scipy.signal.hamming, as
               deepspeech.pytorch passes it), log1p(|STFT|) - log1p of the MAGNITUDE, which
               is 0 for silence and needs no floor constant. n_fft // 2 + 1 features.
  logmel       periodic Hann window, power |STFT|^2, mel filterbank with librosa's defaults
               (Slaney mel scale, Slaney area normalisation, 0 Hz .. sample_rate / 2), then
               log(x + 1e-6). Uses the same `win_ms` window: 20 ms by default; pass win_ms=25
               for the Kaldi / Whisper 25 ms (n_fft 400) window.
  mfcc         log-mel -> DCT-II (orthonormal, scipy.fft.dct(norm="ortho")), first n_mfcc.

Normalisation (applied last, then padded frames are set to exactly 0):
  utterance    per utterance, per feature bin: (x - mean) / sqrt(var + 1e-5), mean and
               (population) variance over that utterance's valid frames only.
  global       (x - mean) / std with fixed (F,) vectors: pass them, or compute them with
               `compute_global_stats(extractor, wave_batches)` and `set_global_stats()`.
               Training computes them (on up to 500 training utterances) and the checkpoint
               stores them. This is the causal mode: a frame's features depend on its own
               samples only, so streaming (`speechswarm.streaming`) gets the same features
               from chunks as from the whole clip. (A running mean over the frames so far
               would be causal too, but would normalise a clip's first frames differently
               from its later ones and from training.)
  none         raw features.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from speechswarm.errors import ConfigError, DataError

KINDS = ("spectrogram", "logmel", "mfcc")
NORMALIZE = ("utterance", "global", "none")
LOG_EPS = 1e-6  # log-mel floor: log(power + LOG_EPS)
NORM_EPS = 1e-5  # added to the per-utterance variance so a constant bin does not divide by 0
MIN_STD = 1e-5  # global std floor


def hz_to_mel(hz: Tensor) -> Tensor:
    """Slaney mel scale (librosa's default): linear below 1 kHz (3 mels per 200 Hz), log above.

    hz_to_mel(1000) == 15 and each factor 6.4 in frequency above 1 kHz adds 27 mels.
    """
    linear = hz / (200.0 / 3.0)
    log = 15.0 + torch.log(hz.clamp_min(1000.0) / 1000.0) / (math.log(6.4) / 27.0)
    return torch.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel: Tensor) -> Tensor:
    """Inverse of `hz_to_mel`."""
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * torch.exp((math.log(6.4) / 27.0) * (mel.clamp_min(15.0) - 15.0))
    return torch.where(mel >= 15.0, log, linear)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular mel filters as a (n_freqs, n_mels) float32 matrix: `power @ fb` -> mel power.

    librosa.filters.mel(htk=False, norm="slaney") from 0 Hz to sample_rate / 2: n_mels + 2
    points equally spaced in mel, filter m rises from point m to m+1 and falls to m+2, and is
    scaled by 2 / (width in Hz) so each filter has the same area. Computed in float64.
    """
    nyquist = sample_rate / 2.0
    freqs = torch.linspace(0.0, nyquist, n_freqs, dtype=torch.float64)  # (n_freqs,) Hz
    top = hz_to_mel(torch.tensor(nyquist, dtype=torch.float64))
    edges = mel_to_hz(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # (n_mels,) Hz each
    rising = (freqs[:, None] - lower) / (centre - lower)  # (n_freqs, n_mels)
    falling = (upper - freqs[:, None]) / (upper - centre)
    fb = torch.minimum(rising, falling).clamp_min(0.0) * (2.0 / (upper - lower))
    return fb.float()


def frequency_warp_matrix(
    alphas: Tensor, n_freqs: int, sample_rate: int, boundary_hz: float | None = None
) -> Tensor:
    """(N, n_freqs, n_freqs) float32 maps, `W[n] @ power` -> utterance n's power spectrum with
    its frequency axis warped by alphas[n]: VTLP (Jaitly & Hinton 2013).

    The warp sends frequency f to alpha * f up to a boundary (`boundary_hz`, by default 60 %
    of the Nyquist frequency, times min(alpha, 1)), then linearly to the Nyquist frequency, so
    the band's ends stay where they are. Alpha > 1 moves formants up (a shorter vocal tract),
    < 1 down; 1 is the identity. Each output bin takes the power at its source frequency,
    interpolated linearly between the two nearest input bins.
    """
    nyquist = sample_rate / 2.0
    boundary = 0.6 * nyquist if boundary_hz is None else float(boundary_hz)
    alphas = alphas.to(torch.float64)[:, None]  # (N, 1)
    target = torch.linspace(0.0, nyquist, n_freqs, dtype=torch.float64, device=alphas.device)
    knee_out = boundary * alphas.clamp(max=1.0)  # where the warped axis leaves the line alpha*f
    knee_in = knee_out / alphas
    upper = nyquist - (nyquist - target) * (nyquist - knee_in) / (nyquist - knee_out)
    source = torch.where(target <= knee_out, target / alphas, upper)  # (N, n_freqs) Hz
    position = (source / nyquist * (n_freqs - 1)).clamp(0.0, n_freqs - 1.0)  # fractional bin
    low = position.floor().long().clamp(max=n_freqs - 2)
    frac = (position - low).float()
    warp = torch.zeros(len(alphas), n_freqs, n_freqs, device=alphas.device)
    warp.scatter_(2, low[:, :, None], (1.0 - frac)[:, :, None])
    warp.scatter_add_(2, (low + 1)[:, :, None], frac[:, :, None])
    return warp


def dct_matrix(n_mfcc: int, n_mels: int) -> Tensor:
    """(n_mels, n_mfcc) float32: `logmel @ D` == scipy.fft.dct(logmel, norm="ortho")[..., :n_mfcc]."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)
    basis = torch.cos(math.pi / n_mels * (n[:, None] + 0.5) * k[None, :])  # (n_mels, n_mfcc)
    scale = torch.full((n_mfcc,), math.sqrt(2.0 / n_mels), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / n_mels)
    return (basis * scale).float()


def frame_mask(feat_lens: Tensor, num_frames: int) -> Tensor:
    """(N, T) bool, True on each utterance's valid frames."""
    return torch.arange(num_frames, device=feat_lens.device) < feat_lens[:, None]


def normalize_per_utterance(feats: Tensor, feat_lens: Tensor) -> Tensor:
    """Per utterance and bin: (x - mean) / sqrt(var + 1e-5) over valid frames, IN PLACE.

    feats: (N, F, T) float32 (frames last, any strides), padded frames exactly 0 (as
    `frames_last` leaves them); feat_lens: (N,) frames. Returns `feats`, padded frames 0. The
    population variance is taken in a second pass over the centred values (no E[x^2] - E[x]^2
    cancellation), so a short utterance's numbers do not depend on its batch's padding.
    """
    padded = ~frame_mask(feat_lens, feats.shape[2])[:, None, :]  # (N, 1, T)
    count = feat_lens.clamp_min(1).to(feats.dtype)[:, None, None]  # (N, 1, 1)
    mean = feats.sum(2, keepdim=True) / count  # (N, F, 1)
    feats.sub_(mean).masked_fill_(padded, 0.0)  # centred valid frames, padded frames 0
    var = torch.linalg.vector_norm(feats, dim=2, keepdim=True).square_() / count
    return feats.mul_(torch.rsqrt(var + NORM_EPS))


class FeatureExtractor(nn.Module):
    """waves (N, S) float32, wave_lens (N,) samples -> feats (N, T, F) float32, feat_lens (N,).

    See the module docstring for the exact framing, per-kind maths and normalisation.
    `feature_settings()` / `from_settings()` store and rebuild it (global mean/std included).
    """

    def __init__(
        self,
        kind: str = "spectrogram",
        sample_rate: int = 16000,
        win_ms: float = 20.0,
        hop_ms: float = 10.0,
        n_mels: int = 80,
        n_mfcc: int = 13,
        normalize: str = "utterance",
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_choice("kind", kind, KINDS)
        _check_choice("normalize", normalize, NORMALIZE)
        self.kind, self.normalize = kind, normalize
        self.sample_rate, self.win_ms, self.hop_ms = int(sample_rate), float(win_ms), float(hop_ms)
        self.n_mels, self.n_mfcc = int(n_mels), int(n_mfcc)
        self.n_fft = round(self.sample_rate * self.win_ms / 1000)  # samples; = win_length
        self.hop = round(self.sample_rate * self.hop_ms / 1000)  # samples
        if self.n_fft < 2 or self.hop < 1:
            raise ConfigError(
                f"features: win_ms={win_ms} / hop_ms={hop_ms} at {sample_rate} Hz give a "
                f"{self.n_fft}-sample window and {self.hop}-sample hop; use win_ms >= 1, hop_ms > 0"
            )
        n_freqs = self.n_fft // 2 + 1
        if kind == "spectrogram":
            window = torch.hamming_window(self.n_fft, periodic=False)  # = scipy.signal.hamming
        else:
            window = torch.hann_window(self.n_fft, periodic=True)
        # Non-persistent: rebuilt from the settings, so state_dict holds only mean/std.
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_fb", None, persistent=False)
        self.register_buffer("dct", None, persistent=False)
        if kind != "spectrogram":
            self.mel_fb = _checked_filterbank(n_freqs, self.n_mels, self.sample_rate, win_ms)
        if kind == "mfcc":
            if not 1 <= self.n_mfcc <= self.n_mels:
                raise ConfigError(f"features: n_mfcc={n_mfcc} must be in 1..n_mels ({n_mels})")
            self.dct = dct_matrix(self.n_mfcc, self.n_mels)
        sizes = {"spectrogram": n_freqs, "logmel": self.n_mels, "mfcc": self.n_mfcc}
        self.num_features = sizes[kind]  # F
        self.register_buffer("mean", None)
        self.register_buffer("std", None)
        if (mean is None) != (std is None):
            raise ValueError("features: give both mean and std, or neither")
        if mean is not None:
            if normalize != "global":
                raise ValueError(
                    f"features: mean/std given but normalize={normalize!r}; "
                    "use normalize='global' or drop them"
                )
            self.set_global_stats(torch.as_tensor(mean), torch.as_tensor(std))

    def set_global_stats(self, mean: Tensor, std: Tensor) -> None:
        """Install (F,) global mean and std (std floored at 1e-5) for normalize='global'."""
        for name, value in (("mean", mean), ("std", std)):
            if tuple(value.shape) != (self.num_features,):
                raise ValueError(
                    f"features: global {name} has shape {tuple(value.shape)}, expected "
                    f"({self.num_features},) for kind={self.kind!r}; recompute with compute_global_stats"
                )
        self.mean = mean.detach().float().clone()
        self.std = std.detach().float().clamp_min(MIN_STD)

    def num_frames(self, num_samples: int | Tensor) -> int | Tensor:
        """Frames for `num_samples` samples: num_samples // hop + 1, and 0 for 0 samples."""
        if isinstance(num_samples, Tensor):
            return torch.where(num_samples > 0, num_samples // self.hop + 1, 0)
        return num_samples // self.hop + 1 if num_samples > 0 else 0

    def frames_last(
        self, waves: Tensor, wave_lens: Tensor, warp: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Un-normalised features FRAMES LAST: (N, F, T) float32 with padded frames 0, feat_lens (N,).

        (N, F, T) is torch.stft's shape; working in it and transposing once at the end avoids
        a copy (the spectrogram's memory is already frame-major, so that transpose is free).
        `warp`: (N,) VTLP factors (`frequency_warp_matrix`), applied to the power spectrum.
        """
        if waves.dim() != 2:
            raise ValueError(f"features: waves must be (N, S), got shape {tuple(waves.shape)}")
        device = waves.device
        wave_lens = wave_lens.to(device=device, dtype=torch.long)
        feat_lens = self.num_frames(wave_lens)
        num_samples = waves.shape[1]
        if len(wave_lens) and int(wave_lens.max()) > num_samples:  # one sync per batch
            raise ValueError(
                f"features: wave_lens max {int(wave_lens.max())} exceeds the {num_samples} "
                "samples of waves (N, S); the batch was collated wrongly"
            )
        if num_samples == 0:
            return waves.new_zeros(waves.shape[0], self.num_features, 0), feat_lens
        # Zero the padding: frames near an utterance's end then see the same zeros whether
        # it is alone (STFT zero padding) or beside a longer neighbour.
        waves = torch.where(frame_mask(wave_lens, num_samples), waves.float(), 0.0)
        feats = self.spectral_frames(waves, center=True, warp=warp)  # T = num_samples // hop + 1
        padded = ~frame_mask(feat_lens, feats.shape[2])[:, None, :]  # (N, 1, T)
        return feats.masked_fill_(padded, 0.0), feat_lens

    def spectral_frames(self, waves: Tensor, center: bool, warp: Tensor | None = None) -> Tensor:
        """waves (N, S) float32 -> un-normalised features (N, F, T), frames last.

        center=True: zero padding of n_fft // 2 on both sides (`frames_last`); center=False:
        no padding, frame t covers samples t * hop .. t * hop + n_fft - 1 (the streaming
        front end pads the start itself and computes only frames whose samples have come).
        """
        with torch.autocast(waves.device.type, enabled=False):
            spec = torch.stft(
                waves.float(),
                n_fft=self.n_fft,
                hop_length=self.hop,
                win_length=self.n_fft,
                window=self.window.to(waves.device),
                center=center,
                pad_mode="constant",
                return_complex=True,
            )  # (N, n_freqs, T) complex
            # |X|^2 from real and imaginary parts: ~2x faster than complex abs() on CPU.
            power = spec.real.square() + spec.imag.square()
            if warp is not None:  # VTLP: each utterance's frequency axis warped (training)
                if warp.shape != (len(waves),):
                    raise ValueError(
                        f"features: warp must be (N,) = ({len(waves)},), got {tuple(warp.shape)}"
                    )
                w = frequency_warp_matrix(warp.to(waves.device), power.shape[1], self.sample_rate)
                power = torch.bmm(w, power) if self.kind == "spectrogram" else power
            if self.kind == "spectrogram":
                return power.sqrt_().log1p_()
            mel_fb = self.mel_fb.to(waves.device).T  # (n_mels, n_freqs)
            if warp is not None:  # the warp folded into the filterbank: n_mels < n_freqs rows
                mel_fb = mel_fb @ w  # (N, n_mels, n_freqs)
            feats = torch.matmul(mel_fb, power).add_(LOG_EPS).log_()  # (N, n_mels, T)
            if self.kind == "mfcc":
                feats = self.dct.to(waves.device).T @ feats  # (N, n_mfcc, T)
            return feats

    def forward(
        self, waves: Tensor, wave_lens: Tensor, warp: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """waves (N, S) float32, wave_lens (N,) samples -> feats (N, T, F), feat_lens (N,) frames.

        `warp`: (N,) VTLP factors for training (`augment.FrequencyWarp`); None at inference."""
        feats, feat_lens = self.frames_last(waves, wave_lens, warp)  # (N, F, T)
        if self.normalize == "utterance":
            feats = normalize_per_utterance(feats, feat_lens)
        elif self.normalize == "global":
            padded = ~frame_mask(feat_lens, feats.shape[2])[:, None, :]
            feats = self.normalize_global(feats).masked_fill_(padded, 0.0)
        return feats.transpose(1, 2).contiguous(), feat_lens  # (N, T, F)

    @property
    def causal(self) -> bool:
        """True when each frame's features depend only on that frame's samples (normalize
        'global' or 'none'), so audio fed in chunks gives the features of the whole clip."""
        return self.normalize != "utterance"

    def normalize_global(self, feats: Tensor) -> Tensor:
        """(N, F, T) raw features -> (x - mean) / std per bin, IN PLACE (normalize='global')."""
        if self.mean is None:
            raise RuntimeError(
                "features: normalize='global' but no mean/std installed; compute them with "
                "compute_global_stats(extractor, wave_batches) and call set_global_stats()"
            )
        mean, std = self.mean.to(feats.device)[:, None], self.std.to(feats.device)[:, None]
        return feats.sub_(mean).div_(std)

    def feature_settings(self) -> dict:
        """Every constructor argument, JSON-able (global mean/std as lists of floats)."""
        return {
            "kind": self.kind,
            "sample_rate": self.sample_rate,
            "win_ms": self.win_ms,
            "hop_ms": self.hop_ms,
            "n_mels": self.n_mels,
            "n_mfcc": self.n_mfcc,
            "normalize": self.normalize,
            "mean": None if self.mean is None else self.mean.cpu().tolist(),
            "std": None if self.std is None else self.std.cpu().tolist(),
        }

    @classmethod
    def from_settings(cls, settings: dict) -> FeatureExtractor:
        """Rebuild an extractor from `feature_settings()` (e.g. read from a checkpoint)."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(
                f"feature settings have unknown keys {unknown} (written by a newer speechswarm?); "
                f"known keys: {sorted(known)}"
            )
        return cls(**settings)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, sample_rate={self.sample_rate}, n_fft={self.n_fft}, "
            f"hop={self.hop}, num_features={self.num_features}, normalize={self.normalize}"
        )


@torch.no_grad()
def compute_global_stats(
    extractor: FeatureExtractor, wave_batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Per-bin mean and std (two (F,) float32 tensors) of raw features over all valid frames.

    wave_batches yields (waves (N, S), wave_lens (N,)). Each batch's count, mean and sum of
    squared deviations (float64) are merged with Chan et al.'s parallel update, which stays
    accurate over many hours where a running sum of squares would cancel catastrophically.
    """
    count, mean, m2 = 0, None, None
    for waves, wave_lens in wave_batches:
        feats, feat_lens = extractor.frames_last(waves, wave_lens)  # (N, F, T)
        n = int(feat_lens.sum())
        if n == 0:
            continue
        feats = feats.transpose(1, 2)  # (N, T, F)
        valid = feats[frame_mask(feat_lens, feats.shape[1])].double()  # (n, F) valid frames
        batch_mean = valid.mean(0)
        batch_m2 = (valid - batch_mean).square().sum(0)
        if mean is None:
            count, mean, m2 = n, batch_mean, batch_m2
            continue
        delta = batch_mean - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + batch_m2 + delta.square() * (count * n / total)
        count = total
    if mean is None:
        raise DataError(
            "compute_global_stats: no valid frames in wave_batches (empty or all zero-length)"
        )
    std = (m2 / count).sqrt().clamp_min(MIN_STD)
    return mean.float().cpu(), std.float().cpu()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"features: {name}={value!r} is not one of {', '.join(choices)}")


def _checked_filterbank(n_freqs: int, n_mels: int, sample_rate: int, win_ms: float) -> Tensor:
    """`mel_filterbank`, refusing filters that cover no FFT bin (a channel that is always log 1e-6)."""
    if n_mels < 1:
        raise ConfigError(f"features: n_mels={n_mels} must be >= 1")
    fb = mel_filterbank(n_freqs, n_mels, sample_rate)
    empty = (fb.sum(0) == 0).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(
            f"features: mel filters {empty} of {n_mels} cover no FFT bin with a {win_ms} ms window "
            f"({n_freqs} bins); lower n_mels or raise win_ms"
        )
    return fb
