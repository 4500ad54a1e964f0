"""Atomic weights-only checkpoints and the run's checkpoint folder."""

import json
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from speechswarm import checkpoint as ckpt
from speechswarm.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
)


class Foo:
    pass


def _state(value: float) -> dict:
    model = nn.Linear(2, 3)
    nn.init.constant_(model.weight, value)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 7,
        "config": {"optim": {"betas": (0.9, 0.999), "name": "adamw"}, "freeze": []},
        "vocab": ["<blank>", "a", " "],
        "dtype": torch.float32,
        "extra": None,
    }


def test_round_trip_keeps_values(tmp_path):
    state = _state(0.5)
    path = save_checkpoint(tmp_path / "sub" / "a.pt", state)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    torch.testing.assert_close(
        loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"]
    )
    assert loaded["config"] == {"optim": {"betas": (0.9, 0.999), "name": "adamw"}, "freeze": []}
    assert loaded["vocab"] == ["<blank>", "a", " "] and loaded["step"] == 7
    assert loaded["dtype"] is torch.float32 and loaded["extra"] is None
    assert os.listdir(tmp_path / "sub") == ["a.pt"]  # no temp file left


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.full((4,), 1.0)})
    before = path.read_bytes()

    def crashing_save(obj, f):
        f.write(b"PK\x03\x04partial")  # a zip header and no more, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.full((4,), 2.0)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"]
    torch.testing.assert_close(load_checkpoint(path)["w"], torch.full((4,), 1.0))


@pytest.mark.parametrize(
    ("state", "where", "kind"),
    [
        ({"config": {"x": Foo()}}, "state['config']['x']", "Foo"),
        ({"rng": [1, np.float64(2.0)]}, "state['rng'][1]", "float64"),
        ({"feats": np.zeros(3)}, "state['feats']", "ndarray"),
        ({"p": namedtuple("P", "a")(1)}, "state['p']", "P"),
        ({"out": Path("runs")}, "state['out']", "PosixPath"),
    ],
)
def test_save_refuses_unloadable_values_naming_the_key(tmp_path, state, where, kind):
    with pytest.raises(TypeError) as info:
        save_checkpoint(tmp_path / "x.pt", state)
    assert str(info.value).startswith(f"{where} is a {kind}")
    assert not (tmp_path / "x.pt").exists()


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "obj": Foo()}, path)  # bypasses save_checkpoint's check
    with pytest.raises(CheckpointError, match=r"Foo object.*arbitrary code") as info:
        load_checkpoint(path)
    assert info.value.reason == "unsafe_content" and info.value.path == path


