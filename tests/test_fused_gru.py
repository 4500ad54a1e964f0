"""The fused CPU GRU kernel against ATen's nn.GRU, and its fallback when it does not build.

    .venv/bin/python -m pytest tests/test_fused_gru.py -q

The first test in a fresh cache compiles the kernel (~40 s); later runs load it (~1 s).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechswarm import fused_gru, host
from speechswarm.model import DeepSpeech2


@pytest.fixture(scope="module")
def kernel():
    return fused_gru.load()


def _grads(module, *inputs):
    return [t.grad.clone() for t in inputs] + [p.grad.clone() for p in module.parameters()]


def _against_nn_gru(g: nn.GRU, x: torch.Tensor, dtype, threads: int | None = None, lens=None):
    """(fused output, nn.GRU output, fused gradients, nn.GRU gradients) of one weighted sum
    through layer `g`; input and parameter gradients, the kernel on `threads` threads; with
    `lens`, nn.GRU runs on a PackedSequence of those lengths."""
    if lens is None:
        ref, _ = g(x)
    else:
        packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
        ref = pad_packed_sequence(g(packed)[0], batch_first=True, total_length=x.shape[1])[0]
    weight = torch.randn_like(ref)
    (ref * weight).sum().backward()
    want = _grads(g, x)
    x.grad = None
    g.zero_grad()
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        out = fused_gru.gru_layer(g, x, lens, dtype)
    finally:
        torch.set_num_threads(before)
    (out * weight).sum().backward()
    return out, ref, _grads(g, x), want


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_layer_equals_nn_gru_in_float64(kernel, bidirectional, threads):
    # float64 all through: the kernel's float32 hidden state is then float64, so it must
    # agree with ATen's GRU to rounding, outputs and every gradient (both thread schemes).
    torch.manual_seed(0)
    g = nn.GRU(5, 4, batch_first=True, bidirectional=bidirectional).double()
    x = torch.randn(3, 7, 5, dtype=torch.double, requires_grad=True)
    out, ref, grads, want = _against_nn_gru(g, x, torch.double, threads)
    assert (out - ref).abs().max() < 1e-10
    for got, exp in zip(grads, want, strict=True):
        assert (got - exp).abs().max() < 1e-10


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_layer_with_lengths_equals_packed_nn_gru(kernel, bidirectional, threads):
    # Each utterance runs within its length, the reverse direction backwards from its last
    # frame, as on a PackedSequence: padding (here large, not zero) reaches no output or
    # gradient, and the output past each length is zero.
    torch.manual_seed(0)
    g = nn.GRU(5, 4, batch_first=True, bidirectional=bidirectional).double()
    lens = torch.tensor([7, 4, 1, 6])
    x = torch.randn(4, 7, 5, dtype=torch.double)
    x[torch.arange(7)[None, :] >= lens[:, None]] = 1e3
    x.requires_grad_()
    out, ref, grads, want = _against_nn_gru(g, x, torch.double, threads, lens)
    assert (out - ref).abs().max() < 1e-10
    assert out[torch.arange(7)[None, :] >= lens[:, None]].abs().max() == 0
    for got, exp in zip(grads, want, strict=True):
        assert (got - exp).abs().max() < 1e-10


def test_lengths_past_the_input_are_refused(kernel):
    g = nn.GRU(3, 4, batch_first=True, bidirectional=True)
    x = torch.randn(2, 5, 3)
    with pytest.raises(RuntimeError, match="outside"):
        fused_gru.gru_layer(g, x, torch.tensor([5, 6]), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_non_finite_input_makes_its_utterance_non_finite(kernel, dtype):
    # as in ATen's GRU: the NaN must reach the loss (the loop then skips the batch), not be
    # clamped into a finite gate value
    g = nn.GRU(3, 4, batch_first=True, bidirectional=True)
    x = torch.randn(3, 6, 3)
    x[1, 2, 0] = float("nan")
    x[2, 4, 1] = float("inf")
    out = fused_gru.gru_layer(g, x, torch.tensor([6, 6, 5]), dtype, sum_directions=True)
    assert torch.isfinite(out[0]).all()
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.double])
def test_saturated_gates_stay_finite_and_exact(kernel, dtype):
    # pre-activations of +-1000, far past where exp overflows: under -ffast-math an overflow
    # came out as NaN (a demo run lost its BatchNorm statistics to it); sigmoid and tanh are
    # 0 or 1 there, so outputs and gradients must still equal ATen's
    # (hidden 32: the vectorised loop, whose exp overflowed; a scalar tail did not)
    torch.manual_seed(0)
    g = nn.GRU(8, 32, batch_first=True, bidirectional=True).to(dtype)
    x = (torch.randn(3, 9, 8, dtype=dtype) * 300).requires_grad_()
    out, ref, grads, want = _against_nn_gru(g, x, dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert torch.isfinite(out).all() and (out - ref).abs().max() < tol
    for got, exp in zip(grads, want, strict=True):
        assert torch.isfinite(got).all() and (got - exp).abs().max() < tol * (1 + exp.abs().max())


def _model(rnn_type="gru", merge="sum"):
    torch.manual_seed(0)
    return DeepSpeech2(
        40,
        10,
        conv_channels=(4,),
        conv_kernels=((11, 5),),
        conv_strides=((2, 2),),
        rnn_type=rnn_type,
        rnn_hidden=16,
        rnn_layers=2,
        bidirectional=True,
        bidirectional_merge=merge,
    ).double()


def _step(model, kernel, feats, lens):
    """Loss and gradients of one training forward/backward with `kernel`."""
    model.rnn_kernel = kernel
    model.zero_grad()
    log_probs, out_lens = model(feats, lens)
    mask = torch.arange(log_probs.shape[1])[None, :] < out_lens[:, None]
    loss = (log_probs.exp() * mask[..., None]).pow(2).sum()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_model_training_step_equals_aten_with_padding(kernel, monkeypatch, merge):
    # Utterances of different lengths in one batch: the fused path must read no padding,
    # exactly like the ATen path (per-utterance reversal for the backward direction).
    model = _model(merge=merge)
    feats = torch.randn(3, 60, 40, dtype=torch.double)
    lens = torch.tensor([60, 41, 17])
    calls = []
    real = fused_gru.gru_layer
    monkeypatch.setattr(fused_gru, "gru_layer", lambda *a: calls.append(1) or real(*a))
    loss_f, grads_f = _step(model, "fused", feats, lens)
    assert len(calls) == 2  # both GRU layers ran fused
    loss_a, grads_a = _step(model, "aten", feats, lens)
    assert len(calls) == 2
    assert torch.allclose(loss_f, loss_a, rtol=1e-10)
    for gf, ga in zip(grads_f, grads_a, strict=True):
        assert torch.allclose(gf, ga, rtol=1e-8, atol=1e-10)


def test_bf16_autocast_training_matches_aten_closely(kernel):
    # Under bf16 autocast the kernel keeps h in float32 where ATen rounds it to bf16 per
    # step, so the two agree to bf16 precision, not bit for bit.
    torch.manual_seed(0)
    g = nn.GRU(64, 64, batch_first=True, bidirectional=True)
    x = torch.randn(4, 50, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, _ = g(x)
    ref.float().square().mean().backward()
    want = _grads(g, x)
    x.grad = None
    g.zero_grad()
    out = fused_gru.gru_layer(g, x, None, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert (out.float() - ref.float()).abs().max() < 0.05
    for got, exp in zip(_grads(g, x), want, strict=True):
        assert got.dtype == exp.dtype
        assert (got - exp).norm() / exp.norm() < 0.05


def _bf16_errors(g: nn.GRU, x: torch.Tensor, packed: bool, threads: int) -> list[float]:
    """Relative errors of the bf16 kernel's output and gradients against nn.GRU in float64,
    with the per-step GEMMs `packed` (AMX brgemm) or on ATen's mm."""
    g64, x64 = copy.deepcopy(g).double(), x.detach().double().requires_grad_()
    ref, _ = g64(x64)
    weight = torch.randn_like(ref)
    (ref * weight).sum().backward()
    want = _grads(g64, x64)
    before, threads_before = fused_gru.packed_recurrent_gemm, torch.get_num_threads()
    fused_gru.packed_recurrent_gemm = packed
    torch.set_num_threads(threads)
    try:
        x.grad = None
        g.zero_grad()
        out = fused_gru.gru_layer(g, x, None, torch.bfloat16).double()
        (out * weight).sum().backward()
    finally:
        fused_gru.packed_recurrent_gemm = before
        torch.set_num_threads(threads_before)
    errs = [float((out - ref).detach().norm() / ref.detach().norm())]
    return errs + [
        float((a.double() - w).norm() / w.norm()) for a, w in zip(_grads(g, x), want, strict=True)
    ]


