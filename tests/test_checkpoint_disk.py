"""A full disk or a read-only folder while saving: one line naming the path and what to do,
the earlier checkpoints intact, no temporary file left, and a clean resume once it is fixed.

The file system's refusals are simulated: the checkpoint file's writes raise ENOSPC after a
few bytes (inside torch.save, where the real one lands), or creating the file raises EROFS.
`speechswarm chaos disk` does the same on a real, small tmpfs (root only)."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from speechswarm import checkpoint
from speechswarm.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from speechswarm.errors import CheckpointError, run_command
from speechswarm.train.loop import train


class _FullDisk:
    """A binary file that takes `room` bytes, then raises ENOSPC as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_after(monkeypatch, room: int = 1000, after: int = 0) -> None:
    """From the `after`+1-th checkpoint file opened on, writes fail once `room` bytes are in."""
    real = os.fdopen
    opened = [0]

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        if "b" not in mode or "w" not in mode:
            return f
        opened[0] += 1
        return f if opened[0] <= after else _FullDisk(f, room)

    monkeypatch.setattr(checkpoint.os, "fdopen", fdopen)


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((1000,), value)}, "step": int(value)}


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_checkpoint_stays(tmp_path, monkeypatch):  # fmt: skip
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _state(1.0))
    fill_disk_after(monkeypatch)
    with pytest.raises(CheckpointError) as caught:
        save_checkpoint(path, _state(2.0))  # torch.save would say "unexpected pos ..."
    e = caught.value
    assert e.reason == "unwritable" and e.path == path
    assert str(e) == (
        f"checkpoint {path}: cannot be written (No space left on device); the disk is full: "
        "free space (or set train.out_dir to another disk), then resume with --resume auto: "
        "the checkpoints written before are intact"
    )
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((1000,), 1.0))
    assert _leftovers(tmp_path) == []


def test_a_read_only_folder_is_one_line_and_nothing_is_touched(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ckpt.pt", _state(1.0))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(CheckpointError, match="Read-only file system.*remount it writable"):
        save_checkpoint(tmp_path / "ckpt.pt", _state(2.0))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_a_manager_that_runs_out_of_space_keeps_last_and_its_index(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(_state(2.0), step=2)
    fill_disk_after(monkeypatch)
    with pytest.raises(CheckpointError, match="step-4.pt: cannot be written"):
        manager.save(_state(4.0), step=4)
    monkeypatch.undo()
    reopened = CheckpointManager(tmp_path, keep_last=2)
    assert load_checkpoint(reopened.latest())["step"] == 2
    assert [e["step"] for e in reopened.entries] == [2]
    assert _leftovers(tmp_path) == []


def test_a_copy_for_last_pt_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Without hard links last.pt is a copy, which can hit the full disk too."""
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(_state(2.0), step=2)

    def no_links(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def full_copy(src, dst):
        open(dst, "wb").close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    monkeypatch.setattr(checkpoint.shutil, "copyfile", full_copy)
    with pytest.raises(CheckpointError, match="last.pt: cannot be written"):
        manager.save(_state(4.0), step=4)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2  # the old last.pt
    assert _leftovers(tmp_path) == []


def _command_raising(error: BaseException) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechswarm")
    sub = parser.add_subparsers(dest="command")

    def fail(args):
        raise error

    sub.add_parser("train").set_defaults(func=fail)
    return parser


@pytest.mark.parametrize(
    "code, says",
    [(errno.ENOSPC, "No space left on device: '/runs/x/metrics.jsonl'; free space"),
     (errno.EROFS, "Read-only file system: '/runs/x/metrics.jsonl'; remount it writable")],
)  # fmt: skip
def test_a_refused_write_anywhere_is_one_line(code, says, capsys):
    error = OSError(code, os.strerror(code), "/runs/x/metrics.jsonl")
    assert run_command(_command_raising(error), ["train"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err


def test_other_os_errors_keep_their_traceback():
    with pytest.raises(OSError):
        run_command(_command_raising(OSError(errno.EIO, "I/O error")), ["train"])


def _run_config(make_config, corpus, name):
    return make_config("train.max_steps=6", "train.epochs=100", "train.checkpoint_every=2",
                       "data.max_batch_size=2", manifest=corpus.few, name=name)  # fmt: skip


def test_a_run_whose_disk_fills_resumes_to_the_same_weights(synth_corpus, make_config, monkeypatch):  # fmt: skip
    straight = train(_run_config(make_config, synth_corpus, "a"), progress=False)
    cfg = _run_config(make_config, synth_corpus, "b")
    fill_disk_after(monkeypatch, after=2)  # step-2.pt and index.json fit, step-3.pt does not
    with pytest.raises(CheckpointError, match="step-3.pt: cannot be written"):
        train(cfg, progress=False)
    monkeypatch.undo()  # space is back
    folder = Path(cfg.train.out_dir) / "checkpoints"
    assert load_checkpoint(folder / "last.pt")["train_state"]["step"] == 2
    assert _leftovers(folder) == []
    resumed = train(cfg, resume="auto", progress=False)
    assert resumed.state.step == 6
    a = load_checkpoint(straight.run_dir / "checkpoints/last.pt")["model"]
    b = load_checkpoint(folder / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # ~1 min: a reference run, then a full tmpfs and a read-only run folder
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: root only")
def test_a_small_disk_campaign_on_a_real_tmpfs(synth_corpus):
    from speechswarm.chaos.disk import run_disk_campaign

    out = Path(tempfile.mkdtemp(prefix="chaos-disk-"))  # 0755 below: pytest's is root's only
    out.chmod(0o755)
    try:
        trials = run_disk_campaign(out, trials=2, steps=8, corpus=synth_corpus.dir,
                                   log=lambda *_: None)  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert [t.fault for t in trials] == ["full", "read_only"]
    for t in trials:
        assert t.error_line and t.intact and t.resumed_identical, t
