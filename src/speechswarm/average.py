"""Checkpoint averaging: the mean of a run's last few weights, as one checkpoint.

    speechswarm average runs/demo/checkpoints/step-*.pt --out runs/demo/avg.pt
    speechswarm eval --checkpoint runs/demo/avg.pt --manifest data/synth/dev.jsonl

icefall's `--avg N` and ESPnet's n-best averaging: weights late in a run wander around a
minimum, and their mean often sits closer to it than any one of them (Izmailov et al. 2018,
"Averaging Weights Leads to Wider Optima"). Rules of `average_state_dicts`:

- floating-point tensors (weights, BatchNorm `running_mean` / `running_var`): the arithmetic
  mean, summed in float64 and cast back to the tensor's dtype;
- integer tensors (BatchNorm `num_batches_tracked`): the last checkpoint's value. It counts
  the batches the statistics have seen, and the averaged model has seen as many as the
  latest one (icefall floor-divides the sum instead; only BatchNorm with `momentum=None`
  reads it);
- the checkpoints must hold one model: the same tensor names, shapes and dtypes, and the same
  model settings, feature settings and vocabulary. Anything else is refused with one line
  naming the first difference.

The result is an inference checkpoint: model, settings, features, vocabulary, config and step
of the last input, plus `averaged_from`. Optimizer, scheduler, sampler and RNG states are left
out: they belong to one point of a run, and resuming training from a mean would pretend
otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from speechswarm.checkpoint import load_checkpoint, save_checkpoint
from speechswarm.errors import CheckpointError, UsageError
from speechswarm.model import complete_settings

# What must agree for weights to be averaged: each key's value in every checkpoint.
_SAME = ("model_settings", "features", "tokenizer")
# The inference part of a checkpoint, copied from the last input.
_KEPT = ("format", "speechswarm_version", "model_settings", "features", "tokenizer", "config")


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of model state dicts (module docstring for the rules); the inputs are unchanged.
    Raises ValueError naming the first tensor whose name, shape or dtype differs."""
    if not states:
        raise ValueError("average_state_dicts: no state dicts")
    first = states[0]
    for i, state in enumerate(states[1:], start=1):
        if state.keys() != first.keys():
            extra = sorted(state.keys() ^ first.keys())
            raise ValueError(f"state {i} and state 0 hold different tensors ({extra[0]}, ...)")
        for name, tensor in state.items():
            ref = first[name]
            if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
                raise ValueError(
                    f"{name}: state {i} has {tensor.dtype} {tuple(tensor.shape)}, "
                    f"state 0 {ref.dtype} {tuple(ref.shape)}"
                )
    averaged = {}
    for name, ref in first.items():
        if ref.is_floating_point() or ref.is_complex():
            total = sum(s[name].to(torch.float64) for s in states)
            averaged[name] = (total / len(states)).to(ref.dtype)
        else:
            averaged[name] = states[-1][name].clone()
    return averaged


def _difference(a: dict, b: dict) -> str:
    """The first setting in which two checkpoints differ ("" if none)."""
    for key in _SAME:
        ours, theirs = a.get(key), b.get(key)
        if key == "model_settings":
            ours, theirs = complete_settings(ours or {}), complete_settings(theirs or {})
        if ours == theirs:
            continue
        if isinstance(ours, dict) and isinstance(theirs, dict):
            names = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            name = names[0]
            return f"{key}.{name}: {ours.get(name)!r} vs {theirs.get(name)!r}"
        return f"{key} differ"
    return ""


def _step(ckpt: dict) -> int | None:
    state = ckpt.get("train_state") or {}
    return state.get("step", ckpt.get("step"))


def average_checkpoints(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """`speechswarm average`: average the model weights of `paths` (checkpoints of one run,
    in the order given; the last supplies config and step) into an inference checkpoint
    at `out`. Prints one line."""
    if len(paths) < 2:
        raise UsageError(f"average needs at least 2 checkpoints, got {len(paths)}")
    if Path(out).resolve() in {Path(p).resolve() for p in paths}:
        raise UsageError(f"average: --out {out} is one of the inputs; write elsewhere")
    ckpts = [load_checkpoint(p, model=True) for p in paths]
    for path, ckpt in zip(paths[1:], ckpts[1:], strict=True):
        diff = _difference(ckpts[0], ckpt)
        if diff:
            raise CheckpointError(
                path, "incompatible", f"cannot average it with {paths[0]}: {diff}"
            )
    try:
        weights = average_state_dicts([c["model"] for c in ckpts])
    except ValueError as e:
        raise CheckpointError(paths[-1], "incompatible", f"cannot average: {e}") from None
    last = ckpts[-1]
    result = {k: last[k] for k in _KEPT if k in last}
    result |= {
        "model": weights,
        "step": _step(last),
        "averaged_from": [str(p) for p in paths],
        "averaged_steps": [_step(c) for c in ckpts],
    }
    path = save_checkpoint(out, result)
    steps = ", ".join(str(s) for s in result["averaged_steps"])
    print(f"average: {len(paths)} checkpoints (steps {steps}) -> {path}")
    return path