@pytest.mark.parametrize("hidden", [64, 96])  # 64-column and 32-column packed blocks
@pytest.mark.parametrize("threads", [1, 2])
def test_packed_bf16_recurrence_as_accurate_as_aten_mm(kernel, hidden, threads):
    # On AMX the per-step GEMMs run on oneDNN's brgemm with the weight packed once (float
    # results, bias added in float): against a float64 nn.GRU it must be as close as the
    # ATen-mm path (bf16 results), within bf16 precision.
    if not kernel.packed_gemm_available(hidden):
        pytest.skip("no AMX: the packed recurrent GEMM is not used on this CPU")
    torch.manual_seed(0)
    g = nn.GRU(48, hidden, batch_first=True, bidirectional=True)
    x = torch.randn(5, 40, 48, requires_grad=True)
    packed = _bf16_errors(g, x, True, threads)
    plain = _bf16_errors(g, x, False, threads)
    assert max(packed) < 0.03
    for p, a in zip(packed, plain, strict=True):
        assert p < 1.5 * a + 1e-3


def test_lstm_aten_dtypes_and_export_use_aten(kernel):
    gru = nn.GRU(4, 4, batch_first=True)
    x = torch.randn(2, 3, 4)
    assert fused_gru.applies(gru, x, "auto")
    assert not fused_gru.applies(gru, x, "aten")
    assert not fused_gru.applies(nn.LSTM(4, 4, batch_first=True), x, "fused")
    assert not fused_gru.applies(gru, x.half(), "auto")
    with torch.no_grad():
        assert fused_gru.applies(gru, x, "auto")  # built: inference uses it too


