"""The model stack of a run: tokenizer, features and model, fine-tuning and freezing.

speechswarm train --config small train.init_from=runs/base/checkpoints/best.pt train.freeze=[conv]
"""

from __future__ import annotations

import logging

import torch

from speechswarm import fused_gru
from speechswarm.build import build_features, build_model, build_tokenizer, resolve_precision
from speechswarm.checkpoint import load_checkpoint
from speechswarm.config import Config
from speechswarm.data.tokenizer import Tokenizer
from speechswarm.errors import ConfigError
from speechswarm.evaluate import eval_batches
from speechswarm.features import FeatureExtractor, compute_global_stats
from speechswarm.model import DeepSpeech2


def build_model_stack(
    cfg: Config, device: torch.device, log: logging.Logger
) -> tuple[Tokenizer, FeatureExtractor, DeepSpeech2, str]:
    """(tokenizer, feature extractor, model on `device`, RNN kernel name) as `cfg` says:
    weights from `train.init_from` where set, `train.freeze` applied. Seed the global RNG
    first: the model's initial weights draw from it."""
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.data.train_manifest)
    extractor = build_features(cfg.features, cfg.data.sample_rate).to(device)
    model = build_model(cfg.model, extractor.num_features, len(tokenizer))
    _check_inter_ctc(cfg)
    if cfg.train.init_from:
        init_from_checkpoint(model, cfg.train.init_from, tokenizer, log)
    _freeze(model, cfg.train.freeze, log)
    model.to(device)
    rnn_kernel = fused_gru.prepare(
        model,
        cfg.train.rnn_kernel,
        device,
        log,
        dtype=resolve_precision(cfg.train.precision, device),
        batch=min(cfg.data.max_batch_size, 24),  # what the kernel choice times a layer with
    )
    return tokenizer, extractor, model, rnn_kernel


def _check_inter_ctc(cfg: Config) -> None:
    layers, n = cfg.train.inter_ctc_layers, cfg.model.rnn_layers
    if any(not 1 <= k < n for k in layers) or len(set(layers)) != len(layers):
        raise ConfigError(
            f"train.inter_ctc_layers={list(layers)}: each must be a distinct recurrent layer "
            f"below the last, 1..{n - 1} (model.rnn_layers={n}); train.inter_ctc_layers=[] "
            "turns intermediate CTC off"
        )
    if not 0.0 <= cfg.train.inter_ctc_weight < 1.0:
        raise ConfigError(
            f"train.inter_ctc_weight={cfg.train.inter_ctc_weight:g} must lie in [0, 1): the "
            "final layer's CTC loss keeps the weight 1 - w"
        )


def init_from_checkpoint(model: DeepSpeech2, path: str, tokenizer: Tokenizer, log) -> None:
    """Transfer learning: copy matching weights; re-initialise the head if the vocabulary differs."""
    ckpt = load_checkpoint(path, model=True)  # one line for a file that holds no model
    source = ckpt["model"]
    target = model.state_dict()
    same_vocab = ckpt.get("tokenizer") == tokenizer.to_dict()
    copied, skipped = [], []
    for name, tensor in source.items():
        if (
            name in target
            and target[name].shape == tensor.shape
            and (same_vocab or not _is_head(name, model))
        ):
            target[name] = tensor
            copied.append(name)
        else:
            skipped.append(name)
    model.load_state_dict(target)
    log.info(
        f"init from {path}: copied {len(copied)} tensors, re-initialised {len(skipped)}"
        + ("" if same_vocab else " (vocabulary differs: new output layer)")
    )


def _is_head(name: str, model: DeepSpeech2) -> bool:
    # DeepSpeech2's output layer is `classifier`; a model may name its head with `head_prefix`.
    return name.startswith(getattr(model, "head_prefix", "classifier."))


def _freeze(model: torch.nn.Module, prefixes: tuple[str, ...], log) -> None:
    if not prefixes:
        return
    frozen = 0
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            frozen += param.numel()
    if not frozen:
        names = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ConfigError(
            f"train.freeze={list(prefixes)} matches no parameter; top-level modules: {names}"
        )
    log.info(f"froze {frozen:,} parameters under {list(prefixes)}")


def with_global_stats(extractor, utts, cfg, device, log):
    batches = eval_batches(
        utts[:500], build_tokenizer(cfg.tokenizer, cfg.data.train_manifest), cfg.data.sample_rate
    )
    mean, std = compute_global_stats(
        extractor, ((b.waves.to(device), b.wave_lens.to(device)) for b in batches)
    )
    settings = dict(extractor.feature_settings(), mean=mean.tolist(), std=std.tolist())
    log.info("computed global feature mean/std on up to 500 training utterances")
    return FeatureExtractor.from_settings(settings).to(device)
