"""Hogwild on CPU: one worker is plain training, two share each epoch, checkpoints are
consistent snapshots, a killed worker is reported and its run resumes.

    .venv/bin/python -m pytest tests/distributed/test_hogwild.py -q

Workers are forked from the test process, so a function patched here (monkeypatch) is
patched in them too: that is how the crash test kills worker 1 in the middle of a batch.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from pair_corpus import overrides_for

from speechswarm.checkpoint import load_checkpoint
from speechswarm.config import load_config
from speechswarm.distributed import hogwild
from speechswarm.distributed.hogwild import HogwildWorkerFailed, train_hogwild
from speechswarm.report import read_metrics
from speechswarm.train import run as train_run
from speechswarm.train import step as train_step_module
from speechswarm.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BATCHES_PER_EPOCH = 6  # 12 utterances, 2 per batch


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    monkeypatch.setattr(train_run, "plot_run", lambda metrics, out_dir: [])


def config(manifest: Path, out_dir: Path, *extra: str):
    return load_config("tiny", overrides_for(manifest, out_dir, *extra))


def batches_done(ckpt: dict) -> int:
    """Batches the workers had finished when the snapshot was taken, from their positions."""
    return sum(
        epoch * BATCHES_PER_EPOCH // 2 + done for epoch, done in ckpt["hogwild"]["positions"]
    )


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_one_worker_trains_exactly_as_one_process(tone_pairs, tmp_path, rnn_type):
    """Shared-memory weights and AdamW moments, the global-step schedule (one-cycle) and the
    augmentation generator: with a single worker nothing races, so every number matches.
    The GRU trains on the fused CPU kernel in both, in the worker process too."""
    extra = ("data.max_batch_size=4", "train.epochs=2", "optim.name=adamw",
             "optim.schedule=onecycle", "optim.lr=3e-3", "augment.freq_masks=2",
             "augment.gain_db=[-6,6]", f"model.rnn_type={rnn_type}")  # fmt: skip
    plain = train(config(tone_pairs, tmp_path / "plain", *extra), progress=False)
    wild = train_hogwild(config(tone_pairs, tmp_path / "wild", *extra), workers=1, progress=False)
    assert plain.state.step == wild.state.step == 6
    a = load_checkpoint(plain.run_dir / "checkpoints/last.pt")
    b = load_checkpoint(wild.run_dir / "checkpoints/last.pt")
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different
    moments = [
        (a["optimizer"]["state"][k], b["optimizer"]["state"][k]) for k in a["optimizer"]["state"]
    ]
    assert all(torch.equal(x["exp_avg_sq"], y["exp_avg_sq"]) for x, y in moments)
    assert [r["dev_cer"] for r in wild.dev_history] == [r["dev_cer"] for r in plain.dev_history]


def test_two_workers_share_each_epoch_and_snapshots_are_consistent(tone_pairs, tmp_path):
    cfg = config(tone_pairs, tmp_path / "run", "data.max_batch_size=2", "train.epochs=2",
                 "train.checkpoint_every=2", "optim.lr=0.01")  # fmt: skip
    result = train_hogwild(cfg, workers=2, progress=False)
    assert result.stop_reason == "epochs"
    assert result.state.step == 2 * BATCHES_PER_EPOCH  # each batch once per epoch, in all
    assert result.state.audio_seconds == pytest.approx(2 * 12 * 0.7, rel=1e-3)
    # Every checkpoint is a snapshot between whole steps: the steps it counts are exactly the
    # batches its workers had finished.
    checkpoints = sorted((tmp_path / "run/checkpoints").glob("step-*.pt"))
    assert len(checkpoints) >= 3
    for path in checkpoints:
        ckpt = load_checkpoint(path)
        assert batches_done(ckpt) == ckpt["train_state"]["step"], path.name
        assert ckpt["hogwild"]["workers"] == 2
    records = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if "train_loss" in r]
    assert {r["worker"] for r in records} == {0, 1}
    assert len(records) == 2 * BATCHES_PER_EPOCH  # log_every=1: one record per step
    assert result.dev_history and result.best_checkpoint is not None


def test_a_killed_worker_is_reported_and_the_run_resumes(tone_pairs, tmp_path, monkeypatch):
    real_forward = train_step_module._forward
    calls = []

    def forward(run, batch):
        calls.append(1)  # per process: each forked worker counts its own batches
        if getattr(run.sync, "index", None) == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-batch, like an OOM kill
        return real_forward(run, batch)

    monkeypatch.setattr(train_step_module, "_forward", forward)
    cfg = config(tone_pairs, tmp_path / "run", "data.max_batch_size=2", "train.epochs=2",
                 "train.checkpoint_every=1")  # fmt: skip
    with pytest.raises(HogwildWorkerFailed, match=r"worker 1 died \(signal SIGKILL\)"):
        train_hogwild(cfg, workers=2, progress=False)
    last = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert batches_done(last) == last["train_state"]["step"] >= 2
    assert all(v.isfinite().all() for v in last["model"].values() if v.is_floating_point())
    summary = (tmp_path / "run/summary.md").read_text()
    assert "worker_failed" in summary

    monkeypatch.setattr(train_step_module, "_forward", real_forward)
    resumed = train_hogwild(cfg, workers=2, resume="auto", progress=False)
    assert resumed.stop_reason == "epochs"
    assert resumed.state.step == 2 * BATCHES_PER_EPOCH  # the lost batch was trained again


def test_bad_requests_are_refused_with_the_reason(tone_pairs, tmp_path):
    with pytest.raises(ValueError, match="optim.accumulate=1"):
        train_hogwild(config(tone_pairs, tmp_path / "a", "optim.accumulate=2"), workers=2)
    with pytest.raises(ValueError, match="at least 1 worker"):
        train_hogwild(config(tone_pairs, tmp_path / "b"), workers=0)
    assert hogwild.POLL_SECONDS < 0.1  # the parent notices a finished worker quickly


def test_resuming_a_finished_run_trains_nothing(tone_pairs, tmp_path):
    cfg = config(tone_pairs, tmp_path / "run", "data.max_batch_size=2", "train.max_steps=4",
                 "train.checkpoint_every=2")  # fmt: skip
    done = train_hogwild(cfg, workers=2, progress=False)
    assert done.stop_reason == "max_steps"
    last = tmp_path / "run/checkpoints/last.pt"
    stamp, weights = last.stat().st_mtime_ns, load_checkpoint(last)["model"]
    for attempt in (1, 2):
        again = train_hogwild(cfg, workers=2, resume="auto", progress=False)
        assert (again.stop_reason, again.state.step) == ("max_steps", done.state.step)
        assert last.stat().st_mtime_ns == stamp
        assert all(torch.equal(load_checkpoint(last)["model"][k], v) for k, v in weights.items())
        log = (tmp_path / "run/train.log").read_text()
        assert log.count("run already finished (max_steps)") == attempt
