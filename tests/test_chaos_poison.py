"""The poisoned-agent campaign: its target rule on hand-made trials, its corpus, and a
CI-sized campaign run as a user types it.

    .venv/bin/python -m pytest tests/test_chaos_poison.py -q
"""

from __future__ import annotations

import json

import pytest

from speechswarm.chaos.poison import (
    PoisonTrial,
    main,
    poison_passed,
    table,
    verdict,
    write_tone_language,
)


def trial(aggregation="median", messages=40, refused=0, outvoted=40, clean=0.05, cer=0.05,
          error="") -> PoisonTrial:  # fmt: skip
    return PoisonTrial(0, "sign_flip", aggregation, 0, 2, messages=messages, refused=refused,
                       outvoted=outvoted, cer_clean=clean, cer=cer, error=error)  # fmt: skip


def test_a_cell_meets_the_target_with_95_percent_rejected_and_cer_within_a_point():
    good = [trial() for _ in range(19)]
    v = verdict([*good, trial(outvoted=39)])  # 19 of 20 rejected: 95 %
    assert (v["rejected"], v["met"], v["why"]) == (19, True, [])
    two_through = verdict([*good[:18], trial(outvoted=39), trial(outvoted=0)])
    assert not two_through["met"] and two_through["why"] == [
        "2/20 trials let poisoned weights through"
    ]
    worse = verdict([*good, trial(cer=0.062)])
    assert not worse["met"] and worse["why"] == ["honest CER +1.2 points off the clean run"]
    assert worse["worst_delta_points"] == pytest.approx(1.2)
    better = verdict([trial(cer=0.035)])
    assert better["why"] == ["honest CER -1.5 points off the clean run (better)"]
    assert verdict([trial(cer=0.0599)])["met"]
    assert not verdict([trial(cer=float("nan"))])["met"]
    crashed = verdict([trial(messages=0, outvoted=0, error="RuntimeError: boom")])
    assert not crashed["met"] and "a simulation failed" in crashed["why"]


def test_refused_and_outvoted_both_reject_and_nothing_received_does_not():
    assert trial(refused=40, outvoted=0).rejected and trial().rejected
    assert not trial(refused=10, outvoted=29).rejected  # one message got through
    assert trial(refused=10, outvoted=29).through == 1
    assert not trial(messages=0, outvoted=0).rejected  # a liar nobody heard proves nothing


def test_only_robust_cells_decide_and_the_table_names_the_baseline():
    trials = [trial("mean", outvoted=0, cer=0.9), trial("median"), trial("trimmed_mean")]
    assert poison_passed(trials)
    assert not poison_passed([*trials, trial("trimmed_mean", outvoted=0)])
    text = table(trials)
    assert "| sign_flip | mean | 1 | 0/1 | 0 / 0 / 40 of 40 |" in text
    assert "baseline (no: 1/1 trials let poisoned weights through; honest CER +85.0" in text
    assert "| 5.0 % | 5.0 % | +0.0 | yes |" in text


def test_the_tone_language_is_written_once(tmp_path):
    manifest = write_tone_language(tmp_path, speakers=2, per=3)
    lines = manifest.read_text().splitlines()
    assert len(lines) == 6 and {json.loads(line)["speaker"] for line in lines} == {"s0", "s1"}
    stamp = manifest.stat().st_mtime_ns
    assert write_tone_language(tmp_path, speakers=2, per=3) == manifest
    assert manifest.stat().st_mtime_ns == stamp


@pytest.mark.slow  # ~1 min: 16 clean rounds, then 2 clean and 2 poisoned runs of 4 rounds
def test_median_outvotes_a_scaled_liar_that_the_plain_mean_lets_through(
    tmp_path, capsys, one_torch_thread
):
    """Receivers check names and shapes only (--no-validate): the aggregation alone stands
    between the honest agents and a liar sending its weights x1e6. Measured (4 poisoned
    rounds): honest CER 4.4 % clean and 4.4 % under the median, 86.7 % under the mean; with
    8 poisoned rounds 4.7 and 100 %. (The 16 clean rounds stay: after 8 clean rounds and 4
    poisoned ones, the median run ended 1.2 points off its clean run.)"""
    out = tmp_path / "poison"
    argv = ["--no-validate", "--attacks", "scale", "--aggregations", "mean,median",
            "--trials", "2", "--rounds", "20", "--clean-rounds", "16", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # as a user types it: every robust cell met the target
    mean, median = json.loads((out / "poison.json").read_text())["trials"]
    assert median["messages"] == 4 * 4 and median["outvoted"] == median["messages"]
    assert median["rejected"] and abs(median["delta_points"]) <= 1.0, median
    assert median["max_shift"] < 0.5  # the aggregate moved, but stayed near the honest one
    assert mean["through"] == mean["messages"] == 4 * 4 and not mean["rejected"]
    assert mean["delta_points"] > 20, mean  # the hijacked average wrecks the honest agents
    printed = capsys.readouterr().out
    assert "| scale | mean | 1 | 0/1 | 0 / 0 / 16 of 16 |" in printed
    assert "baseline (no: 1/1 trials let poisoned weights through" in printed
    assert printed.count("| yes |") == 1 and "| scale | median | 1 | 1/1 |" in printed
    assert (out / "poison.md").read_text().strip() in printed
