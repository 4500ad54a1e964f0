"""The fault-injection campaign: phase classification, and a CI-sized kill campaign."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechswarm.chaos import classify_stack, ddp_kill, run_kill_campaign
from speechswarm.cli import main
from speechswarm.data.manifest import read_manifest, write_manifest

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


@pytest.fixture(scope="module")
def campaign_corpus(synth_corpus, tmp_path_factory) -> Path:
    """The session corpus with a dev set of its 8 shortest dev utterances (10 s of audio): the
    campaigns' runs score up to 24 dev utterances (~70 s of audio) at each evaluation, 40 % of
    a run's training time here. The runs and what the campaigns check of them are the same;
    only the evaluations get short."""
    out = tmp_path_factory.mktemp("campaign-corpus")
    for split in ("train", "test"):
        write_manifest(out / f"{split}.jsonl", read_manifest(synth_corpus.dir / f"{split}.jsonl"))
    dev = sorted(read_manifest(synth_corpus.dev), key=lambda u: u.duration)[:8]
    write_manifest(out / "dev.jsonl", dev)
    return out


@pytest.mark.slow  # ~1 min: a reference run and 2 killed-and-resumed runs
def test_a_small_kill_campaign_loses_nothing(campaign_corpus, tmp_path):
    campaign = run_kill_campaign(
        tmp_path / "chaos", trials=2, steps=6, corpus=campaign_corpus, log=lambda *_: None
    )
    s = campaign.summary()
    assert s["trials"] == 2 and s["unreadable_checkpoints"] == 0
    assert s["resumed"] == s["bit_identical"] == s["finished_resume_ok"] == 2
    assert "| 2 |" in campaign.table()


@pytest.mark.slow  # ~40 s: a reference DDP launch, one restarted and one resumed
def test_a_killed_ddp_rank_comes_back_to_the_same_weights(campaign_corpus, tmp_path, monkeypatch):
    """The campaign's run on a ~30k-parameter model of the tiny preset's layer types (as
    tests/conftest.py's SMALL_MODEL; the preset's is 3-4 M): the launches, the kills, the
    restart and the resume are the campaign's own, and 2 processes train it in a third of the
    time. 6 steps: both trials kill 0.1-1.5 s after the step-2 checkpoint (seed 0), with 4
    steps and 3 checkpoint writes (each widened by 0.4 s) still to come: the launch ends 5-6 s
    after that checkpoint here."""
    real = ddp_kill.train_overrides
    small = (
        "model.conv_channels=[4,4]",
        "model.rnn_hidden=32",
        "model.rnn_layers=1",
        "train.inter_ctc_layers=[]",
    )
    monkeypatch.setattr(ddp_kill, "train_overrides", lambda *a: [*real(*a), *small])
    out = tmp_path / "ddp"
    argv = ["chaos", "ddp", "--trials", "2", "--steps", "6", "--corpus", str(campaign_corpus),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0  # as a user types it
    trials = json.loads((out / "ddp-kill.json").read_text())["trials"]
    assert [t["mode"] for t in trials] == ["restart", "resume"]
    for t in trials:
        assert t["killed"] and t["finished_ok"] and t["identical"] and not t["unreadable"], t
    # the resumed trial's first launch failed and said which rank
    launch = (out / "trial-001" / "launch.stderr").read_text()
    assert "DDP worker(s) failed: rank 0 (exit code -9)" in launch
    assert "model 0.03 M params" in (out / "reference" / "train.log").read_text()


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
