"""The fused CPU GRU (speechswarm/fused_gru.py) against ATen's, side by side.

    .venv/bin/python bench/fused_gru.py check   # outputs and gradients against nn.GRU, float64
    .venv/bin/python bench/fused_gru.py layer   # one BiGRU 512 layer, fwd + bwd, bf16
    .venv/bin/python bench/fused_gru.py step    # `small` training steps of the real loop

`layer` and `step` interleave the two kernels (`model.rnn_kernel` "aten" / "fused") in one
process, so their ratio is measured under the same machine load. Results: bench/RESULTS.md,
"A fused GRU recurrence".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

from speechswarm import fused_gru


def check() -> None:
    """Outputs and all gradients against nn.GRU in float64 (the kernel then computes in it)."""
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
        out = fused_gru.gru_layer(g, x, None, torch.double)
        (out * weight).sum().backward()
        got = [x.grad] + [p.grad for p in g.parameters()]
        errs = [float((a - b).abs().max()) for a, b in zip(got, want, strict=True)]
        print(
            f"bidirectional={bidirectional}: output {float((out - ref).abs().max()):.1e}, gradients max {max(errs):.1e}"
        )
        assert max(errs) < 1e-10 and float((out - ref).abs().max()) < 1e-10


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
                y = fused_gru.gru_layer(g, x, None, torch.bfloat16)
            y.float().sum().backward()
            best[name] = min(best.get(name, 1e9), time.perf_counter() - t0)
        flops = 2 * 3 * 2 * T * n * 3 * H * (D + H)
        print(
            f"T={T} N={n} D={D} H={H}: "
            + ", ".join(f"{k} {v:.3f} s ({flops / v / 1e9:.0f} GFLOP/s)" for k, v in best.items())
            + f"; fused {best['aten'] / best['fused']:.2f}x",
            flush=True,
        )


def step(rounds=3, steps=2) -> None:
    """`small` training steps of the real loop (bench train's corpus and settings), the ATen
    GRU and the fused one in alternating blocks; audio s/s and share of the bf16 GEMM peak."""
    import tempfile

    from speechswarm.benchmark.corpus import librispeech_like_durations, write_bench_corpus
    from speechswarm.benchmark.gemm import gemm_peaks
    from speechswarm.benchmark.train import BENCH_EPOCH, bench_overrides
    from speechswarm.config import load_config
    from speechswarm.train.assemble import build_run
    from speechswarm.train.loop import TrainState, train_one_epoch

    tmp = Path(tempfile.mkdtemp(prefix="fused-gru-"))
    manifest = write_bench_corpus(tmp / "data", librispeech_like_durations(400, seed=0), 16000)
    run = build_run(
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
        run.model.rnn_kernel = name
        counter.name = name
        stop = state.step + n
        t0 = time.perf_counter()
        train_one_epoch(
            run, state, lambda s: "interrupted" if s.step >= stop else "", progress=False
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
