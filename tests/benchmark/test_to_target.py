"""`speechswarm bench target`: run as a user types it on a corpus of short speech-like
utterances written here (`benchmark.corpus`), a ~30k-parameter model, budgets of seconds. Checks the race's rules (alternating slices, a
score after each, the clock without scoring time, each schedule on its own clock, the
target and the budget as stop rules) from what the JSON reports and what the scorer saw.

    .venv/bin/python -m pytest tests/benchmark/test_to_target.py -q      # ~40 s
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import speechswarm.benchmark.to_target as to_target
import speechswarm.cli as cli
from speechswarm.benchmark.corpus import short_durations, write_bench_corpus
from speechswarm.benchmark.to_target import format_target_report, summarize, time_ratio
from speechswarm.config import load_config
from speechswarm.train.optim import lr_factor

TRAIN_UTTS, DEV_UTTS = 48, 12
BUDGET_MIN = 0.075  # 4.5 s of training per loop
SLICE_S = 2.0  # slices end at 2, 4 and 4.5 s of each loop's clock
ROWS = math.ceil(BUDGET_MIN * 60 / SLICE_S)
EVAL_PAUSE_S = 1.5  # added to every scoring: a clock that counted it would show it
# One training step past a slice's end (the stop rule is asked after each step; a step
# takes ~0.1 s here), with room for a loaded machine; less than EVAL_PAUSE_S and a slice.
OVERSHOOT_S = 1.0
# The schedule runs on time, not steps: 10^5 epochs make the step count's share negligible.
SCHEDULE = ("train.epochs=100000",)


def bench_cli(argv: list[str]) -> tuple[int, str]:
    mp = pytest.MonkeyPatch()
    if "speechswarm.benchmark.cli" not in cli.COMMAND_MODULES:  # until the lead registers it
        mp.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "speechswarm.benchmark.cli"))
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = cli.main(argv)
    finally:
        mp.undo()
    return code, out.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """0.4-1.2 s utterances of random words: train and dev, different seeds."""
    out = tmp_path_factory.mktemp("target")
    return {
        "train": write_bench_corpus(out / "train", short_durations(TRAIN_UTTS, seed=1)),
        "dev": write_bench_corpus(out / "dev", short_durations(DEV_UTTS, seed=2), seed=2),
    }


def manifests(corpus: dict[str, Path]) -> list[str]:
    return [f"data.train_manifest={corpus['train']}", f"data.dev_manifest={corpus['dev']}"]


@pytest.fixture(scope="module")
def unreachable(corpus, tiny_overrides) -> dict:
    """A dev CER of 0.01 % in 6 s per loop: both must run out of budget. Every scoring is
    recorded (which model, when) and takes EVAL_PAUSE_S longer."""
    seen = []
    real_evaluate = to_target.evaluate

    def slow_evaluate(model, *args, **kwargs):
        seen.append(id(model))
        time.sleep(EVAL_PAUSE_S)
        return real_evaluate(model, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(to_target, "evaluate", slow_evaluate)
    threads = torch.get_num_threads()
    try:
        t0 = time.perf_counter()
        code, out = bench_cli(
            ["bench", "target", "--config", "tiny", "--target-cer", "0.01"]
            + ["--budget-min", str(BUDGET_MIN), "--slice-s", str(SLICE_S), "--json"]
            + [*tiny_overrides, *SCHEDULE, *manifests(corpus)]
        )
        wall = time.perf_counter() - t0
    finally:
        mp.undo()
    assert code == 0
    result = json.loads(out)  # stdout holds exactly one JSON object
    result["_seen"], result["_wall"] = seen, wall
    result["_threads"] = (threads, torch.get_num_threads())
    return result


@pytest.fixture(scope="module")
def reachable(corpus, tiny_overrides) -> dict:
    """A dev CER of 100 % (all deletions: what a CTC model outputs once it emits blanks)."""
    code, out = bench_cli(
        ["bench", "target", "--target-cer", "100", "--budget-min", "0.5", "--slice-s", "1"]
        + ["--json", *tiny_overrides, *manifests(corpus)]
    )
    assert code == 0
    return json.loads(out)


def test_both_loops_alternate_and_are_scored_after_each_slice(unreachable):
    ref, ours = unreachable["reference"], unreachable["speechswarm"]
    assert len(ref["curve"]) == len(ours["curve"]) == ROWS
    seen = unreachable["_seen"]
    assert len(seen) == 2 * ROWS and len(set(seen)) == 2  # two models, one score per slice
    assert seen[0::2] == [seen[0]] * ROWS and seen[1::2] == [seen[1]] * ROWS  # alternating
    for loop in (ref, ours):
        curve = loop["curve"]
        steps = [row["steps"] for row in curve]
        audio = [row["audio_seconds"] for row in curve]
        assert steps[0] > 0 and all(b > a for a, b in zip(steps, steps[1:], strict=False))
        assert audio[0] > 0 and all(b > a for a, b in zip(audio, audio[1:], strict=False))
        assert all(row["cer"] >= 0 and row["eval_seconds"] > 0 for row in curve)
    assert ref["precision"] == "float32" and ref["batching"].startswith("shuffled")
    assert ours["batching"].startswith("semi-sorted")
    assert unreachable["dev_utterances"] == DEV_UTTS
    assert unreachable["train"]["utterances"] == TRAIN_UTTS


def test_the_clock_counts_training_only(unreachable):
    budget = BUDGET_MIN * 60
    training, scoring = 0.0, 0
    for name in ("reference", "speechswarm"):
        times = [0.0] + [row["train_seconds"] for row in unreachable[name]["curve"]]
        ends = [min((i + 1) * SLICE_S, budget) for i in range(ROWS)]
        for i, end in enumerate(ends):
            # each slice ran to its end and at most one step past it; the scoring before it,
            # EVAL_PAUSE_S long, is not in it
            assert end <= times[i + 1] < end + OVERSHOOT_S
            assert times[i + 1] - times[i] < SLICE_S + OVERSHOOT_S < SLICE_S + EVAL_PAUSE_S
        training += times[-1]
        scoring += len(times) - 1
    assert unreachable["_wall"] > training + scoring * EVAL_PAUSE_S  # what the clocks left out


def test_each_schedule_runs_on_its_own_clock(unreachable, tiny_overrides):
    """The one-cycle LR after each slice is where the loop's own training seconds put it.
    On a wall clock, speechswarm's first slice would end past the reference's slice and a
    scoring: near the budget's end, its LR near 0."""
    cfg = load_config("tiny", [*tiny_overrides, *SCHEDULE])
    budget = BUDGET_MIN * 60

    def factor(t: float) -> float:  # the schedule at t training seconds, steps negligible
        total = 10**6
        return lr_factor(
            int(total * min(1.0, t / budget)),
            name="onecycle",
            total_steps=total,
            pct_start=cfg.optim.pct_start,
        )

    for name in ("reference", "speechswarm"):
        for row in unreachable[name]["curve"]:
            # set by the last step's scheduler.step(), within a step of the slice's end
            t = row["train_seconds"]
            window = [factor(x) for x in np.linspace(t - OVERSHOOT_S, t, 50)]
            got = row["lr"] / cfg.optim.lr
            assert min(window) * 0.98 <= got <= max(window) * 1.02, (name, row)


