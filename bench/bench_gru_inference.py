"""GRU inference: ATen's GRU against the fused kernel, side by side in one process.

    PYTHONPATH=src .venv/bin/python bench/bench_gru_inference.py

`tiny` with GRUs (3 x BiGRU 256) and `small` (5 x BiGRU 512), untrained (speed does not depend
on the weights), one 3.5-s utterance or a batch, bf16 and fp32, 2 and 1 torch threads. Each
setting runs both kernels in turn, 3 times, after a warm-up; the best time of each is shown.
Needs the kernel built (a GRU training run on this machine builds it; see fused_gru.py).
"""

import time

import numpy as np
import torch

from speechswarm import fused_gru
from speechswarm.benchmark.transcribe import untrained_checkpoint
from speechswarm.inference import Recognizer


def main() -> None:
    if not fused_gru.built():
        fused_gru.load()  # first use: ~40 s

    rng = np.random.default_rng(0)
    for preset in ["tiny", "small"]:
        ck = untrained_checkpoint(preset, ["model.rnn_type=gru"] if preset == "tiny" else [])
        for prec in ["bf16", "fp32"]:
            asr = Recognizer(ck, device="cpu", precision=prec)
            for th in [2, 1]:
                torch.set_num_threads(th)
                for B in [1, 4] if preset == "tiny" else [1, 8]:
                    waves = [
                        rng.standard_normal(int(16000 * 3.5)).astype(np.float32) * 0.1
                        for _ in range(B)
                    ]
                    res = {}
                    for k in ["aten", "auto"] * 1:
                        asr.model.rnn_kernel = k
                        asr.recognize_batch(waves)
                    for _ in range(3):
                        for k in ["aten", "auto"]:
                            asr.model.rnn_kernel = k
                            t = time.perf_counter()
                            asr.recognize_batch(waves)
                            res.setdefault(k, []).append(time.perf_counter() - t)
                    a, f = min(res["aten"]) * 1000, min(res["auto"]) * 1000
                    print(
                        f"{preset} {prec} threads={th} B={B}: aten {a:.1f} ms, fused {f:.1f} ms, {a / f:.2f}x",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
