"""Checkpoint averaging against hand-computed means, its refusals, and the command.

.venv/bin/python -m pytest tests/test_average.py -q
"""

from __future__ import annotations

import pytest
import torch
from tests.test_export import write_checkpoint

from speechswarm.average import average_checkpoints, average_state_dicts
from speechswarm.checkpoint import load_checkpoint, save_checkpoint
from speechswarm.cli import main
from speechswarm.errors import CheckpointError


def test_floats_are_averaged_and_counters_come_from_the_last():
    states = [
        {"w": torch.tensor([1.0, 2.0]), "bn.running_var": torch.tensor([1.0]),
         "bn.num_batches_tracked": torch.tensor(10)},
        {"w": torch.tensor([2.0, 4.0]), "bn.running_var": torch.tensor([2.0]),
         "bn.num_batches_tracked": torch.tensor(20)},
        {"w": torch.tensor([6.0, 0.0]), "bn.running_var": torch.tensor([6.0]),
         "bn.num_batches_tracked": torch.tensor(30)},
    ]  # fmt: skip
    avg = average_state_dicts(states)
    assert torch.equal(avg["w"], torch.tensor([3.0, 2.0]))
    assert torch.equal(avg["bn.running_var"], torch.tensor([3.0]))
    assert avg["bn.num_batches_tracked"].item() == 30
    assert avg["bn.num_batches_tracked"].dtype == torch.int64
    assert states[0]["w"].tolist() == [1.0, 2.0]  # inputs untouched


def test_bf16_weights_are_summed_wide_and_keep_their_dtype():
    states = [{"w": torch.full((3,), 1.0 + i * 2**-8, dtype=torch.bfloat16)} for i in range(4)]
    avg = average_state_dicts(states)["w"]
    assert avg.dtype == torch.bfloat16
    assert avg.tolist() == [torch.tensor(1.0 + 1.5 * 2**-8).bfloat16().item()] * 3


def test_mismatched_tensors_are_named():
    with pytest.raises(ValueError, match=r"w: state 1 has torch.float32 \(3,\), state 0"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="hold different tensors"):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])


def test_average_checkpoints_writes_an_inference_checkpoint(tmp_path, capsys):
    paths = [write_checkpoint(tmp_path / f"step-{i}.pt", seed=i) for i in range(3)]
    ckpts = [load_checkpoint(p) for p in paths]
    assert main(["average", *map(str, paths), "--out", str(tmp_path / "avg.pt")]) == 0
    assert "average: 3 checkpoints (steps 7, 7, 7)" in capsys.readouterr().out
    avg = load_checkpoint(tmp_path / "avg.pt")
    name = "classifier.weight"
    expected = sum(c["model"][name].double() for c in ckpts) / 3
    assert torch.equal(avg["model"][name], expected.float())
    assert avg["tokenizer"] == ckpts[-1]["tokenizer"] and "optimizer" not in avg
    assert avg["averaged_from"] == [str(p) for p in paths]


def test_incompatible_checkpoints_are_refused_in_one_line(tmp_path, capsys):
    a = write_checkpoint(tmp_path / "a.pt")
    b = write_checkpoint(tmp_path / "b.pt", features={"kind": "mfcc"})
    assert main(["average", str(a), str(b), "--out", str(tmp_path / "avg.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model_settings.num_features: 161 vs 13" in err
    c = tmp_path / "c.pt"
    ckpt = load_checkpoint(a)
    ckpt["model"]["classifier.weight"] = ckpt["model"]["classifier.weight"][:5]
    save_checkpoint(c, ckpt)
    with pytest.raises(CheckpointError, match="classifier.weight: state 1 has"):
        average_checkpoints([a, c], tmp_path / "avg.pt")
    with pytest.raises(ValueError, match="at least 2"):
        average_checkpoints([a], tmp_path / "avg.pt")
