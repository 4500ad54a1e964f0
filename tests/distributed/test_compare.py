"""`speechswarm compare`: time-to-target and the table against hand-computed values, the mode
command lines, and one end-to-end run of the three modes on a tiny budget.

    .venv/bin/python -m pytest tests/distributed/test_compare.py -q
"""

from __future__ import annotations

import argparse
import json
import sys

import pytest
from pair_corpus import overrides_for

from speechswarm.distributed import cli as distributed_cli
from speechswarm.distributed.compare import (
    ModeResult,
    default_target,
    dev_curve,
    format_table,
    mode_command,
    seconds_to_target,
)

CURVES = {
    "central": [(30.0, 0.9), (60.0, 0.7), (90.0, 0.5)],
    "ddp": [(20.0, 0.8), (40.0, 0.6), (60.0, 0.45)],
    "hogwild": [(30.0, 0.95), (60.0, 0.85), (90.0, 0.75)],
}


def test_time_to_target_is_the_first_evaluation_at_or_below_it():
    assert seconds_to_target(CURVES["central"], 0.7) == 60.0  # <=, not <
    assert seconds_to_target(CURVES["ddp"], 0.7) == 40.0
    assert seconds_to_target(CURVES["hogwild"], 0.7) is None
    assert seconds_to_target([], 0.5) is None


def test_default_target_is_a_level_every_mode_reached():
    assert default_target(CURVES) == 0.75  # hogwild's best; central and ddp got below it
    assert default_target({"a": [], "b": [(1.0, 0.3)]}) == 0.3
    assert default_target({}) is None


def test_dev_curve_reads_evaluations_only():
    metrics = [{"step": 1, "wall_time": 1.0, "train_loss": 9.0},
               {"step": 2, "wall_time": 2.5, "dev_cer": 0.8, "dev_wer": 1.0}]  # fmt: skip
    assert dev_curve(metrics) == [(2.5, 0.8)]


def test_table_rows():
    rows = [
        ModeResult("central", 0.5, 0.5, 90.0, 100, 55.4, 95.0),
        ModeResult("ddp", 0.45, 0.45, 40.0, 60, 80.0, 70.0),
        ModeResult("hogwild", None, None, None, None, None, None, ok=False),
    ]
    table = format_table(rows, 0.75, 1.5).splitlines()
    assert table[0] == "Budget 1.5 min per mode; target dev CER 75.0 %."
    assert table[4] == "| central | 1.50 min | 50.0 % | 50.0 % | 100 | 55 |"
    assert table[5] == "| ddp | 0.67 min | 45.0 % | 45.0 % | 60 | 80 |"
    assert table[6] == "| hogwild (failed) | never | — | — | — | — |"


def test_mode_commands(tmp_path):
    central = mode_command("central", "tiny", ["optim.lr=1e-3"], tmp_path / "c", 2.0, 2)
    assert central[:4] == [sys.executable, "-m", "speechswarm", "train"]
    assert central[-3:] == [f"train.out_dir={tmp_path / 'c'}", "train.time_budget_min=2.0",
                            "train.num_threads=2"]  # fmt: skip
    ddp = mode_command("ddp", "tiny", [], tmp_path / "d", 2.0, 4)
    assert ddp[6:8] == ["--nproc", "4"] and ddp[-1] == "train.num_threads=1"
    hogwild = mode_command("hogwild", "tiny", [], tmp_path / "h", 2.0, 4)
    assert hogwild[6:8] == ["--hogwild", "4"]
    with pytest.raises(ValueError, match="unknown mode 'gossip'"):
        mode_command("gossip", "tiny", [], tmp_path, 1.0, 2)


@pytest.mark.slow  # three trainings, one of them a DDP launch: ~40 s on 2 busy cores
def test_compare_runs_three_modes_and_reports(tone_pairs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    distributed_cli.add_parser(parser.add_subparsers())
    overrides = overrides_for(tone_pairs, tmp_path / "ignored", "data.max_batch_size=2",
                              "train.epochs=2", "train.eval_every=3")[:-1]  # fmt: skip
    args = parser.parse_args(["compare", "--config", "tiny", "--minutes", "0.3", "--central-threads", "1",
                              "--out", str(tmp_path / "cmp"), *overrides])  # fmt: skip
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "cmp/compare.json").read_text())
    rows = {r["mode"]: r for r in data["results"]}
    assert sorted(rows) == ["central", "ddp", "hogwild"]
    for mode, row in rows.items():
        assert row["ok"], mode
        assert row["steps"] >= 1 and row["final_cer"] is not None
        run = tmp_path / "cmp" / mode
        assert (run / "checkpoints/best.pt").is_file()
        curve = dev_curve([json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()])
        assert row["seconds_to_target"] == seconds_to_target(curve, data["target_cer"])
    # 12 utterances x 2 epochs in batches of 2: 12 steps centrally and for Hogwild (both
    # workers' steps count), 6 per DDP rank (each step trains 2 batches).
    assert (rows["central"]["steps"], rows["hogwild"]["steps"], rows["ddp"]["steps"]) == (12, 12, 6)
    assert "| central |" in printed and "| ddp |" in printed and "| hogwild |" in printed
    assert (tmp_path / "cmp/compare.png").read_bytes()[:4] == b"\x89PNG"
