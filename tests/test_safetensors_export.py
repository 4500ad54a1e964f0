"""safetensors export: the weights and a JSON config rebuild the checkpoint's model exactly.

.venv/bin/python -m pytest tests/test_safetensors_export.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tests.test_export import write_checkpoint

from speechswarm.cli import main
from speechswarm.export import load_for_export, random_batches
from speechswarm.safetensors_export import export_safetensors, load_safetensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_loaded_export_gives_identical_outputs(tmp_path):
    ckpt = write_checkpoint(tmp_path / "model.pt", features={"kind": "logmel"})
    out = export_safetensors(ckpt, tmp_path / "model.safetensors")
    _, extractor, reference = load_for_export(ckpt)
    model, extractor2, tokenizer, config = load_safetensors(out)
    assert tokenizer.to_dict() == config["tokenizer"] and config["step"] == 7
    with torch.inference_mode():
        for waves, wave_lens in random_batches(16000, batches=3):
            waves, wave_lens = torch.from_numpy(waves), torch.from_numpy(wave_lens)
            a, a_lens = reference(*extractor(waves, wave_lens))
            b, b_lens = model(*extractor2(waves, wave_lens))
            assert torch.equal(a, b) and torch.equal(a_lens, b_lens)


def test_files_are_readable_without_speechswarm(tmp_path):
    ckpt = write_checkpoint(tmp_path / "model.pt")
    export_safetensors(ckpt, tmp_path / "m.safetensors")
    tensors = load_file(str(tmp_path / "m.safetensors"))  # plain safetensors
    assert tensors.keys() == torch.load(ckpt, weights_only=True)["model"].keys()
    config = json.loads((tmp_path / "m.json").read_text())
    assert config["model_settings"]["rnn_hidden"] == 32 and config["format"] == 1


def test_cli_export_safetensors_with_check(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "m.safetensors"
    args = ["export", "--format", "safetensors", "--checkpoint", str(ckpt), "--out", str(out)]
    assert main([*args, "--check"]) == 0
    assert "max |log-prob diff| 0.0e+00" in capsys.readouterr().out
    assert main([*args[:-1], str(tmp_path / "m.bin")]) == 1
    assert "must end in .safetensors" in capsys.readouterr().err
