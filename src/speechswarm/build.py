"""Builders: turn frozen config sections into plain constructor arguments and objects.

Nothing below a builder sees a config object; checkpoints store each object's own settings
(`feature_settings()`, `model.settings()`, `tokenizer.to_dict()`) so inference rebuilds them
without the config that made them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import NamedTuple

import torch

from speechswarm.augment import FrequencyWarp, SpecAugment, WaveAugment
from speechswarm.config import AugmentConfig, FeatureConfig, ModelConfig, TokenizerConfig
from speechswarm.data.tokenizer import Tokenizer, make_tokenizer
from speechswarm.errors import ConfigError, UnavailableError
from speechswarm.features import FeatureExtractor
from speechswarm.model import DeepSpeech2


def build_tokenizer(cfg: TokenizerConfig, train_manifest: str = "") -> Tokenizer:
    """`train_manifest`: where `alphabet: auto` takes its characters from."""
    return make_tokenizer(cfg.kind, cfg.alphabet, cfg.path, train_manifest)


def build_features(cfg: FeatureConfig, sample_rate: int) -> FeatureExtractor:
    return FeatureExtractor(sample_rate=sample_rate, **dataclasses.asdict(cfg))


def build_model(cfg: ModelConfig, num_features: int, vocab_size: int) -> DeepSpeech2:
    kwargs = dataclasses.asdict(cfg)
    kwargs["conv_kernels"] = tuple(tuple(k) for k in cfg.conv_kernels)
    kwargs["conv_strides"] = tuple(tuple(s) for s in cfg.conv_strides)
    return DeepSpeech2(num_features=num_features, vocab_size=vocab_size, **kwargs)


class Augmenters(NamedTuple):
    """What a training step applies, in order: to the waves, to the spectrum's frequency axis
    (VTLP factors the feature extractor applies), to the normalised features."""

    wave: WaveAugment | None
    warp: FrequencyWarp | None
    spec: SpecAugment | None


def build_augment(cfg: AugmentConfig, sample_rate: int) -> Augmenters:
    """The augmenters a config asks for (None where it asks for none)."""
    wave = None
    if cfg.shift_ms or cfg.gain_db or (cfg.noise_snr_db and cfg.noise_prob) or cfg.reverb_prob:
        wave = WaveAugment(
            sample_rate=sample_rate,
            shift_ms=cfg.shift_ms,
            gain_db=cfg.gain_db,
            noise_snr_db=cfg.noise_snr_db,
            noise_prob=cfg.noise_prob,
            noise_dir=cfg.noise_dir or None,
            reverb_prob=cfg.reverb_prob,
        )
    spec = None
    if cfg.freq_masks or cfg.time_masks:
        spec = SpecAugment(
            freq_masks=cfg.freq_masks,
            freq_width=cfg.freq_width,
            time_masks=cfg.time_masks,
            time_width=cfg.time_width,
        )
    warp = FrequencyWarp(cfg.vtlp_alpha, cfg.vtlp_prob) if cfg.vtlp_alpha else None
    return Augmenters(wave, warp, spec)


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(
            f"device {name} asked for, but torch sees no CUDA GPU; use --device cpu"
        )
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32.

    `auto`: bf16 on CPUs with native bf16 (AVX-512 BF16 / AMX: ~1.4x faster steps here) and
    on CUDA GPUs that support it; fp16 on older GPUs (with a GradScaler); fp32 otherwise.
    """
    if name == "fp32":
        return None
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
        return torch.float16
    if name == "bf16":
        if device.type == "cpu" and not cpu_has_bf16():
            raise UnavailableError("this CPU has no native bf16; use precision=fp32")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for `dtype` from `resolve_precision` (None: plain fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