def test_an_unreachable_target_reports_not_reached_at_budget(unreachable):
    for name in ("reference", "speechswarm"):
        loop = unreachable[name]
        assert loop["stop"] == "budget" and loop["reached"] is False
        assert loop["time_to_target_s"] is None and loop["steps_to_target"] is None
        assert loop["best_cer"] == min(row["cer"] for row in loop["curve"]) > 0.0001
        assert loop["train_seconds"] == loop["curve"][-1]["train_seconds"]
        assert BUDGET_MIN * 60 <= loop["train_seconds"] < BUDGET_MIN * 60 + OVERSHOOT_S
    assert unreachable["ratio"] is None
    assert unreachable["ratio_at_least"] is None and unreachable["ratio_at_most"] is None
    text = format_target_report(unreachable)
    assert "not reached, best CER" in text and "neither loop reached" in text


def test_a_reached_target_stops_the_loop_there(reachable):
    for name in ("reference", "speechswarm"):
        loop = reachable[name]
        curve = loop["curve"]
        assert loop["stop"] == "target" and loop["reached"] is True
        assert curve[-1]["cer"] <= 1.0 and all(row["cer"] > 1.0 for row in curve[:-1])
        assert loop["time_to_target_s"] == curve[-1]["train_seconds"] < 30
        assert loop["steps_to_target"] == curve[-1]["steps"]
        assert loop["audio_seconds_to_target"] == curve[-1]["audio_seconds"]
    ref, ours = reachable["reference"], reachable["speechswarm"]
    assert reachable["ratio"] == pytest.approx(ref["time_to_target_s"] / ours["time_to_target_s"])
    text = format_target_report(reachable)
    assert f"{reachable['ratio']:.2f}x" in text
    assert f"{ours['time_to_target_s']:.0f} s" in text


