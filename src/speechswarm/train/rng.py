"""Seeding and capture/restore of every global random generator, for exact resumes.

    speechswarm train --config configs/demo.yaml train.seed=1 --resume auto

`capture_rng_state()` returns plain data a weights-only checkpoint can hold (tensors, ints,
floats, strings): Python's `random`, NumPy's legacy global generator (`np.random.*`), torch's
CPU generator and, where CUDA is available, each GPU's generator. Generators a module owns
(`np.random.default_rng(seed)`, `torch.Generator`) are not global: their owner saves them
(e.g. the sampler's `state_dict`).
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed random, numpy and torch (CPU and all GPUs) with `seed + rank`; returns it.

    The rank offset gives each distributed worker its own augmentation and dropout draws
    while the run stays reproducible from one `seed`.
    """
    if seed < 0 or rank < 0:
        raise ValueError(f"seed and rank must be >= 0, got seed={seed}, rank={rank}")
    effective = int(seed) + int(rank)
    random.seed(effective)
    np.random.seed(effective % 2**32)  # numpy's legacy seed must fit in 32 bits
    torch.manual_seed(effective)  # also seeds every CUDA device
    return effective


def capture_rng_state() -> dict:
    """The state of every global generator, as tensors/ints/floats/strings.

    `python`: {"version", "internal": (625,) int64 tensor, "gauss_next"}; `numpy`: {"kind",
    "keys": (624,) int64 tensor, "pos", "has_gauss", "cached_gaussian"}; `torch`: uint8
    tensor; `cuda`: list of uint8 tensors, one per visible GPU (only if CUDA is available).
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),  # values < 2**32
            "gauss_next": gauss_next,  # float or None
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 has no torch twin
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Put back what `capture_rng_state` captured.

    A CUDA state restored where CUDA is missing, or on a different number of GPUs, is
    applied to the GPUs both have, with a warning: the run goes on but GPU-side random
    draws (dropout on the GPU) will differ from the uninterrupted run.
    """
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise KeyError(f"RNG state lacks {sorted(missing)}; was it made by capture_rng_state()?")
    py = state["python"]
    internal = tuple(int(x) for x in py["internal"].tolist())
    random.setstate((int(py["version"]), internal, py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (npy["kind"], keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].cpu())
    _restore_cuda(state.get("cuda"))


def _restore_cuda(saved: list | None) -> None:
    if saved is None:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available != len(saved):
        warnings.warn(
            f"checkpoint has RNG state for {len(saved)} GPU(s), this machine has {available}: "
            "GPU random draws will differ from the original run",
            stacklevel=3,
        )
    for device in range(min(available, len(saved))):
        torch.cuda.set_rng_state(saved[device].cpu(), device)
