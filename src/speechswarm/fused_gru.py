"""Fused CPU GRU for training: one C++ kernel per layer instead of ATen's per-step graph.

    speechswarm train --config small train.rnn_kernel=fused   # default "auto"; "aten" opts out
    python bench/fused_gru.py layer                           # one BiGRU layer, both kernels

`train.rnn_kernel=auto` (the default) trains GRU layers on the CPU with this kernel wherever
it builds, and with ATen's GRU elsewhere; CUDA and ONNX export always use ATen's. Inference
(no autograd: transcribe, eval, serve, dev evaluations) uses the kernel where it is built
already, and ATen's GRU otherwise, so transcribing never waits for a compile (bf16 on AMX:
`tiny` with GRUs transcribes 5x faster with it, bench/RESULTS.md). The kernel
(`csrc/fused_gru.cpp`) is compiled at first use in training, ~40 s with g++ and ninja, and
cached per CPU and torch version under $SPEECHSWARM_CACHE or ~/.cache/speechswarm. Where the
build fails, "auto" says why in one line and trains with ATen; "fused" stops with the
compiler's message.

What it does differently from ATen's CPU GRU under bf16 autocast (measured in
bench/RESULTS.md, "The fused GRU in the package": a BiGRU 512 layer at batch 24 runs
1.6-1.8x ATen's, a `small` training step 1.36x):
- each step is one GEMM (h W_hh^T) into a preallocated buffer and one vectorised pass of
  float32 gate arithmetic; ATen runs ~12 tensor ops per step, each its own kernel, allocation
  and autograd node, in bf16;
- on CPUs with AMX (bf16, hidden size a multiple of 32, <= 2 threads) those per-step GEMMs
  run on oneDNN's brgemm micro-kernel with W_hh packed into AMX's layout once per layer call,
  results in float32 (`packed_recurrent_gemm`); ATen's bf16 mm re-packs W_hh at every step,
  which at batch ~24 costs more than the multiply (bench/RESULTS.md, "On AMX");
- the hidden state is carried in float32 (ATen: bf16), so results differ from ATen's in the
  last bf16 bits; in float64 they equal nn.GRU's to rounding (tests/test_fused_gru.py);
- sigmoid and tanh take their arguments clamped to +-80 / +-20, where they are 0 or 1 to the
  last bit of float: under -ffast-math the vectorised exp turned an overflow into NaN;
- the layer reads batch-first input once: both directions' input projections are one GEMM,
  the reverse direction walks each utterance backwards within its length by index, and the
  gate pass writes the output, zero on padding, straight into (N, T, 2H); the ATen path
  gathers a reversed copy of the input and of the output and masks the padding afterwards
  (five copies of a layer's activations, 1.2x a `small` step on AMX, bench/RESULTS.md);
- the backward runs the recurrence with one GEMM per step (dh W_hh), sums the bias gradients
  inside the fused pass and computes the weight gradients after the loop as three large
  GEMMs over all T x N rows (ATen: a rank-N update and a 3H x H add per step);
- on <= 2 threads the two directions of a layer run at once, one per thread with
  single-threaded GEMMs (a 1-thread bf16 GEMM at batch 24 reached ~76 % of a core's peak, a
  2-thread one 56-71 % of two cores'); on more threads one after the other, each GEMM on
  all threads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from speechswarm import host
from speechswarm.atomic import atomic_open

SOURCE = Path(__file__).parent / "csrc" / "fused_gru.cpp"
CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
KERNELS = ("auto", "fused", "aten")
_DTYPES = (torch.bfloat16, torch.float32, torch.float64)  # those csrc/fused_gru.cpp dispatches

# The per-step recurrent GEMMs on oneDNN's brgemm micro-kernel with the weight packed once per
# layer call, where the CPU has AMX and the hidden size is a multiple of 32; elsewhere (and
# with this False, for side-by-side benchmarks) ATen's mm, which re-packs it at every step.
packed_recurrent_gemm = True

_kernel: ModuleType | None = None
_error: str | None = None  # why the build failed, once it has
_warned = False  # "auto" warns about a failed build once per process
_built: bool | None = None  # inference: is the kernel built on disk (None: not looked yet)


class KernelUnavailable(RuntimeError):
    """The fused kernel could not be built or loaded; the message says why."""


def cache_dir() -> Path:
    """Build folder of this source, compiler flags, torch (version and install: two venvs
    sharing one folder would rebuild in turn, their include paths differ), Python and CPU: a
    home folder shared by machines with other CPUs (a cluster's NFS) never hands one a
    foreign binary."""
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS).encode(), torch.__version__.encode()):
        key.update(part)
    key.update(str(Path(torch.__file__).resolve().parent).encode())
    key.update(f"{sys.version_info[:2]} {platform.machine()} {host.cpu_flags()}".encode())
    return host.cache_root() / "kernels" / f"fused_gru_{key.hexdigest()[:16]}"


def load(log=None) -> ModuleType:
    """The compiled kernel, built on first use in this process (and cached on disk);
    raises KernelUnavailable with the reason where it cannot be built."""
    global _kernel, _error
    if _kernel is not None:
        return _kernel
    if _error is not None:
        raise KernelUnavailable(_error)
    build = cache_dir()
    try:
        from torch.utils import cpp_extension

        _put_ninja_on_path()
        build.mkdir(parents=True, exist_ok=True)
        fresh = not any(build.glob("*.so"))
        if fresh and log is not None:
            log.info(f"compiling the fused CPU GRU kernel (first use, ~40 s) in {build}")
        t0 = time.perf_counter()
        _kernel = cpp_extension.load(
            build.name, [str(SOURCE)], build_directory=str(build), extra_cflags=CFLAGS
        )
        if fresh and log is not None:
            log.info(f"fused CPU GRU kernel compiled in {time.perf_counter() - t0:.0f} s")
    except Exception as e:  # a missing compiler, ninja or header, or a compile error
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        _error = f"{type(e).__name__}: {lines[-1] if lines else e} (build folder {build})"
        raise KernelUnavailable(_error) from e
    return _kernel


def built() -> bool:
    """Whether the kernel is loaded, or built on disk for this machine and loads now (no
    compile: a folder without a built library answers False)."""
    global _built
    if _kernel is not None:
        return True
    if _built is None:
        _built = _error is None and any(cache_dir().glob("*.so"))
        if _built:
            try:
                load()
            except KernelUnavailable:
                _built = False
    return _built


def _put_ninja_on_path() -> None:
    """torch's JIT build runs `ninja`; the pip package's binary is on PATH only inside an
    activated venv, so add its folder for `.venv/bin/speechswarm` run from outside."""
    try:
        import ninja
    except ImportError:
        return
    bin_dir = str(ninja.BIN_DIR)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def prepare(
    model: nn.Module,
    kernel: str,
    device: torch.device,
    log,
    dtype: torch.dtype | None = None,
    batch: int = 16,
) -> str:
    """Set `model.rnn_kernel` for training and build the kernel now if the model will use it,
    so a first-use compile is logged before the first step, not hidden in it. Under "auto"
    the faster of the two kernels for this model on this machine is used (`measured_choice`,
    timed once and cached; `dtype`: the autocast dtype, None for float32; `batch`: utterances
    per step). Returns the kernel the recurrent layers will train with: "fused" or "aten"."""
    if kernel not in KERNELS:
        raise ValueError(f"train.rnn_kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    model.rnn_kernel = kernel
    if kernel == "aten" or device.type != "cpu" or not any_gru(model):
        return "aten"
    global _warned
    try:
        load(log)
    except KernelUnavailable as e:
        if kernel == "fused":
            raise KernelUnavailable(
                f"train.rnn_kernel=fused, but the kernel does not build: {e}; install g++ and "
                "ninja (pip install ninja), or use train.rnn_kernel=auto"
            ) from e
        log.warning(f"fused CPU GRU unavailable, training with ATen's GRU: {e}")
        _warned = True  # said once, in the run's log
        return "aten"
    if kernel == "fused":
        return "fused"
    i = next(i for i, m in enumerate(model.rnns) if isinstance(m, nn.GRU))
    aten = getattr(model, "aten_layer", None)  # DeepSpeech2: ATen's path as the model runs it
    choice = measured_choice(
        model.rnns[i], dtype or torch.float32, batch, log, aten and partial(aten, i)
    )
    model.rnn_kernel = "auto" if choice == "fused" else "aten"
    return choice


def choices_path() -> Path:
    """Where measured kernel choices are kept: beside the built kernels."""
    return cache_dir().parent / "rnn_kernel_choices.json"


def measured_choice(rnn: nn.GRU, dtype: torch.dtype, batch: int, log, aten=None) -> str:
    """The kernel, "fused" or "aten", that trains one layer shaped like `rnn` (forward and
    backward, `batch` utterances of 100 frames) faster on this machine in `dtype`, with this
    many threads; ATen's as the model runs it (`recurrence.run_rnn_padded` with `twin`, the
    model's template of one direction; nn.GRU itself without one).
    Timed once per CPU, torch version, kernel source, shape, dtype and thread count, kept in
    `choices_path()`; the run's log says which and why."""
    threads = torch.get_num_threads()
    shape = f"GRU {rnn.input_size}->{rnn.hidden_size}{' x2' if rnn.bidirectional else ''}"
    key = (  # the build's folder names the kernel's source: a changed kernel is timed anew
        f"{host.cpu_model()} | torch {torch.__version__} | {cache_dir().name} | {shape} | "
        f"{str(dtype).removeprefix('torch.')} | batch {batch} | {threads} threads"
    )
    path = choices_path()
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        choices = {}
    found = choices.get(key)
    if found is None:
        fused = _time_layer(rnn, dtype, batch, "fused")
        aten = _time_layer(rnn, dtype, batch, "aten", aten, give_up=10 * fused)
        found = {
            "kernel": "fused" if fused <= aten else "aten",
            "fused_ms": round(fused * 1000, 2),
            "aten_ms": round(aten * 1000, 2),
            "measured": time.strftime("%Y-%m-%d %H:%M"),
        }
        choices[key] = found
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(path, "w") as f:
                json.dump(choices, f, indent=1)
        except OSError as e:  # a read-only cache: choose now, measure again next time
            log.warning(f"cannot keep the RNN kernel choice in {path}: {e}")
        how = "measured now"
    else:
        how = f"measured {found['measured']}"
    log.info(
        f"RNN kernel: {found['kernel']} for {shape} in {str(dtype).removeprefix('torch.')} on "
        f"{threads} thread(s): fused {found['fused_ms']:.1f} ms, ATen {found['aten_ms']:.1f} "
        f"ms per layer step ({how}; {path})"
    )
    return found["kernel"]


def _time_layer(
    rnn: nn.GRU, dtype: torch.dtype, batch: int, kernel: str, aten=None, give_up: float = 1e9
) -> float:
    """Best of 2 (after a warm-up) seconds of one training pass of a copy of `rnn` on random
    input of 100 frames, with `kernel`; a warm-up slower than `give_up` seconds is the answer
    (a clear loser need not be timed to the millisecond)."""
    g = copy.deepcopy(rnn).float()
    x = torch.randn(batch, 100, rnn.input_size, requires_grad=True)
    mask = torch.ones(batch, 100, dtype=torch.bool)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            if kernel == "fused":
                out = gru_layer(g, x, None, dtype)
            elif aten is not None:
                out = aten(g, x, mask)
            else:
                out = g(x)[0]
        out.float().square().mean().backward()
        times.append(time.perf_counter() - start)
        g.zero_grad()
        x.grad = None
        if times[0] > give_up:
            return times[0]
    return min(times[1:])


def any_gru(model: nn.Module) -> bool:
    return any(isinstance(m, nn.GRU) for m in model.modules())


def applies(rnn: nn.Module, x: torch.Tensor, kernel: str) -> bool:
    """Whether this call runs a GRU on the CPU in a dtype the kernel has, and the kernel
    loads (under "auto" a failed build warns once, then ATen runs). Inference (no autograd)
    uses it only where it is built already: transcribing never waits for a compile. ONNX
    export and tracing always see ATen's GRU."""
    if kernel == "aten" or not isinstance(rnn, nn.GRU) or x.device.type != "cpu":
        return False
    if compute_dtype(x) not in _DTYPES or torch.jit.is_tracing():
        return False
    if torch.onnx.is_in_onnx_export():
        return False
    if not torch.is_grad_enabled():
        return built()
    global _warned
    try:
        load()
    except KernelUnavailable as e:
        if kernel == "fused":
            raise
        if not _warned:
            _warned = True
            warnings.warn(f"fused CPU GRU unavailable, using ATen's: {e}", stacklevel=2)
        return False
    return True


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


class _FusedGRU(torch.autograd.Function):
    """One GRU layer, one or two directions: forward(cd, x, lens, sum, *weights) -> out
    (N, T, directions * H), or with `sum` (N, T, H) the directions' sum, in the compute
    dtype `cd`, batch-first, zero on padding; the reverse direction runs each utterance
    backwards within its length (lens (N,) int64 on the CPU). Weights per direction:
    w_ih (3H, In), w_hh (3H, H), b_ih, b_hh (3H)."""

    @staticmethod
    def forward(ctx, cd, x, lens, sum_directions, *w):
        xc, wi, wh, out, hs, saved, parallel, packed = _run_forward(cd, x, lens, sum_directions, w)
        ctx.save_for_backward(xc, lens, wi, *wh, *hs, *saved)
        ctx.d, ctx.parallel, ctx.packed, ctx.x_dtype = len(wh), parallel, packed, x.dtype
        ctx.w_dtypes = [t.dtype for t in w]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        d, (xc, lens, wi, *rest) = ctx.d, ctx.saved_tensors
        wh, hs, saved = rest[:d], rest[d : 2 * d], rest[2 * d :]
        g = load().backward(dout, xc, lens, wi, wh, hs, saved, ctx.parallel, ctx.packed)
        dx, dwi, dbi, dhh = g[0], g[1].chunk(d), g[2].chunk(d), g[3:]
        dws = (t for i in range(d) for t in (dwi[i], dhh[2 * i], dbi[i], dhh[2 * i + 1]))
        dw = [
            t.to(dt, memory_format=torch.contiguous_format)
            for t, dt in zip(dws, ctx.w_dtypes, strict=True)
        ]
        return (None, dx.to(ctx.x_dtype), None, None, *dw)


def _run_forward(cd, x, lens, sum_directions, w):
    """The kernel's forward pass: (x, w_ih, w_hh, out, hs, saved, parallel, packed), x and
    w_ih (both directions' stacked) as the kernel read them."""
    d = len(w) // 4
    xc = x.detach().to(cd).contiguous()
    wi = torch.cat([w[4 * i].detach().to(cd) for i in range(d)])
    wh = [w[4 * i + 1].detach().to(cd) for i in range(d)]
    bi, bh = ([w[4 * i + k].detach() for i in range(d)] for k in (2, 3))  # added in float
    parallel = torch.get_num_threads() <= 2
    packed = packed_recurrent_gemm and parallel  # single-threaded GEMMs: one per direction
    res = load().forward(xc, lens, wi, bi, wh, bh, parallel, packed, sum_directions)
    out, hs, saved = res[0], res[1::2], res[2::2]  # hs (T + 1, N, H) from h_0 = 0; (T, N, 4H)
    # The gates clamp their arguments, which under -ffast-math turns NaN into a bound: an
    # utterance with a non-finite input would come out finite, and the loop would train on it.
    bad = ~torch.isfinite(xc).flatten(1).all(1)
    if bad.any():
        out[bad] = float("nan")
    return xc, wi, wh, out, hs, saved, parallel, packed


def gru_layer(
    rnn: nn.GRU,
    x: torch.Tensor,
    lens: torch.Tensor | None,
    cd: torch.dtype,
    sum_directions: bool = False,
) -> torch.Tensor:
    """`rnn`'s one layer on x (N, T, In) from zero initial states: (N, T, directions * H) in
    dtype `cd`, zero past each utterance's length (lens (N,) int; None: all T frames); with
    `sum_directions`, (N, T, H): the two directions' sum. The reverse direction runs each
    utterance backwards within its length, as packing would."""
    if rnn.num_layers != 1 or not rnn.bias or not rnn.batch_first:
        raise ValueError("the fused GRU runs one-layer, batch-first GRUs with biases")
    n, t = x.shape[:2]
    lens = torch.full((n,), t) if lens is None else lens.to("cpu", torch.int64).contiguous()
    ws = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    if rnn.bidirectional:
        ws += [
            rnn.weight_ih_l0_reverse,
            rnn.weight_hh_l0_reverse,
            rnn.bias_ih_l0_reverse,
            rnn.bias_hh_l0_reverse,
        ]
    if not torch.is_grad_enabled():  # inference: nothing kept for a backward pass
        return _run_forward(cd, x, lens, sum_directions, ws)[3]
    return _FusedGRU.apply(cd, x, lens, sum_directions, *ws)
