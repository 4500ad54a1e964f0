"""Would a prepacked bf16 weight speed up the GRU's per-step recurrent GEMM on this CPU? A probe.

    .venv/bin/python bench/probe_prepacked_gemm.py [--m 24 --k 256 --n 768] [--rounds 3]

The fused GRU kernel packs W_hh once per layer call only where oneDNN's brgemm can (AMX);
elsewhere each step calls ATen's `mm`. This times, interleaved in rounds on one thread, the
step's product h (M x K) @ W^T (W: N x K) in bf16 through ATen's `mm` (the transposed view
the kernel passes, and a contiguous copy), `F.linear`, fp32 `mm` for scale, and oneDNN's
prepacked linear (`torch.ops.mkldnn._reorder_linear_weight` once, then
`torch.ops.mkldnn._linear_pointwise` per call). Prints microseconds and GFLOP/s per call.
"""

from __future__ import annotations

import argparse
import time

import torch


def time_call(fn, calls: int) -> float:
    """Seconds per call of `fn`, after a warm-up."""
    for _ in range(calls // 20):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=24, help="rows: utterances in the batch")
    ap.add_argument("--k", type=int, default=256, help="hidden size")
    ap.add_argument("--n", type=int, default=768, help="3 x hidden size (the GRU's gates)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    m, k, n = args.m, args.k, args.n
    h = torch.randn(m, k).bfloat16()
    w = torch.randn(n, k).bfloat16()
    w_t, w_tc = w.t(), w.t().contiguous()
    h32, w32 = h.float(), w_tc.float()
    variants = {
        "mm, transposed view": lambda: torch.mm(h, w_t),
        "mm, contiguous W^T": lambda: torch.mm(h, w_tc),
        "F.linear": lambda: torch.nn.functional.linear(h, w),
        "fp32 mm": lambda: torch.mm(h32, w32),
    }
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
        prepacked = lambda: torch.ops.mkldnn._linear_pointwise(h, packed, None, "none", [], "")  # noqa: E731
        torch.testing.assert_close(prepacked(), torch.mm(h, w_t), rtol=2e-2, atol=2e-1)
        variants["oneDNN prepacked linear"] = prepacked
    except (RuntimeError, AttributeError) as e:
        print(f"oneDNN prepacked linear not available here: {e}")
    flop = 2 * m * k * n
    for r in range(args.rounds):
        print(f"round {r + 1}, {m} x {k} @ {k} x {n}, 1 thread")
        for name, fn in variants.items():
            s = time_call(fn, args.calls)
            print(f"  {name:<24} {s * 1e6:7.1f} us  {flop / s / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
