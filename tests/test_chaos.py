"""The fault-injection campaign: phase classification, and a CI-sized kill campaign."""

from __future__ import annotations

import json

import pytest

from speechswarm.chaos import classify_stack, run_kill_campaign
from speechswarm.cli import main

STEP = """  File "/x/torch/nn/modules/rnn.py", line 1 in forward
  File "/x/speechswarm/train/step.py", line 120 in _forward
  File "/x/speechswarm/train/step.py", line 60 in train_step
  File "/x/speechswarm/train/loop.py", line 200 in train_one_epoch"""
DEV_BATCH = """  File "/x/speechswarm/data/dataset.py", line 150 in __getitem__
  File "/x/torch/utils/data/dataloader.py", line 700 in _next_data
  File "/x/speechswarm/evaluate.py", line 90 in evaluate
  File "/x/speechswarm/train/loop.py", line 310 in _evaluate
  File "/x/speechswarm/train/loop.py", line 300 in evaluate_and_save"""
SAVE_AFTER_EVAL = """  File "/x/speechswarm/checkpoint.py", line 97 in _atomic_write
  File "/x/speechswarm/checkpoint.py", line 120 in save_checkpoint
  File "/x/speechswarm/train/loop.py", line 298 in save
  File "/x/speechswarm/train/loop.py", line 305 in evaluate_and_save"""
TRAIN_BATCH = """  File "/x/speechswarm/data/dataset.py", line 150 in __getitem__
  File "/x/torch/utils/data/dataloader.py", line 700 in _next_data
  File "/x/speechswarm/train/loop.py", line 190 in train_one_epoch"""


@pytest.mark.parametrize(
    "stack, phase",
    [(STEP, "step"), (DEV_BATCH, "evaluation"), (SAVE_AFTER_EVAL, "checkpoint"),
     (TRAIN_BATCH, "data"), ('  File "/x/speechswarm/cli.py", line 3 in main', "other")],
)  # fmt: skip
def test_a_stack_is_placed_in_its_phase(stack, phase):
    assert classify_stack(stack) == phase


@pytest.mark.slow  # ~1-2 min: a reference run and 2 killed-and-resumed runs
def test_a_small_kill_campaign_loses_nothing(synth_corpus, tmp_path):
    campaign = run_kill_campaign(
        tmp_path / "chaos", trials=2, steps=8, corpus=synth_corpus.dir, log=lambda *_: None
    )
    s = campaign.summary()
    assert s["trials"] == 2 and s["unreadable_checkpoints"] == 0
    assert s["resumed"] == s["bit_identical"] == s["finished_resume_ok"] == 2
    assert "| 2 |" in campaign.table()


@pytest.mark.slow  # ~1.5 min: a reference DDP launch, one restarted and one resumed
def test_a_killed_ddp_rank_comes_back_to_the_same_weights(synth_corpus, tmp_path):
    out = tmp_path / "ddp"
    argv = ["chaos", "ddp", "--trials", "2", "--steps", "8", "--corpus", str(synth_corpus.dir),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # as a user types it
    trials = json.loads((out / "ddp-kill.json").read_text())["trials"]
    assert [t["mode"] for t in trials] == ["restart", "resume"]
    for t in trials:
        assert t["killed"] and t["finished_ok"] and t["identical"] and not t["unreadable"], t
    # the resumed trial's first launch failed and said which rank
    launch = (out / "trial-001" / "launch.stderr").read_text()
    assert "DDP worker(s) failed: rank 0 (exit code -9)" in launch


@pytest.mark.slow  # ~1-2 min: a reference P2P experiment and one killed-and-resumed copy
def test_a_killed_p2p_simulation_resumes_to_the_same_weights_and_rows(synth_corpus, tmp_path):
    out = tmp_path / "p2p"
    argv = ["chaos", "p2p", "--trials", "1", "--rounds", "4", "--corpus", str(synth_corpus.dir),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # as a user types it
    (trial,) = json.loads((out / "p2p_kill.json").read_text())["trials"]
    assert trial["resumed_ok"] and not trial["unreadable"], trial
    assert trial["identical_weights"] and trial["identical_rows"], trial["differences"]
    assert trial["finished_ok"]


def test_the_corpus_campaign_asks_for_the_manifest_it_breaks(capsys):
    assert main(["chaos", "corpus"]) == 1
    assert "give --manifest M" in capsys.readouterr().err
