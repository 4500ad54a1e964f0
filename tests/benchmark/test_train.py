"""`speechswarm bench train`: run as a user types it (--quick --json), every reported number
checked against an independent computation from the manifest, the sampler and the model.

    .venv/bin/python -m pytest tests/benchmark/test_train.py -q      # ~15 s
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import speechswarm.cli as cli
from speechswarm import fused_gru
from speechswarm.benchmark.corpus import short_durations
from speechswarm.benchmark.train import (
    BENCH_EPOCH,
    PLAN_UTTERANCES,
    LoopStats,
    ReferenceLoop,
    format_train_report,
    reference_epoch_padding,
    utterances_needed,
)
from speechswarm.build import build_features, build_model, cpu_has_bf16
from speechswarm.config import load_config
from speechswarm.data.sampler import BucketBatchSampler, epoch_speed_factors, padding_fraction

# tiny's layer types cut to ~30k parameters (as tests/conftest.py SMALL_MODEL), one thread,
# one loader worker: the real loop with workers, in seconds.
OVERRIDES = [
    "model.conv_channels=[4,4]",
    "model.rnn_hidden=32",
    "model.rnn_layers=1",
    "train.inter_ctc_layers=[]",  # one layer: no intermediate CTC
    "train.num_threads=1",
    "data.num_workers=1",
]
STEPS = 2


def run_cli(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    if "speechswarm.benchmark.cli" not in cli.COMMAND_MODULES:  # until the lead registers it
        monkeypatch.setattr(
            cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "speechswarm.benchmark.cli")
        )
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """`speechswarm bench train --config tiny --quick --steps 2 --json ...`, parsed."""
    mp = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    try:
        if "speechswarm.benchmark.cli" not in cli.COMMAND_MODULES:
            mp.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "speechswarm.benchmark.cli"))
        import contextlib
        import io

        # which GRU path each loop trains with: the plain loop must not run our kernel
        calls, inside = {"reference": 0, "speechswarm": 0}, []
        real_step, real_layer = ReferenceLoop.step, fused_gru.gru_layer

        def step(self, stats):
            inside.append(1)
            try:
                return real_step(self, stats)
            finally:
                inside.pop()

        def layer(*args, **kwargs):
            calls["reference" if inside else "speechswarm"] += 1
            return real_layer(*args, **kwargs)

        mp.setattr(ReferenceLoop, "step", step)
        mp.setattr(fused_gru, "gru_layer", layer)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(
                ["bench", "train", "--config", "tiny", "--quick", "--steps", str(STEPS), "--json"]
                + OVERRIDES
            )
        assert code == 0
        result = json.loads(out.getvalue())  # stdout holds exactly one JSON object
        result["gru_layer_calls"] = calls
        result["threads_after"] = torch.get_num_threads()
        result["threads_before"] = threads
        return result
    finally:
        mp.undo()
        torch.set_num_threads(threads)


def _planned(result: dict):
    """Independently: the corpus durations, the epoch's speed factors, its perturbed lengths."""
    cfg = load_config("tiny", OVERRIDES)
    n = result["data"]["utterances"]
    sr = cfg.data.sample_rate
    durations = np.round(short_durations(n, seed=cfg.train.seed) * sr) / sr  # whole samples
    factors = epoch_speed_factors(n, cfg.data.speed_factors, cfg.train.seed, BENCH_EPOCH)
    return cfg, durations, durations / factors


def test_reference_trained_on_manifest_order_batches(bench):
    cfg, durations, perturbed = _planned(bench)
    ref = bench["reference"]
    b = bench["reference_batch_size"]
    assert ref["steps"] == STEPS and ref["precision"] == "float32"
    # the warm-up took utterances 0..b-1; the timed steps the next STEPS * b, in order
    expected = perturbed[b : b + STEPS * b].sum()
    assert ref["audio"] == pytest.approx(expected, rel=2e-3)  # soxr: +-1 sample per file
    # epoch padding: a whole epoch of PLAN_UTTERANCES lengths, in manifest order by B
    plan_d = short_durations(PLAN_UTTERANCES, seed=cfg.train.seed + 1)
    plan_p = plan_d / epoch_speed_factors(len(plan_d), cfg.data.speed_factors, 0, BENCH_EPOCH)
    batches = [list(range(i, min(i + b, len(plan_d)))) for i in range(0, len(plan_d), b)]
    assert ref["epoch_padding"] == pytest.approx(padding_fraction(plan_p, batches))


def test_reference_runs_pytorchs_gru_not_the_fused_kernel(bench):
    # tiny is a GRU: speechswarm's loop trains it on the fused kernel, the plain loop on
    # nn.GRU as a user would (it once inherited the kernel with the model it copies)
    if not fused_gru.built():
        pytest.skip("the fused GRU kernel does not build here")
    assert bench["gru_layer_calls"]["speechswarm"] > 0
    assert bench["gru_layer_calls"]["reference"] == 0