def test_the_json_has_what_a_results_table_needs(unreachable):
    r = unreachable
    assert r["target_cer"] == pytest.approx(0.0001) and r["budget_min"] == BUDGET_MIN
    assert r["slice_s"] == SLICE_S and r["config"] == "tiny" and r["reference_order"] == "shuffled"
    assert len(r["commit"]) >= 7 and r["date"][:2] == "20" and "cores" in r["machine"]
    assert len(r["load_average"]) == 2 and r["device"] == "cpu" and r["threads"] == 1
    assert r["_threads"][0] == r["_threads"][1]  # torch's thread count restored
    for key in ("ratio", "ratio_at_least", "ratio_at_most", "model", "train"):
        assert key in r
    row_keys = {"train_seconds", "steps", "audio_seconds", "cer", "wer", "lr", "load"}
    assert row_keys <= set(r["speechswarm"]["curve"][0])


def test_summary_and_ratio_hand_computed():
    curve = [
        {"train_seconds": 60.0, "steps": 10, "audio_seconds": 600.0, "cer": 0.9, "eval_seconds": 2},
        {
            "train_seconds": 120.0,
            "steps": 21,
            "audio_seconds": 1200.0,
            "cer": 0.5,
            "eval_seconds": 3,
        },
        {
            "train_seconds": 180.0,
            "steps": 30,
            "audio_seconds": 1800.0,
            "cer": 0.4,
            "eval_seconds": 2,
        },
    ]
    s = summarize(curve, 0.55)
    assert (s["reached"], s["time_to_target_s"], s["steps_to_target"]) == (True, 120.0, 21)
    assert (s["best_cer"], s["best_cer_at_s"], s["train_seconds"], s["eval_seconds"]) == (
        0.4,
        180.0,
        180.0,
        7,
    )
    never = summarize(curve, 0.3)
    assert never["reached"] is False and never["time_to_target_s"] is None
    assert time_ratio(s, summarize(curve[:1], 0.95)) == {
        "ratio": 2.0,
        "ratio_at_least": None,
        "ratio_at_most": None,
    }
    # the reference trained 180 s without reaching it; speechswarm got there at 120 s
    assert time_ratio(never, s)["ratio_at_least"] == pytest.approx(1.5)
    assert time_ratio(s, never)["ratio_at_most"] == pytest.approx(120 / 180)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-cer", "0"], "--target-cer is a percentage in (0, 100]"),
        (["--target-cer", "150"], "--target-cer is a percentage in (0, 100]"),
        (["--target-cer", "50", "--budget-min", "0"], "--budget-min must be > 0"),
        (["--target-cer", "50", "--budget-min", "-2"], "--budget-min must be > 0"),
        (["--target-cer", "50", "--slice-s", "0"], "--slice-s must be > 0"),
        (["--target-cer", "50", "--reference-order", "sorted"], "--reference-order"),
        (["--target-cer", "50", "data.dev_manifest=/no/dev.jsonl"], "no dev manifest"),
        (["--target-cer", "50", "model.nosuch=1"], "nosuch"),
    ],
)
def test_bad_arguments_fail_with_one_clear_line(args, message, corpus, capsys):
    argv = ["bench", "target", *args, f"data.train_manifest={corpus['train']}"]
    if not any(a.startswith("data.dev_manifest") for a in args):
        argv.append(f"data.dev_manifest={corpus['dev']}")
    t0 = time.perf_counter()
    code, out = bench_cli(argv)
    err = capsys.readouterr().err
    assert code == 1 and out == ""
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 5  # refused before any training