def test_missing_truncated_and_garbage_files_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file") as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert info.value.reason == "missing_file" and str(tmp_path / "nope.pt") in str(info.value)

    good = save_checkpoint(tmp_path / "good.pt", _state(1.0))
    data = good.read_bytes()
    for name, content in [("empty", b""), ("half", data[: len(data) // 2]), ("junk", b"x" * 999)]:
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            load_checkpoint(bad)
        assert info.value.reason == "corrupt_file" and str(bad) in str(info.value)


def test_manager_prunes_tracks_best_and_indexes(tmp_path):
    run = tmp_path / "checkpoints"
    manager = CheckpointManager(run, keep_last=2)
    assert manager.latest() is None and manager.best_metric is None
    assert manager.last_saved_step is None
    for step, wer in [(10, 0.50), (20, 0.30), (30, 0.40), (40, None)]:
        manager.save({"step": step}, step=step, metric=wer)

    assert sorted(p.name for p in run.glob("*.pt")) == [
        "best.pt",
        "last.pt",
        "step-30.pt",
        "step-40.pt",
    ]
    assert manager.best_metric == 0.30 and manager.last_saved_step == 40
    assert load_checkpoint(run / "best.pt")["step"] == 20  # its step file is already pruned
    assert manager.latest() == run / "last.pt" and load_checkpoint(manager.latest())["step"] == 40

    index = json.loads((run / "index.json").read_text())
    assert [(e["step"], e["metric"], e["path"]) for e in index["checkpoints"]] == [
        (30, 0.40, "step-30.pt"),
        (40, None, "step-40.pt"),
    ]
    assert index["best"]["step"] == 20 and index["best"]["source"] == "step-20.pt"
    times = [e["wall_time"] for e in index["checkpoints"]]
    assert times == sorted(times) and index["last"]["step"] == 40


def test_manager_resumes_index_and_ignores_nan(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=0)
    manager.save({"step": 1}, step=1, metric=0.25)
    reopened = CheckpointManager(tmp_path, keep_last=0)
    assert reopened.last_saved_step == 1
    reopened.save({"step": 2}, step=2, metric=float("nan"))
    reopened.save({"step": 3}, step=3, metric=0.30)
    assert reopened.best_metric == 0.25 and load_checkpoint(reopened.best_path())["step"] == 1
    reopened.save({"step": 4}, step=4, metric=0.20)
    assert reopened.best_metric == 0.20 and load_checkpoint(tmp_path / "best.pt")["step"] == 4
    assert len(list(tmp_path.glob("step-*.pt"))) == 4  # keep_last=0 keeps all
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["checkpoints"][1]["metric"] is None  # NaN is stored as "no measurement"


def test_manager_falls_back_to_copy_without_hard_links(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(ckpt.os, "link", no_link)
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save({"step": 1}, step=1, metric=0.5)
    manager.save({"step": 2}, step=2, metric=0.6)
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 1
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_manager_indexes_step_files_saved_before_a_crash(tmp_path):
    # A crash after step-<N>.pt was written but before last.pt/index.json were updated.
    save_checkpoint(tmp_path / "step-5.pt", {"step": 5})
    save_checkpoint(tmp_path / "step-20.pt", {"step": 20})
    manager = CheckpointManager(tmp_path, keep_last=2)
    assert manager.latest() == tmp_path / "step-20.pt"
    manager.save({"step": 30}, step=30)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-20.pt", "step-30.pt"]
    assert manager.best_metric is None and manager.best_path() is None


def test_manager_rejects_a_broken_index(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="index.json: not a checkpoint index") as info:
        CheckpointManager(tmp_path)
    assert info.value.reason == "corrupt_file"


def test_resume_through_checkpoint_is_exact(tmp_path):
    """3 steps + save + fresh objects + restore + 3 steps == 6 uninterrupted steps."""
    from speechswarm.train.optim import build_optimizer, build_scheduler
    from speechswarm.train.rng import capture_rng_state, restore_rng_state, seed_everything

    schedule = {"name": "onecycle", "total_steps": 6}

    def fresh():
        seed_everything(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.LayerNorm(8), nn.Linear(8, 1))
        opt = build_optimizer(model, name="adamw", lr=0.01, weight_decay=0.1)
        return model, opt, build_scheduler(opt, **schedule)

    def train(model, opt, sched, steps):
        for _ in range(steps):
            x = torch.randn(5, 4)  # drawn from the global RNG, as are the dropout masks
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            sched.step()

    model, opt, sched = fresh()
    train(model, opt, sched, 6)

    model2, opt2, sched2 = fresh()
    train(model2, opt2, sched2, 3)
    manager = CheckpointManager(tmp_path)
    manager.save(
        {
            "model": model2.state_dict(),
            "optimizer": opt2.state_dict(),
            "scheduler": sched2.state_dict(),
            "rng": capture_rng_state(),
        },
        step=3,
    )
    del model2, opt2, sched2
    torch.randn(100)  # the process goes on drawing numbers before the "restart"

    model3, opt3, sched3 = fresh()
    state = load_checkpoint(manager.latest())
    model3.load_state_dict(state["model"])
    opt3.load_state_dict(state["optimizer"])
    sched3.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    train(model3, opt3, sched3, 3)
    for p, q in zip(model.parameters(), model3.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt3.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