def test_inference_uses_the_kernel_only_where_it_is_built(kernel, monkeypatch, tmp_path):
    gru, x = nn.GRU(4, 4, batch_first=True), torch.randn(2, 3, 4)
    monkeypatch.setattr(fused_gru, "_kernel", None)
    monkeypatch.setattr(fused_gru, "_built", None)
    monkeypatch.setenv("SPEECHSWARM_CACHE", str(tmp_path))  # an empty cache: never built here
    monkeypatch.setattr(fused_gru, "load", lambda log=None: pytest.fail("compiled at inference"))
    with torch.inference_mode():
        assert not fused_gru.applies(gru, x, "auto")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_inference_equals_aten(kernel, dtype, monkeypatch):
    """Transcription with the kernel gives ATen's log-probabilities: to rounding in float64,
    to bf16 precision under autocast (the kernel keeps h in float32), padding included; and
    ONNX export still traces ATen's GRU."""
    model = (
        _model(merge="sum").eval().to(torch.float64 if dtype == torch.float64 else torch.float32)
    )
    feats = torch.randn(3, 60, 40, dtype=torch.double)
    lens = torch.tensor([60, 41, 17])
    calls = []
    real = fused_gru._run_forward
    monkeypatch.setattr(fused_gru, "_run_forward", lambda *a: calls.append(1) or real(*a))
    outs = {}
    for k in ("aten", "auto"):
        model.rnn_kernel = k
        if dtype == torch.float64:
            with torch.inference_mode():
                outs[k] = model(feats, lens)[0]
        else:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                outs[k] = model(feats.float(), lens)[0]
    assert len(calls) == 2  # both GRU layers ran fused, and nothing else did
    mask = torch.arange(outs["aten"].shape[1])[None, :] < model.output_lengths(lens)[:, None]
    diff = (outs["auto"] - outs["aten"]).abs()[mask]
    assert diff.max() < (1e-9 if dtype == torch.float64 else 0.05), diff.max()
    with torch.no_grad():
        monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
        assert not fused_gru.applies(model.rnns[0], feats, "auto")


def test_failed_build_falls_back_under_auto_and_stops_under_fused(monkeypatch, caplog):
    monkeypatch.setattr(fused_gru, "_kernel", None)
    monkeypatch.setattr(fused_gru, "_error", "RuntimeError: no compiler (build folder /x)")
    monkeypatch.setattr(fused_gru, "_warned", False)
    model = _model()
    log = logging.getLogger("test.fused_gru")
    with caplog.at_level(logging.WARNING, logger="test.fused_gru"):
        assert fused_gru.prepare(model, "auto", torch.device("cpu"), log) == "aten"
    assert "training with ATen's GRU: RuntimeError: no compiler" in caplog.text
    assert model.rnn_kernel == "auto"
    feats, lens = torch.randn(2, 30, 40, dtype=torch.double), torch.tensor([30, 20])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # prepare() said it once already, in the run's log
        model(feats, lens)[0].sum().backward()  # trains on ATen's GRU
    monkeypatch.setattr(fused_gru, "_warned", False)
    with pytest.warns(UserWarning, match="fused CPU GRU unavailable"):
        model(feats, lens)  # a model trained without prepare() (the Python API) warns once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(feats, lens)
    with pytest.raises(fused_gru.KernelUnavailable, match="install g\\+\\+ and ninja"):
        fused_gru.prepare(model, "fused", torch.device("cpu"), log)
    with pytest.raises(fused_gru.KernelUnavailable, match="no compiler"):
        model(feats, lens)
    # Models without a GRU, and other devices, never ask for the kernel.
    assert fused_gru.prepare(_model("lstm"), "fused", torch.device("cpu"), log) == "aten"
    assert fused_gru.prepare(model, "fused", torch.device("cuda"), log) == "aten"
    with pytest.raises(ValueError, match="one of auto, fused, aten"):
        fused_gru.prepare(model, "oneDNN", torch.device("cpu"), log)


