"""`speechswarm p2p` as a user types it: several runs, the report, the plots, --resume.

.venv/bin/python -m pytest tests/p2p/test_p2p_cli.py -q
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from speechswarm.checkpoint import load_checkpoint
from speechswarm.config import ConfigError, check_p2p, load_config
from speechswarm.p2p import cli
from speechswarm.p2p.experiment import run_experiment
from speechswarm.p2p.report import read_rows


def main(argv: list[str]) -> int:
    """What `speechswarm` does with its subcommands (src/speechswarm/cli.py)."""
    parser = argparse.ArgumentParser(prog="speechswarm")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_runs_compares_and_reports(tone_speakers, tmp_path, one_torch_thread, capsys):
    out = tmp_path / "exp"
    argv = [
        "p2p",
        "--config",
        "p2p-tiny",
        f"data.train_manifest={tone_speakers}",
        f"data.test_manifest={tone_speakers}",
        "data.validate=false",
        "data.max_batch_size=2",
        "model.conv_channels=[4,4]",
        "model.rnn_hidden=32",
        "model.rnn_layers=1",
        "train.inter_ctc_layers=[]",  # one layer: no intermediate CTC
        "train.precision=fp32",
        f"train.out_dir={out}",
        "p2p.agents=4",
        "p2p.rounds=2",
        "p2p.local_steps=1",
        "p2p.degree=2",
        "p2p.global_test_max=4",
        "p2p.runs=[gossip/ring,gossip/regular,central,local,fedavg]",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gossip-ring round 2:" in printed and f"report: {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    for name in ("gossip-ring", "gossip-regular", "central", "local", "fedavg"):
        assert f"| {name} |" in report
        rows = read_rows(out / name / "metrics.jsonl")
        assert len(rows) == 2 * 4  # one row per agent per round
        assert all(r.get("own_cer") is not None for r in rows)  # eval_every=1 in p2p-tiny
    summaries = json.loads((out / "summary.json").read_text())
    steps = {s["run"]: s["total_steps"] for s in summaries}
    assert steps["central"] == steps["gossip-ring"] == steps["local"] == 4 * 1 * 2
    assert "+0.0 pts | 1.00x" in report  # central against itself
    for png in (
        "plots/compare_rounds.png",
        "plots/compare_bytes.png",
        "plots/compare_steps_messages.png",
        "gossip-ring/topology.png",
        "gossip-regular/topology.png",
        "local/agents_wer_cer.png",
    ):
        assert (out / png).stat().st_size > 5000, png
    assert len(list((out / "agents").glob("*/train.jsonl"))) == 4

    # Again without --resume: refused with a hint; with --resume: finished runs are kept.
    with pytest.raises(ValueError, match="--resume"):
        main(argv)
    assert main([*argv[:1], "--resume", *argv[1:]]) == 0
    assert len(read_rows(out / "central" / "metrics.jsonl")) == 8


def test_bad_settings_fail_with_the_key_named():
    with pytest.raises(ConfigError, match="p2p.topology"):
        load_config("p2p-tiny", ["p2p.topology=star"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("p2p-tiny", ["p2p.nodes=3"])
    for override, key in (
        ("p2p.runs=[gossip/star]", "star"),
        ("p2p.runs=[gosip]", "gosip"),
        ("p2p.faulty_agents=[9]", "p2p.faulty_agents"),
        ("p2p.local_steps=-1", "p2p.local_steps"),
        ("p2p.local_epochs=0", "p2p.local_steps"),  # and local_steps is 0: no work at all
        ("p2p.trim_fraction=0.5", "p2p.trim_fraction"),
        ("p2p.runs=[fedavg rounds=3]", "rounds=3"),  # would make the runs incomparable
        ("p2p.runs=[fedavg outer_lr]", "outer_lr"),
        ("p2p.runs=[fedavg outer_speed=2]", "outer_speed=2"),
    ):
        with pytest.raises(ValueError, match=key):
            check_p2p(load_config("p2p-tiny", [override]).p2p)


def test_a_run_with_its_own_p2p_keys_gets_its_own_folder_and_settings(p2p_config):
    cfg = p2p_config("opts", "p2p.runs=[fedavg, fedavg outer_lr=0.7 outer_momentum=0.9]")
    result = run_experiment(cfg, progress=False)
    names = [s["run"] for s in result["runs"]]
    assert names == ["fedavg", "fedavg-outer_lr0.7-outer_momentum0.9"]
    assert result["runs"][1]["options"] == {"outer_lr": 0.7, "outer_momentum": 0.9}
    plain = load_checkpoint(Path(cfg.train.out_dir) / names[0] / "checkpoint.pt")
    outer = load_checkpoint(Path(cfg.train.out_dir) / names[1] / "checkpoint.pt")
    assert not plain["outer_momentum"] and set(outer["outer_momentum"]) == {"-1"}
    with pytest.raises(ConfigError, match="p2p.outer_momentum"):  # checked before any run
        run_experiment(
            p2p_config("bad", "p2p.runs=[central, fedavg outer_momentum=1.5]"), progress=False
        )


def test_missing_manifest_is_explained(tmp_path):
    cfg = load_config("p2p-tiny", [f"train.out_dir={tmp_path}", "data.train_manifest=nope.jsonl"])
    with pytest.raises(FileNotFoundError, match="speechswarm synth"):
        run_experiment(cfg, progress=False)


def test_a_graph_that_cannot_be_built_fails_before_any_run_trains(p2p_config):
    """4 agents on a 3 x n/3 torus: refused up front, not after `central` has trained."""
    cfg = p2p_config("torus", "p2p.runs=[central,gossip/torus_kn]", "p2p.degree=3")
    with pytest.raises(ConfigError, match="p2p.degree=3 must divide the 4 agents"):
        run_experiment(cfg, progress=False)
    assert not (Path(cfg.train.out_dir) / "central").exists()


def test_a_failed_run_leaves_no_log_handler_behind(p2p_config):
    """Its p2p.log was written, and nothing of it stays attached: the next run in this
    process (a campaign's, a test's) must not log into this folder or this stderr."""
    logger = logging.getLogger("speechswarm.p2p")
    before = list(logger.handlers)
    cfg = p2p_config("torus", "p2p.runs=[central,gossip/torus_kn]", "p2p.degree=3")
    with pytest.raises(ConfigError):  # after the log opened: the topology is built later
        run_experiment(cfg, progress=True)
    assert (Path(cfg.train.out_dir) / "p2p.log").is_file()
    assert logger.handlers == before
