"""RNG capture/restore through a weights-only checkpoint, and seeding."""

import random

import numpy as np
import pytest
import torch

from speechswarm.checkpoint import load_checkpoint, save_checkpoint
from speechswarm.train.rng import capture_rng_state, restore_rng_state, seed_everything


def _draw() -> list:
    # Include a Gaussian from each library: they cache a second value (gauss_next,
    # cached_gaussian) that the state must carry too.
    return [
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        float(np.random.randn()),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    ]


def test_capture_restore_through_checkpoint(tmp_path):
    seed_everything(123)
    random.gauss(0, 1)  # leave a cached second Gaussian in both python and numpy
    np.random.randn()
    path = save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = _draw()
    _draw()  # move every generator on

    restore_rng_state(load_checkpoint(path)["rng"])
    assert _draw() == expected


def test_seed_everything_adds_rank_and_repeats():
    assert seed_everything(5, rank=2) == 7
    first = _draw()
    seed_everything(7)
    assert _draw() == first
    seed_everything(5, rank=0)
    assert _draw() != first
    # numpy's legacy generator seeded with 7 gives this independent reference value
    seed_everything(7)
    assert np.random.rand() == np.random.RandomState(7).rand()
    assert random.random() == random.Random(7).random()


def test_restore_warns_when_gpu_count_differs():
    state = capture_rng_state()
    real = state.get("cuda") or [torch.zeros(16, dtype=torch.uint8)]
    fake = dict(state, cuda=real + real[:1])  # one GPU more than this machine has
    with pytest.warns(UserWarning, match="RNG state for"):
        restore_rng_state(fake)


def test_restore_rejects_foreign_dicts():
    with pytest.raises(KeyError, match="capture_rng_state"):
        restore_rng_state({"torch": torch.get_rng_state()})
