"""Export a checkpoint to ONNX (waveform in, CTC log-probs out) and check it against PyTorch.

    speechswarm export --checkpoint runs/demo/checkpoints/best.pt --out model.onnx --check
    speechswarm export --checkpoint best.pt --out model.onnx --quantize int8

The graph holds the whole acoustic front end, so a deployment needs only onnxruntime and
an audio reader (`speechswarm.onnx_runtime`, no torch):

    inputs   waves (N, S) float32 in [-1, 1] at the model's sample rate, zero-padded;
             wave_lens (N,) int64 samples (each >= 1)
    outputs  log_probs (N, T', V) float32 log-softmax; out_lens (N,) int64 valid frames

N and S (hence T') are dynamic. The metadata (`speechswarm_onnx_format`, `speechswarm_version`,
`tokenizer`, `features`, `model_settings`, `sample_rate`, `vocab_size`, `step`) carries all
that decoding needs, as a checkpoint does.

Two choices, both measured on this model with torch 2.13 (docs/decoding.md):
- The legacy TorchScript exporter (`dynamo=False`). The dynamo exporter fixed the time axis
  of a Conv2d + BiGRU model (onnxruntime then failed on other lengths).
- The recurrent layers run on packed sequences (`rnn_packing="packed"`), which export to
  ONNX GRU/LSTM nodes with `sequence_lens`, so padding never reaches a valid frame. The CPU
  training path (`recurrence.run_rnn_padded`) uses `torch.func.functional_call`, which the tracer
  refuses. Both paths give the same numbers (tested in tests/test_model.py).
- The STFT is a strided Conv1d with a fixed windowed-DFT kernel: `torch.stft` returns
  complex tensors, which the exporter does not handle. Features match `FeatureExtractor`
  to float32 rounding (tested).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import speechswarm
from speechswarm.checkpoint import load_checkpoint
from speechswarm.errors import UnavailableError, UsageError
from speechswarm.features import LOG_EPS, NORM_EPS, FeatureExtractor
from speechswarm.model import model_from_settings
from speechswarm.native_output import quiet_native_output

FORMAT_VERSION = 1
OPSET = 17
INPUTS = ("waves", "wave_lens")
OUTPUTS = ("log_probs", "out_lens")
# Parity bound for `--check`: the largest |log-prob difference| on valid frames tolerated
# between onnxruntime and PyTorch (measured ~1e-5 on the tiny preset; see docs/decoding.md).
PARITY_BOUND = 1e-3


class GraphFeatures(nn.Module):
    """`FeatureExtractor.forward` in exportable ops: waves (N, S), wave_lens (N,) ->
    feats (N, T, F), feat_lens (N,). The STFT (centred, zero-padded, as torch.stft with
    center=True, pad_mode="constant") is a Conv1d whose 2 * n_freqs filters are the window
    times cos / -sin of each DFT bin."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        self.kind, self.normalize = extractor.kind, extractor.normalize
        self.n_fft, self.hop = extractor.n_fft, extractor.hop
        n_freqs = self.n_fft // 2 + 1
        n = torch.arange(self.n_fft, dtype=torch.float64)
        k = torch.arange(n_freqs, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / self.n_fft  # (n_freqs, n_fft)
        window = extractor.window.double()
        kernel = torch.cat([window * torch.cos(angle), -window * torch.sin(angle)])
        self.register_buffer("dft", kernel.float()[:, None, :])  # (2 n_freqs, 1, n_fft)
        for name in ("mel_fb", "dct", "mean", "std"):
            value = getattr(extractor, name)
            self.register_buffer(name, None if value is None else value.detach().float().clone())

    def forward(self, waves: torch.Tensor, wave_lens: torch.Tensor):
        s = waves.shape[1]
        valid = torch.arange(s, device=waves.device)[None, :] < wave_lens[:, None]  # (N, S)
        waves = torch.where(valid, waves, torch.zeros_like(waves))
        padded = F.pad(waves[:, None, :], (self.n_fft // 2, self.n_fft // 2))  # (N, 1, S + n_fft)
        spec = F.conv1d(padded, self.dft, stride=self.hop)  # (N, 2 n_freqs, T)
        re, im = spec.chunk(2, dim=1)
        power = re * re + im * im  # (N, n_freqs, T)
        if self.kind == "spectrogram":
            feats = torch.log1p(torch.sqrt(power))
        else:
            feats = torch.log(torch.matmul(self.mel_fb.T, power) + LOG_EPS)  # (N, n_mels, T)
            if self.kind == "mfcc":
                feats = torch.matmul(self.dct.T, feats)  # (N, n_mfcc, T)
        feat_lens = torch.where(wave_lens > 0, wave_lens // self.hop + 1, 0)
        t = torch.arange(feats.shape[2], device=feats.device)
        pad = (t[None, :] >= feat_lens[:, None])[:, None, :]  # (N, 1, T)
        feats = feats.masked_fill(pad, 0.0)
        if self.normalize == "utterance":
            count = feat_lens.clamp(min=1).to(feats.dtype)[:, None, None]
            centred = (feats - feats.sum(2, keepdim=True) / count).masked_fill(pad, 0.0)
            var = (centred * centred).sum(2, keepdim=True) / count
            feats = centred * torch.rsqrt(var + NORM_EPS)
        elif self.normalize == "global":
            feats = ((feats - self.mean[:, None]) / self.std[:, None]).masked_fill(pad, 0.0)
        return feats.transpose(1, 2), feat_lens  # (N, T, F)


class ExportWrapper(nn.Module):
    """waves (N, S), wave_lens (N,) -> log_probs (N, T', V), out_lens (N,): features + model."""

    def __init__(self, extractor: FeatureExtractor, model: nn.Module) -> None:
        super().__init__()
        self.features = GraphFeatures(extractor)
        self.model = model

    def forward(self, waves: torch.Tensor, wave_lens: torch.Tensor):
        feats, feat_lens = self.features(waves, wave_lens)
        return self.model(feats, feat_lens)


def _import_onnx():
    """The onnx module; a missing onnx or onnxruntime is the user's to install."""
    try:
        import onnx
        import onnxruntime  # noqa: F401 (the parity check and quantisation need it)
    except ImportError as e:
        raise UnavailableError(
            f"ONNX export needs onnx and onnxruntime: pip install 'speechswarm[onnx]' ({e})"
        ) from None
    return onnx


def load_for_export(checkpoint: str | os.PathLike) -> tuple[dict, FeatureExtractor, nn.Module]:
    """(checkpoint dict, extractor, model in eval mode on the CPU) from a checkpoint file."""
    ckpt = load_checkpoint(Path(checkpoint), model=True)
    extractor = FeatureExtractor.from_settings(ckpt["features"]).eval()
    model = model_from_settings(ckpt["model_settings"])
    model.load_state_dict(ckpt["model"])
    return ckpt, extractor, model.eval()


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write `checkpoint` as an ONNX model with metadata to `out`; returns the path."""
    onnx = _import_onnx()

    ckpt, extractor, model = load_for_export(checkpoint)
    model.rnn_packing = "packed"  # exports to GRU nodes with sequence_lens (module docstring)
    wrapper = ExportWrapper(extractor, model).eval()
    rate = extractor.sample_rate
    waves = 0.1 * torch.randn(2, rate, generator=torch.Generator().manual_seed(0))
    wave_lens = torch.tensor([rate, rate * 6 // 10])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    # The tracer warns about every Python-level check in the model (shapes are traced for
    # the example input) and about PackPadded shape inference; the parity check is the test.
    with torch.no_grad(), warnings.catch_warnings(), quiet_native_output():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (waves, wave_lens),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={
                "waves": {0: "batch", 1: "samples"},
                "wave_lens": {0: "batch"},
                "log_probs": {0: "batch", 1: "frames"},
                "out_lens": {0: "batch"},
            },
        )
    proto = onnx.load(str(tmp))
    set_metadata(proto, onnx_metadata(ckpt, extractor))
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    return out


def onnx_metadata(ckpt: dict, extractor: FeatureExtractor) -> dict[str, str]:
    """What a runtime needs besides the graph, as ONNX metadata strings."""
    return {
        "speechswarm_onnx_format": str(FORMAT_VERSION),
        "speechswarm_version": speechswarm.__version__,
        "tokenizer": json.dumps(ckpt["tokenizer"]),
        "features": json.dumps(extractor.feature_settings()),
        "model_settings": json.dumps(ckpt["model_settings"]),
        "sample_rate": str(extractor.sample_rate),
        "vocab_size": str(ckpt["model_settings"]["vocab_size"]),
        "step": str(ckpt.get("step", "")),
    }


def set_metadata(proto, metadata: dict[str, str]) -> None:
    """Replace the model's metadata_props with `metadata` (in place)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float  # over valid frames of every batch
    batches: int
    utterances: int
    lengths_match: bool  # out_lens identical
    seconds_torch: float
    seconds_onnx: float

    @property
    def ok(self) -> bool:
        return self.lengths_match and self.max_abs_diff <= PARITY_BOUND


def random_batches(sample_rate: int, batches: int, seed: int = 0, max_seconds: float = 6.0):
    """Batches of 1-4 random-length utterances (0.1 s to max_seconds): tones plus noise,
    zero-padded. Yields (waves (N, S) float32, wave_lens (N,) int64) numpy arrays."""
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        n = int(rng.integers(1, 5))
        lens = rng.integers(int(0.1 * sample_rate), int(max_seconds * sample_rate), n)
        waves = np.zeros((n, int(lens.max())), dtype=np.float32)
        for i, length in enumerate(lens):
            t = np.arange(length) / sample_rate
            tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t)
            waves[i, :length] = tone + 0.05 * rng.standard_normal(length)
        yield waves, lens.astype(np.int64)


def check_parity(
    onnx_path: str | os.PathLike, checkpoint: str | os.PathLike, batches: int = 8, seed: int = 0
) -> ParityReport:
    """onnxruntime vs the PyTorch inference path (FeatureExtractor + model as trained, on
    the CPU) on random variable-length batches; the max |difference| of valid log-probs."""
    from speechswarm.onnx_runtime import OnnxModel

    _, extractor, model = load_for_export(checkpoint)
    session = OnnxModel(onnx_path)
    worst, count, same_lens, t_torch, t_onnx = 0.0, 0, True, 0.0, 0.0
    for waves, wave_lens in random_batches(extractor.sample_rate, batches, seed):
        start = time.perf_counter()
        with torch.no_grad():
            feats, feat_lens = extractor(torch.from_numpy(waves), torch.from_numpy(wave_lens))
            ref, ref_lens = model(feats, feat_lens)  # (N, T', V), (N,)
        t_torch += time.perf_counter() - start
        start = time.perf_counter()
        got, got_lens = session.run(waves, wave_lens)
        t_onnx += time.perf_counter() - start
        same_lens &= bool(np.array_equal(got_lens, ref_lens.numpy()))
        for i, n in enumerate(ref_lens.tolist()):
            worst = max(worst, float(np.abs(got[i, :n] - ref[i, :n].numpy()).max()))
        count += len(wave_lens)
    return ParityReport(worst, batches, count, same_lens, t_torch, t_onnx)


def quantize_int8(onnx_in: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time) of the
    convolutions and matrix products onnxruntime supports; its GRU nodes stay float32 (no
    int8 GRU kernel), and so does the feature front end (DFT, mel, DCT): int8 spectra would
    distort every frame. Metadata is kept. Measured cost: docs/decoding.md."""
    onnx = _import_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(onnx_in))
    front_end = [n.name for n in proto.graph.node if n.name.startswith("/features/")]
    out = Path(out)
    # The quantiser logs a warning per mask tensor it cannot type (bool NonZero outputs,
    # which carry no weights) and a pre-processing hint; neither applies here.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(onnx_in), str(out), weight_type=QuantType.QInt8, nodes_to_exclude=front_end
        )
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(out))
    metadata = {p.key: p.value for p in proto.metadata_props}
    metadata["quantization"] = "int8-dynamic"
    set_metadata(quantized, metadata)
    onnx.save(quantized, str(out))
    return out


def export_and_check(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    check: bool = False,
    quantize: str | None = None,
) -> bool:
    """`speechswarm export`: write `checkpoint` as ONNX to `out` (and, with quantize="int8",
    an int8 copy beside it as `<out>.int8.onnx`); with `check`, compare each file with
    PyTorch on random batches. Prints one line per file written and per check. Returns
    False when the float model fails its parity bound; the int8 model's difference is
    reported, not bounded: quantisation moves log-probs by design, its cost is WER."""
    if quantize not in (None, "int8"):
        raise UsageError(f"export: quantize must be None or 'int8', got {quantize!r}")
    start = time.perf_counter()
    out = export_onnx(checkpoint, out)
    size_mb, seconds = out.stat().st_size / 1e6, time.perf_counter() - start
    print(f"export: {checkpoint} -> {out} ({size_mb:.1f} MB, {seconds:.1f} s)")
    paths = [out]
    if quantize:
        q = quantize_int8(out, out.with_suffix(".int8.onnx"))
        print(f"export: int8 dynamic quantisation -> {q} ({q.stat().st_size / 1e6:.1f} MB)")
        paths.append(q)
    if not check:
        return True
    ok = True
    for path in paths:
        r = check_parity(path, checkpoint)
        verdict = "ok" if r.ok else "FAILED"
        if path != out:
            verdict = "int8, not bounded; measure its WER with `speechswarm eval --onnx`"
        print(
            f"check {path.name}: onnxruntime vs PyTorch on {r.utterances} random utterances in "
            f"{r.batches} batches: max |log-prob diff| {r.max_abs_diff:.2e} (bound "
            f"{PARITY_BOUND:.0e}), lengths {'equal' if r.lengths_match else 'DIFFER'}: {verdict}"
        )
        ok &= r.ok or path != out
    return ok
