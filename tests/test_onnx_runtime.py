"""The torch-free runtime: onnxruntime + numpy, same texts as PyTorch, clear errors.

.venv/bin/python -m pytest tests/test_onnx_runtime.py -q
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import soundfile as sf

from speechswarm.data.audio import AudioError
from speechswarm.export import export_onnx, set_metadata
from speechswarm.onnx_runtime import OnnxModel, OnnxRecognizer
from test_export import write_checkpoint  # tests/ is on sys.path (pytest rootdir-less import)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    ckpt = write_checkpoint(folder / "model.pt")
    path = export_onnx(ckpt, folder / "model.onnx")
    rng = np.random.default_rng(0)
    wav = folder / "noise.wav"
    sf.write(wav, (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000)
    return ckpt, path, wav


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_transcribing_never_imports_torch(exported):
    _, path, wav = exported
    code = (
        "import sys\n"
        "from speechswarm.onnx_runtime import OnnxRecognizer\n"
        "from speechswarm.decode import DecoderOptions\n"
        f"r = OnnxRecognizer({str(path)!r})\n"
        f"greedy = r.transcribe({str(wav)!r})\n"
        f"beam = OnnxRecognizer({str(path)!r}, decoder=DecoderOptions('beam'))\n"
        f"beam.transcribe({str(wav)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', len(greedy))\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
    # the command a user types, too
    cli = (
        "import sys\n"
        "from speechswarm.cli import main\n"
        f"rc = main(['transcribe', '--onnx', {str(path)!r}, {str(wav)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "raise SystemExit(rc)\n"
    )
    done = run_python(cli)
    assert done.returncode == 0, done.stderr
    assert str(wav) in done.stdout
    assert "real-time factor" in done.stderr and "onnxruntime" in done.stderr


def test_onnx_and_pytorch_give_the_same_log_probs_and_text(exported, one_torch_thread):
    import torch

    import speechswarm

    ckpt, path, wav = exported
    onnx_asr, torch_asr = OnnxRecognizer(path), speechswarm.load(ckpt, device="cpu")
    wave, _ = sf.read(wav, dtype="float32")
    assert onnx_asr.transcribe(wav) == torch_asr.transcribe(wave)
    log_probs, out_lens = onnx_asr.model.run(wave[None], np.array([len(wave)]))
    with torch.no_grad():
        feats, feat_lens = torch_asr.extractor(
            torch.from_numpy(wave[None]), torch.tensor([len(wave)])
        )
        expected, expected_lens = torch_asr.model(feats, feat_lens)
    assert out_lens.tolist() == expected_lens.tolist()
    np.testing.assert_allclose(log_probs, expected.numpy(), atol=1e-3)


def test_onnx_word_timings_match_pytorch(exported, one_torch_thread):
    import speechswarm

    ckpt, path, wav = exported
    onnx_asr, torch_asr = OnnxRecognizer(path), speechswarm.load(ckpt, device="cpu")
    assert onnx_asr.frame_seconds == torch_asr.frame_seconds
    (got,), (want,) = onnx_asr.recognize_batch([wav]), torch_asr.recognize_batch([wav])
    assert got.text == want.text and got.duration == want.duration == 0.75
    assert [(w.word, w.start, w.end) for w in got.words] == [
        (w.word, w.start, w.end) for w in want.words
    ]
    assert [w.confidence for w in got.words] == pytest.approx(
        [w.confidence for w in want.words], abs=1e-3
    )


def test_a_model_with_two_output_frames_per_recurrent_frame_exports_exactly(
    exported, tmp_path, one_torch_thread
):
    """Time stride 4, output_upsample 2: the graph's frames, lengths and timings are PyTorch's."""
    import speechswarm
    from speechswarm.export import PARITY_BOUND, check_parity

    ckpt = write_checkpoint(tmp_path / "up.pt", conv_strides=((2, 2), (2, 2)), output_upsample=2)
    path = export_onnx(ckpt, tmp_path / "up.onnx")
    report = check_parity(path, ckpt, batches=3, seed=1)
    assert report.lengths_match and report.max_abs_diff < PARITY_BOUND
    onnx_asr, torch_asr = OnnxRecognizer(path), speechswarm.load(ckpt, device="cpu")
    assert onnx_asr.frame_seconds == torch_asr.frame_seconds == 0.02  # hop 10 ms x 4 / 2
    wave, _ = sf.read(exported[2], dtype="float32")  # 0.75 s: 76 frames -> 19 -> 38 out
    log_probs, out_lens = onnx_asr.model.run(wave[None], np.array([len(wave)]))
    assert out_lens.tolist() == [38] and log_probs.shape[1] == 38
    assert onnx_asr.transcribe(exported[2]) == torch_asr.transcribe(wave)


def test_bad_inputs_fail_clearly(exported, tmp_path):
    _, path, _ = exported
    with pytest.raises(FileNotFoundError, match="speechswarm export"):
        OnnxModel(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="junk.onnx: onnxruntime cannot load it"):
        OnnxModel(junk)

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}

    def rewritten(name: str, **changes) -> str:
        set_metadata(proto, {k: v for k, v in {**meta, **changes}.items() if v is not None})
        out = tmp_path / name
        onnx.save(proto, str(out))
        return str(out)

    with pytest.raises(ValueError, match="not written by `speechswarm export`"):
        OnnxModel(rewritten("foreign.onnx", speechswarm_onnx_format=None))
    with pytest.raises(ValueError, match="export format 99.*re-export"):
        OnnxModel(rewritten("future.onnx", speechswarm_onnx_format="99"))
    other_vocab = '{"kind": "char", "alphabet": "abc"}'
    with pytest.raises(ValueError, match="vocabulary has 4 tokens but its output has 29"):
        OnnxRecognizer(rewritten("vocab.onnx", tokenizer=other_vocab))

    asr = OnnxRecognizer(path)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(AudioError) as unreadable:
        asr.transcribe(corrupt)
    assert unreadable.value.reason == "unreadable_audio"
    with pytest.raises(ValueError, match="non-empty mono waveform"):
        asr.transcribe(np.zeros(0, dtype=np.float32))
