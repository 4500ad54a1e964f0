"""Prototype: a fused CPU GRU layer for training, measured against ATen's (issue 6).

    .venv/bin/pip install ninja                           # torch's C++ JIT builds with it
    .venv/bin/python bench/fused_gru/fused_gru.py check   # gradients against nn.GRU, float64
    .venv/bin/python bench/fused_gru/fused_gru.py layer   # one BiGRU layer, fwd + bwd
    .venv/bin/python bench/fused_gru/fused_gru.py step    # `small` training steps, both kernels

Not part of the package (see bench/RESULTS.md, "A fused GRU recurrence"): the first use
compiles `gru.cpp` (~35 s with g++ 12), which needs a compiler and ninja on the user's
machine. What `gru.cpp` does differently from ATen's CPU GRU under autocast:
- the input projection of all T steps is one GEMM (ATen does that too);
- each step is one bf16 GEMM (h W_hh^T) and one vectorised pass of fp32 gate arithmetic
  (ATen: ~12 tensor ops per step, each a kernel launch with its own allocation, in bf16,
  and an autograd node per op);
- the backward runs the recurrence with one GEMM per step (dh W_hh) and computes the weight
  gradients after the loop as three large GEMMs over all T x N rows (ATen: a rank-N update
  and a 786k-element add per step), and the bias gradients inside the fused pass;
- the two directions of a bidirectional layer run at the same time, one per thread, each with
  single-thread GEMMs: at batch 24 a 1-thread bf16 GEMM reaches ~76 % of one core's peak, a
  2-thread one ~56 % of two.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.cpp_extension import load

from speechswarm import model as _model

HERE = Path(__file__).resolve().parent
_ext = None
_aten_run_rnn_padded = _model._run_rnn_padded  # `step` swaps the model's CPU RNN path


def ext():
    global _ext
    if _ext is None:
        build = HERE / "build"
        build.mkdir(exist_ok=True)
        _ext = load(
            "speechswarm_fused_gru",
            [str(HERE / "gru.cpp")],
            build_directory=str(build),
            extra_cflags=["-O3", "-march=native", "-ffast-math", "-fopenmp"],
        )
    return _ext


class FusedGRU(torch.autograd.Function):
    """One GRU layer, one or two directions: forward(cd, x, x_rev or None, *weights) ->
    (out, out_rev or None), batch-first (N, T, H) in the compute dtype `cd`. `x_rev` is the
    input already reversed in time (per utterance, by the caller); weights per direction:
    w_ih, w_hh, b_ih, b_hh."""

    @staticmethod
    def forward(ctx, cd, x, x_rev, *w):
        xs = [x.detach().to(cd).transpose(0, 1).contiguous()]
        if x_rev is not None:
            xs.append(x_rev.detach().to(cd).transpose(0, 1).contiguous())
        d = len(xs)
        wi, wh, bi, bh = ([w[4 * i + k].detach().to(cd) for i in range(d)] for k in range(4))
        res = ext().forward(xs, wi, wh, bi, bh)
        hs, saved = res[0::2], res[1::2]
        ctx.save_for_backward(*xs, *wi, *wh, *hs, *saved)
        ctx.d, ctx.x_dtype, ctx.w_dtypes = d, x.dtype, [t.dtype for t in w]
        outs = [h[1:].transpose(0, 1) for h in hs]
        return outs[0], (outs[1] if d == 2 else None)

    @staticmethod
    def backward(ctx, *douts):
        d, s = ctx.d, ctx.saved_tensors
        xs, wi, wh, hs, saved = (list(s[k * d : (k + 1) * d]) for k in range(5))
        douts = [g.transpose(0, 1) for g in douts[:d]]
        g = ext().backward(douts, xs, wi, wh, hs, saved)
        dx = [g[5 * i].transpose(0, 1).to(ctx.x_dtype) for i in range(d)]
        dw = [
            t.to(dt)
            for t, dt in zip(
                (g[5 * i + k] for i in range(d) for k in (1, 2, 3, 4)), ctx.w_dtypes, strict=True
            )
        ]
        return (None, dx[0], dx[1] if d == 2 else None, *dw)


def gru_layer(rnn: nn.GRU, x, x_rev, cd):
    ws = [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0]
    if x_rev is not None:
        ws += [
            rnn.weight_ih_l0_reverse,
            rnn.weight_hh_l0_reverse,
            rnn.bias_ih_l0_reverse,
            rnn.bias_hh_l0_reverse,
        ]
    return FusedGRU.apply(cd, x, x_rev, *ws)


def check() -> None:
    """Outputs and all gradients against nn.GRU in float64 (the kernel keeps h in float32)."""
    torch.manual_seed(0)
    for bidirectional in (False, True):
        g = nn.GRU(5, 4, batch_first=True, bidirectional=bidirectional).double()
        x = torch.randn(3, 7, 5, dtype=torch.double, requires_grad=True)
        ref, _ = g(x)
        weight = torch.arange(ref.numel()).view_as(ref).sin()
        (ref * weight).sum().backward()
        want = [x.grad.clone()] + [p.grad.clone() for p in g.parameters()]
        x.grad = None
        g.zero_grad()
        f, b = gru_layer(g, x, x.flip(1) if bidirectional else None, torch.double)
        out = f if b is None else torch.cat([f, b.flip(1)], -1)
        (out * weight).sum().backward()
        got = [x.grad] + [p.grad for p in g.parameters()]
        errs = [float((a - b).abs().max()) for a, b in zip(got, want, strict=True)]
        print(
            f"bidirectional={bidirectional}: output {float((out - ref).abs().max()):.1e}, gradients max {max(errs):.1e}"
        )
        assert max(errs) < 1e-6 and float((out - ref).abs().max()) < 1e-6


def layer(T=635, D=512, H=512, rounds=3) -> None:
    """One BiGRU layer fwd + bwd under bf16, ATen (autocast) against fused, interleaved."""
    for n in (24, 48):
        torch.manual_seed(0)
        g = nn.GRU(D, H, batch_first=True, bidirectional=True)
        x = torch.randn(n, T, D, requires_grad=True)
        best = {}
        for name in ["aten", "fused"] * rounds:
            t0 = time.perf_counter()
            if name == "aten":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y, _ = g(x)
            else:
                f, b = gru_layer(g, x, x.flip(1), torch.bfloat16)
                y = torch.cat([f, b.flip(1)], -1)
            y.float().sum().backward()
            best[name] = min(best.get(name, 1e9), time.perf_counter() - t0)
        flops = 2 * 3 * 2 * T * n * 3 * H * (D + H)
        print(
            f"T={T} N={n} D={D} H={H}: "
            + ", ".join(f"{k} {v:.3f} s ({flops / v / 1e9:.0f} GFLOP/s)" for k, v in best.items())
            + f"; fused {best['aten'] / best['fused']:.2f}x",
            flush=True,
        )


def _fused_run_rnn_padded(rnn, twin, x, mask):
    """Drop-in for model._run_rnn_padded while training a GRU under bf16 autocast on CPU."""
    if not (
        isinstance(rnn, nn.GRU) and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
    ):
        return _aten_run_rnn_padded(rnn, twin, x, mask)
    cd = torch.get_autocast_dtype("cpu")
    x_rev = rev = None
    if rnn.bidirectional:
        t = torch.arange(x.shape[1], device=x.device)[None, :]
        lens = mask.sum(1, keepdim=True)
        rev = torch.where(t < lens, lens - 1 - t, t)
        x_rev = x.gather(1, rev[..., None].expand_as(x))
    with torch.autocast("cpu", enabled=False):
        out, back = gru_layer(rnn, x, x_rev, cd)
    if back is not None:
        out = torch.cat([out, back.gather(1, rev[..., None].expand_as(back))], dim=-1)
    return out.masked_fill(~mask[..., None], 0.0)


def step(rounds=3, steps=2) -> None:
    """`small` training steps of the real loop (bench train's corpus and settings), the ATen
    GRU and the fused one in alternating blocks; audio s/s and share of the bf16 GEMM peak."""
    import tempfile

    from speechswarm.benchmark.corpus import librispeech_like_durations, write_bench_corpus
    from speechswarm.benchmark.gemm import gemm_peaks
    from speechswarm.benchmark.train import BENCH_EPOCH, bench_overrides
    from speechswarm.config import load_config
    from speechswarm.train.loop import TrainState, train_one_epoch
    from speechswarm.train.setup import setup_run

    tmp = Path(tempfile.mkdtemp(prefix="fused-gru-"))
    manifest = write_bench_corpus(tmp / "data", librispeech_like_durations(400, seed=0), 16000)
    run = setup_run(
        load_config("small", bench_overrides(manifest, tmp / "run", "cpu")), progress=False
    )
    state = TrainState(epoch=BENCH_EPOCH)
    audio = {"aten": 0.0, "fused": 0.0}
    secs = dict(audio)
    loader = run.loader

    class Count:
        name = "aten"

        def __iter__(self):
            for batch in loader:
                audio[self.name] += float(batch.wave_lens.sum()) / run.sample_rate
                yield batch

    counter = Count()
    run.loader = counter

    def block(name, n):
        _model._run_rnn_padded = _fused_run_rnn_padded if name == "fused" else _aten_run_rnn_padded
        counter.name = name
        stop = state.step + n
        t0 = time.perf_counter()
        train_one_epoch(
            run, state, t0, lambda s: s.step >= stop, rng_to_restore=None, progress=False
        )
        return time.perf_counter() - t0

    block("fused", 1)  # compile + warm-up
    block("aten", 1)
    audio.update(aten=0.0, fused=0.0)
    peak = gemm_peaks(run.device, 2048, 5)["bf16"]
    flops = 3 * run.model.flops_per_second(100.0)
    for r in range(rounds):
        for name in ("aten", "fused"):
            before = audio[name]
            dt = block(name, steps)
            secs[name] += dt
            print(f"round {r + 1} {name}: {(audio[name] - before) / dt:.1f} audio s/s", flush=True)
    peak = max(peak, gemm_peaks(run.device, 2048, 5)["bf16"])
    for name in ("aten", "fused"):
        speed = audio[name] / secs[name]
        print(
            f"{name}: {speed:.1f} audio s/s, {speed * flops / 1e9:.0f} GFLOP/s, {speed * flops / 1e9 / peak:.1%} of the bf16 peak ({peak:.0f} GFLOP/s)"
        )
    print(f"fused / aten: {audio['fused'] / secs['fused'] / (audio['aten'] / secs['aten']):.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(2)
    {"check": check, "layer": layer, "step": step}[sys.argv[1] if len(sys.argv) > 1 else "check"]()