def test_speechswarm_trained_on_the_samplers_batches(bench):
    cfg, durations, perturbed = _planned(bench)
    ours = bench["speechswarm"]

    def plan_of(d):
        sampler = BucketBatchSampler(
            d,
            cfg.data.max_batch_seconds,
            max_batch_size=cfg.data.max_batch_size,
            sortagrad=cfg.data.sortagrad,
            seed=cfg.train.seed,
            # setup_run passes the dataset's factors once train/setup.py does (see the report)
            speed_factors=cfg.data.speed_factors if bench["sampler_speed_aware"] else (),
        )
        sampler.set_epoch(BENCH_EPOCH)
        return sampler.rank_batches()

    plan = plan_of(durations)
    # batch 0 was the warm-up step; the timed steps took the next STEPS batches of the plan
    expected = sum(perturbed[b].sum() for b in plan[1 : 1 + STEPS])
    assert ours["steps"] == STEPS
    assert ours["audio"] == pytest.approx(expected, rel=2e-3)
    plan_d = short_durations(PLAN_UTTERANCES, seed=cfg.train.seed + 1)
    plan_p = plan_d / epoch_speed_factors(len(plan_d), cfg.data.speed_factors, 0, BENCH_EPOCH)
    big_plan = plan_of(plan_d)
    assert ours["epoch_padding"] == pytest.approx(padding_fraction(plan_p, big_plan))
    assert bench["reference_batch_size"] == round(PLAN_UTTERANCES / len(big_plan))
    assert ours["precision"] == ("bfloat16" if cpu_has_bf16() else "float32")
    assert ours["batching"].startswith("semi-sorted")


def test_derived_numbers_follow_from_the_measurements(bench):
    cfg = load_config("tiny", OVERRIDES)
    num_features = build_features(cfg.features, cfg.data.sample_rate).num_features
    model = build_model(cfg.model, num_features, 29)
    train_gflop = 3 * model.flops_per_second(1000.0 / cfg.features.hop_ms) / 1e9
    assert bench["train_gflop_per_audio_second"] == pytest.approx(train_gflop)
    peak = bench["gemm_gflops"]["bf16"]
    for loop in ("reference", "speechswarm"):
        s = bench[loop]
        aps = s["audio"] / s["seconds"]
        assert s["audio_seconds_per_second"] == pytest.approx(aps)
        assert s["gflops"] == pytest.approx(aps * train_gflop)
        assert s["fraction_of_bf16_peak"] == pytest.approx(s["gflops"] / peak)
        assert s["padding"] == pytest.approx(1 - s["frames"] / s["padded_frames"])
        assert 0 <= s["data_wait_fraction"] < 1 and 0 < s["wait"] < s["seconds"]
        assert s["peak_rss_bytes"] > 50 * 2**20  # torch alone is more than 50 MiB
        assert len(s["block_speeds"]) == bench["rounds"] == 1
    ref, ours = bench["reference"], bench["speechswarm"]
    assert bench["speedup"] == pytest.approx(
        ours["audio_seconds_per_second"] / ref["audio_seconds_per_second"]
    )
    assert bench["round_speedups"] == pytest.approx([bench["speedup"]])
    assert bench["threads_after"] == bench["threads_before"]  # the bench restores torch's
    assert len(bench["commit"]) >= 7 and bench["date"][:2] == "20"


def test_text_report_shows_the_numbers(bench):
    text = format_train_report(bench)
    assert f"speedup: {bench['speedup']:.2f}x" in text
    ref = bench["reference"]
    assert f"{ref['audio_seconds_per_second']:.1f}" in text
    assert f"{bench['speechswarm']['epoch_padding']:.1%}" in text
    assert "data wait" in text and "peak memory (RSS)" in text


def test_pure_helpers_hand_computed():
    # 4 utterances of 1-4 s, batches of 2: occupied 2*2 + 4*2 = 12 s, used 10 s
    assert reference_epoch_padding([1.0, 2.0, 3.0, 4.0], (), 0, 2) == pytest.approx(2 / 12)
    # 3 batches of min(64, 320 / 12.8 = 25) utterances, plus one, 30 % to spare
    assert utterances_needed(3, 320.0, 64, 12.8) == math.ceil(1.3 * 4 * 25)
    assert utterances_needed(3, 320.0, 8, 1.0) == math.ceil(1.3 * 4 * 8)
    s = LoopStats(
        "x", "float32", "", seconds=2.0, wait=0.5, audio=10.0, frames=90, padded_frames=100
    )
    summary = s.summary(train_flops_per_audio_second=4e9, bf16_peak=100.0)
    assert summary["audio_seconds_per_second"] == 5.0
    assert summary["gflops"] == 20.0 and summary["fraction_of_bf16_peak"] == 0.2
    assert summary["padding"] == pytest.approx(0.1) and summary["data_wait_fraction"] == 0.25


def test_bad_arguments_fail_with_one_clear_line(monkeypatch, capsys):
    code, _, err = run_cli(["bench", "train", "--quick", "--rounds", "0"], monkeypatch, capsys)
    assert code == 1 and "--rounds and --steps must be >= 1" in err
    code, _, err = run_cli(["bench", "train", "--config", "nosuch"], monkeypatch, capsys)
    assert code == 1 and "neither a YAML file nor a preset" in err and "Traceback" not in err
    code, _, err = run_cli(["bench", "train", "model.nosuch=1"], monkeypatch, capsys)
    assert code == 1 and "nosuch" in err
