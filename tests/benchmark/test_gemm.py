"""GEMM peak measurement: the FLOP count and the timing arithmetic, on a fake clock."""

from __future__ import annotations

import itertools

import pytest

from speechswarm.benchmark import gemm


def test_gemm_flops_hand_computed():
    assert gemm.gemm_flops(3) == 54.0  # 9 outputs x 3 multiply-adds x 2
    assert gemm.gemm_flops(2048) == 2 * 2048**3


def test_gemm_gflops_is_flops_over_the_best_time(monkeypatch):
    # each product "takes" 0.5, 0.25, 1.0 s ... on a fake clock; the warm-up (first) is
    # ignored, so the best timed one is 0.25 s: 2 * 64^3 / 0.25 / 1e9 GFLOP/s
    durations = iter([9.0, 0.5, 0.25, 1.0])
    clock = itertools.count()
    now = [0.0]

    def fake_perf_counter():
        if next(clock) % 2:  # the second call of a pair: after the product
            now[0] += next(durations)
        return now[0]

    monkeypatch.setattr(gemm.time, "perf_counter", fake_perf_counter)
    got = gemm.gemm_gflops("fp32", n=64, repeats=3)
    assert got == pytest.approx(2 * 64**3 / 0.25 / 1e9)


def test_gemm_gflops_really_measures_and_rejects_unknown_dtypes():
    assert gemm.gemm_gflops("fp32", n=64, repeats=1) > 0.01
    with pytest.raises(ValueError, match="gemm dtype must be one of"):
        gemm.gemm_gflops("int8")
