"""The check of each incoming all-reduce part, against hand-computed cases.

.venv/bin/python -m pytest tests/p2p/net/test_net_part_check.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from speechswarm.p2p.net.part_check import part_problem, rms

OWN = torch.tensor([3.0, -4.0, 0.0, 0.0])  # RMS = sqrt(25 / 4) = 2.5


def test_rms_by_hand():
    assert rms(OWN) == 2.5 and rms(torch.zeros(0)) == 0.0


@pytest.mark.parametrize(
    ("values", "weight", "reason"),
    [
        (OWN * 1.1, 1.0, ""),
        (torch.zeros(4), 1.0, ""),  # no lower bound: zeros cannot blow up an average
        (torch.full((4,), 12.5), 1.0, ""),  # RMS 12.5 = 5 x 2.5: on the bound
        (torch.full((4,), 12.6), 1.0, "norm"),
        (torch.full((4,), 1e6), 1.0, "norm"),
        (torch.tensor([1.0, math.nan, 0.0, 0.0]), 1.0, "nonfinite"),
        (torch.tensor([1.0, math.inf, 0.0, 0.0]), 1.0, "nonfinite"),
        (torch.zeros(5), 1.0, "shape"),
        (torch.zeros(2, 2), 1.0, "shape"),
        (OWN, math.nan, "weight"),
        (OWN, -1.0, "weight"),
        (OWN, math.inf, "weight"),
        (OWN, 0.0, ""),
    ],
)
def test_part_problem(values, weight, reason):
    assert part_problem(values, OWN, 5.0, weight=weight) == reason


def test_a_small_tensor_is_judged_against_the_whole_vectors_scale():
    bias = torch.tensor([1e-4, -1e-4])  # a BatchNorm bias just after its first steps
    theirs = torch.tensor([2e-3, 1e-3])  # 15x its RMS, and still a normal value
    assert part_problem(theirs, bias, 5.0) == "norm"
    assert part_problem(theirs, bias, 5.0, floor_rms=0.1) == ""  # the model's RMS: 0.1
    assert part_problem(torch.full((2,), 1e6), bias, 5.0, floor_rms=0.1) == "norm"


def test_without_a_ratio_only_shape_weight_and_finiteness_are_checked():
    assert part_problem(torch.full((4,), 1e6), OWN, None) == ""
    assert part_problem(torch.full((4,), math.nan), OWN, None) == "nonfinite"