def test_cache_folder_depends_on_cpu_and_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHSWARM_CACHE", str(tmp_path))
    here = fused_gru.cache_dir()
    assert here.parent == tmp_path / "kernels"
    monkeypatch.setattr(host, "cpu_flags", lambda: "flags : fpu sse2")
    assert fused_gru.cache_dir() != here


def test_build_error_is_kept_with_its_last_line(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    calls = []

    def fail(*args, **kwargs):
        calls.append(kwargs["build_directory"])
        raise RuntimeError("Error building extension:\nfused_gru.cpp:1: error: no compiler")

    monkeypatch.setenv("SPEECHSWARM_CACHE", str(tmp_path))
    monkeypatch.setattr(fused_gru, "_kernel", None)
    monkeypatch.setattr(fused_gru, "_error", None)
    monkeypatch.setattr(cpp_extension, "load", fail)
    for _ in range(2):  # the second call does not try again
        with pytest.raises(fused_gru.KernelUnavailable, match="RuntimeError: fused_gru.cpp:1: err"):
            fused_gru.load()
    assert len(calls) == 1 and calls[0].startswith(str(tmp_path))


def test_auto_takes_the_kernel_measured_faster_here_once(kernel, monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(fused_gru, "choices_path", lambda: tmp_path / "choices.json")
    timings = {"fused": 0.030, "aten": 0.020}
    monkeypatch.setattr(fused_gru, "_time_layer", lambda rnn, dt, n, k, *a, **kw: timings[k])
    log = logging.getLogger("test.fused_gru.choice")
    model = _model()
    caplog.set_level(logging.INFO, logger="test.fused_gru.choice")
    assert fused_gru.prepare(model, "auto", torch.device("cpu"), log, torch.bfloat16) == "aten"
    assert model.rnn_kernel == "aten"  # ATen was faster for this shape here
    assert "RNN kernel: aten for GRU 80->16 x2 in bfloat16" in caplog.text
    assert "fused 30.0 ms, ATen 20.0 ms per layer step (measured now;" in caplog.text
    ((key, saved),) = json.loads((tmp_path / "choices.json").read_text()).items()
    assert saved["kernel"] == "aten" and "| bfloat16 | batch 16 |" in key
    # cached: the next run of this shape is not timed again; another dtype is
    monkeypatch.setattr(fused_gru, "_time_layer", lambda *a: pytest.fail("timed again"))
    assert fused_gru.prepare(_model(), "auto", torch.device("cpu"), log, torch.bfloat16) == "aten"
    assert "(measured 20" in caplog.text
    timings["aten"] = 0.040
    monkeypatch.setattr(fused_gru, "_time_layer", lambda rnn, dt, n, k, *a, **kw: timings[k])
    model = _model()
    assert fused_gru.prepare(model, "auto", torch.device("cpu"), log) == "fused"
    assert model.rnn_kernel == "auto"
    # "fused" insists without timing anything
    monkeypatch.setattr(fused_gru, "_time_layer", lambda *a: pytest.fail("timed"))
    assert fused_gru.prepare(_model(), "fused", torch.device("cpu"), log) == "fused"


def test_timing_a_layer_really_runs_both_kernels(kernel):
    gru = nn.GRU(24, 32, batch_first=True, bidirectional=True)
    before = [p.detach().clone() for p in gru.parameters()]
    for k in ("fused", "aten"):
        seconds = fused_gru._time_layer(gru, torch.bfloat16, 4, k)
        assert 0 < seconds < 5
    assert all(torch.equal(a, b) for a, b in zip(before, gru.parameters(), strict=True))
    assert all(p.grad is None for p in gru.parameters())  # a copy was timed
