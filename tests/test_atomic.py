"""Files written whole or not at all, readable as an ordinary `open()` would leave them.

.venv/bin/python -m pytest tests/test_atomic.py -q
"""

from __future__ import annotations

import os
import stat

import pytest
import torch

from speechswarm.atomic import atomic_open, file_mode
from speechswarm.checkpoint import save_checkpoint
from speechswarm.data.manifest import Utterance, write_manifest


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_an_ordinary_files_mode(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    expected = 0o666 & ~mask
    assert file_mode() == expected  # mkstemp alone would give 0o600
    write_manifest(tmp_path / "m.jsonl", [Utterance("u", "a.flac", 1.0, "a", "s")])
    save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(2)})
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for path in ("m.jsonl", "c.pt"):
        assert mode(tmp_path / path) == mode(plain) == expected, path


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with atomic_open(target, "wb", fsync=True) as f:
        f.write("ü".encode())
    assert target.read_text(encoding="utf-8") == "ü"
