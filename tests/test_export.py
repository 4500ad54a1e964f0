"""ONNX export: the graph's front end against FeatureExtractor, onnxruntime against PyTorch
on dynamic batch and time, metadata, int8 quantisation.

    .venv/bin/python -m pytest tests/test_export.py -q
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from speechswarm.checkpoint import save_checkpoint
from speechswarm.data.tokenizer import CharTokenizer
from speechswarm.export import (
    FORMAT_VERSION,
    PARITY_BOUND,
    GraphFeatures,
    check_parity,
    export_onnx,
    quantize_int8,
    random_batches,
)
from speechswarm.features import FeatureExtractor
from speechswarm.model import DeepSpeech2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {
    "conv_channels": (4, 4),
    "conv_kernels": ((41, 11), (21, 11)),
    "conv_strides": ((2, 2), (2, 1)),
    "rnn_hidden": 32,
    "rnn_layers": 2,
}


def write_checkpoint(path, features: dict | None = None, seed: int = 0, **model_settings):
    """A small random model (SMALL, updated by `model_settings`) with non-trivial BatchNorm
    statistics, saved as `train` does."""
    torch.manual_seed(seed)
    extractor = FeatureExtractor(**(features or {}))
    tokenizer = CharTokenizer()
    model = DeepSpeech2(
        extractor.num_features, len(tokenizer), **{**SMALL, **model_settings}
    ).eval()
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = {
        "model": model.state_dict(),
        "model_settings": model.settings(),
        "features": extractor.feature_settings(),
        "tokenizer": tokenizer.to_dict(),
        "step": 7,
    }
    return save_checkpoint(path, state)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    ckpt = write_checkpoint(folder / "model.pt")
    return ckpt, export_onnx(ckpt, folder / "model.onnx")


@pytest.mark.parametrize(
    "features",
    [
        {"kind": "spectrogram"},
        {"kind": "logmel", "normalize": "none"},
        {"kind": "mfcc", "win_ms": 25.0},
        {"kind": "logmel", "normalize": "global", "mean": [0.5] * 80, "std": [2.0] * 80},
    ],
)
def test_graph_features_match_the_feature_extractor(features):
    extractor = FeatureExtractor(**features)
    graph = GraphFeatures(extractor)
    for waves, wave_lens in random_batches(16000, 3, seed=1, max_seconds=2.0):
        waves, wave_lens = torch.from_numpy(waves), torch.from_numpy(wave_lens)
        expected, expected_lens = extractor(waves, wave_lens)
        got, got_lens = graph(waves, wave_lens)
        assert torch.equal(got_lens, expected_lens)
        # a direct DFT vs torch's FFT: float32 rounding only
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_onnx_matches_pytorch_on_new_batch_sizes_and_lengths(exported):
    """Exported with 2 utterances of 1 s and 0.6 s; checked on 1-4 utterances of 0.1-6 s."""
    ckpt, path = exported
    report = check_parity(path, ckpt, batches=6, seed=3)
    assert report.lengths_match
    assert report.utterances >= 6
    assert report.max_abs_diff < PARITY_BOUND
    assert report.ok


def test_metadata_carries_what_decoding_needs(exported):
    ckpt, path = exported
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["speechswarm_onnx_format"] == str(FORMAT_VERSION)
    assert json.loads(meta["tokenizer"]) == CharTokenizer().to_dict()
    assert json.loads(meta["features"])["kind"] == "spectrogram"
    assert json.loads(meta["model_settings"])["rnn_hidden"] == 32
    assert meta["sample_rate"] == "16000" and meta["vocab_size"] == "29" and meta["step"] == "7"
    assert [i.name for i in proto.graph.input] == ["waves", "wave_lens"]
    assert [o.name for o in proto.graph.output] == ["log_probs", "out_lens"]
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "samples"]  # both axes dynamic
    assert any(n.op_type == "GRU" for n in proto.graph.node)


def test_int8_quantisation_keeps_the_front_end_and_metadata(exported, tmp_path):
    ckpt, path = exported
    q = quantize_int8(path, tmp_path / "model.int8.onnx")
    proto = onnx.load(str(q))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["quantization"] == "int8-dynamic"
    assert meta["tokenizer"] == json.dumps(CharTokenizer().to_dict())
    integer_ops = [n for n in proto.graph.node if "Integer" in n.op_type]
    assert integer_ops  # some layers run in int8
    assert not [n for n in integer_ops if n.name.startswith("/features/")]
    report = check_parity(q, ckpt, batches=2)
    assert report.lengths_match
    assert 0 < report.max_abs_diff < 5.0  # int8 moves the numbers, within reason
