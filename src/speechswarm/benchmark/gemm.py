"""Matrix-multiply peak of this machine, measured on the spot: the roofline a training step
is compared against.

    python -c "from speechswarm.benchmark.gemm import gemm_gflops; print(gemm_gflops('bf16'))"

A square (n x n) @ (n x n) product costs 2 n^3 FLOPs. On CPUs with AVX-512 BF16 / AMX, bf16
runs through oneDNN at ~3x the fp32 rate (measured here: ~377 against ~127 GFLOP/s with 2
threads), so bf16 is the honest ceiling for a bf16-autocast step. The number is the best of
`repeats` timed products after one warm-up: a busy machine lowers it, never raises it.
"""

from __future__ import annotations

import time

import torch

from speechswarm.errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gemm_flops(n: int) -> float:
    """FLOPs of one (n x n) @ (n x n) product: n^2 outputs x n multiply-adds x 2."""
    return 2.0 * n**3


def gemm_gflops(
    dtype: str = "bf16",
    *,
    device: str | torch.device = "cpu",
    n: int = 2048,
    repeats: int = 5,
) -> float:
    """Best achieved GFLOP/s of an n x n matmul in `dtype` ("fp32", "bf16", "fp16") on
    `device`, with torch's current thread count. Raises ValueError for an unknown dtype."""
    if dtype not in DTYPES:
        raise UsageError(f"gemm dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - t0)
    # the first product is the warm-up (oneDNN primitive creation, CUDA initialisation)
    return gemm_flops(n) / min(times[1:]) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peaks(device: torch.device, n: int, repeats: int) -> dict[str, float]:
    """Best fp32 and half-precision GEMM GFLOP/s now ("bf16" is fp16 on GPUs without bf16)."""
    half = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    return {
        "fp32": gemm_gflops("fp32", device=device, n=n, repeats=repeats),
        "bf16": gemm_gflops(half, device=device, n=n, repeats=repeats),
    }
