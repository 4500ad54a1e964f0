"""Export a checkpoint's weights as safetensors, with a JSON config that rebuilds the model.

    speechswarm export --format safetensors --checkpoint runs/demo/checkpoints/best.pt --out model.safetensors

Writes two files:

    model.safetensors  the model's state dict (weights and BatchNorm buffers), nothing else;
                       its header metadata holds the config below as JSON under "speechswarm"
    model.json         the same config for people and other tools: `format`,
                       `speechswarm_version`, `model_settings` (DeepSpeech2's constructor
                       arguments), `features` (the front end's settings), `tokenizer`
                       (the vocabulary), `step`

safetensors stores raw tensors and a JSON header, so loading it runs no code (unlike a
pickle) and needs no speechswarm: `safetensors.torch.load_file` gives the tensors.
`load_safetensors` rebuilds the model, the feature extractor and the tokenizer from the file
alone (the metadata), so its outputs equal the checkpoint's exactly (tested).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import speechswarm
from speechswarm.checkpoint import load_checkpoint
from speechswarm.data.tokenizer import Tokenizer, tokenizer_from_dict
from speechswarm.errors import InputNotFoundError, UnavailableError, UsageError
from speechswarm.features import FeatureExtractor
from speechswarm.model import DeepSpeech2, model_from_settings

FORMAT_VERSION = 1
METADATA_KEY = "speechswarm"


def _safetensors_torch():
    try:
        import safetensors.torch
    except ImportError as e:
        raise UnavailableError(
            f"safetensors export needs the safetensors package: pip install safetensors ({e})"
        ) from None
    return safetensors.torch


def export_safetensors(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write `checkpoint`'s model as `out` (.safetensors) plus `out` with .json; returns `out`."""
    st = _safetensors_torch()
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UsageError(f"export --format safetensors: --out must end in .safetensors, got {out}")
    ckpt = load_checkpoint(checkpoint, model=True)
    state = ckpt.get("train_state") or {}
    config = {
        "format": FORMAT_VERSION,
        "speechswarm_version": speechswarm.__version__,
        "model_settings": ckpt["model_settings"],
        "features": ckpt["features"],
        "tokenizer": ckpt["tokenizer"],
        "step": state.get("step", ckpt.get("step")),
    }
    # safetensors refuses tensors that share memory or are views; each gets its own copy.
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in ckpt["model"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, ensure_ascii=False)
    tmp = out.with_name(f".{out.name}.tmp")
    st.save_file(tensors, str(tmp), metadata={METADATA_KEY: text})
    os.replace(tmp, out)
    config_path = out.with_suffix(".json")
    config_path.write_text(
        json.dumps(config, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    size_mb = out.stat().st_size / 1e6
    print(f"export: {checkpoint} -> {out} ({size_mb:.1f} MB) + {config_path}")
    return out


def read_safetensors_config(path: str | os.PathLike) -> dict:
    """The config stored in a speechswarm safetensors file's metadata."""
    from safetensors import SafetensorError, safe_open

    _safetensors_torch()
    if not Path(path).is_file():
        raise InputNotFoundError(f"{path} does not exist; write one with `speechswarm export "
                                 "--format safetensors`")  # fmt: skip
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise UsageError(f"{path}: not a safetensors file ({e})") from None
    if METADATA_KEY not in metadata:
        raise UsageError(f"{path}: no speechswarm config in its metadata; not our export")
    return json.loads(metadata[METADATA_KEY])


def load_safetensors(
    path: str | os.PathLike,
) -> tuple[DeepSpeech2, FeatureExtractor, Tokenizer, dict]:
    """(model in eval mode, feature extractor, tokenizer, config) rebuilt from an export."""
    config = read_safetensors_config(path)
    model = model_from_settings(config["model_settings"])
    state = _safetensors_torch().load_file(str(path))
    model.load_state_dict(state)
    extractor = FeatureExtractor.from_settings(config["features"]).eval()
    return model.eval(), extractor, tokenizer_from_dict(config["tokenizer"]), config


def export_safetensors_checked(checkpoint: str | os.PathLike, out: str | os.PathLike) -> bool:
    """`speechswarm export --format safetensors [--check]`: export, then rebuild the model from
    the file and compare its log-probs with the checkpoint's on random audio (equal: ok)."""
    from speechswarm.export import load_for_export, random_batches

    out = export_safetensors(checkpoint, out)
    _, extractor, reference = load_for_export(checkpoint)
    model, extractor2, _, _ = load_safetensors(out)
    worst = 0.0
    with torch.inference_mode():
        for waves, wave_lens in random_batches(extractor.sample_rate, batches=2):
            waves, wave_lens = torch.from_numpy(waves), torch.from_numpy(wave_lens)
            a, _ = reference(*extractor(waves, wave_lens))  # (N, T', V) log-probs
            b, _ = model(*extractor2(waves, wave_lens))
            worst = max(worst, (a - b).abs().max().item())
    print(f"check {out.name}: rebuilt model vs checkpoint: max |log-prob diff| {worst:.1e}")
    return worst == 0.0
