"""Where a DeepSpeech2 training step spends its time on this CPU, and what the alternatives cost.

    .venv/bin/python bench/bench_rnn.py                      # tiny and small, ~5 min on 2 cores
    .venv/bin/python bench/bench_rnn.py --presets tiny --repeats 5 --json

Each variant is one forward + CTC-free backward (sum of the log-probs) of a whole DeepSpeech2
model on random features, batch `--batch` x `--seconds` s (100 frames/s, 161 bins, lengths
spread over the last 10 % so the padded-RNN path has real padding to handle). Variants are
measured round-robin, `--repeats` rounds after one warm-up round, and each keeps its best
time, so a burst of load from elsewhere hurts one sample, not one variant. Columns: seconds
per step, audio seconds per second, achieved GFLOP/s from the analytic FLOPs
(`model.flops_per_second()`, training = 3 x forward), and speed relative to the first variant
(the preset's model section from src/speechswarm/configs/ with GRU layers, bf16 autocast,
padded RNN path, torch's threads).

Variants (model code unchanged; only arguments, attributes and torch settings differ):
- precision: fp32; bf16 autocast (what `train.precision=auto` does); bf16 weights (the whole
  model and its input cast to bf16, no autocast: no fp32 master copy, so not a training
  recipe as is, but the ceiling of pure bf16 compute).
- recurrent path: `rnn_packing = "packed"` (PackedSequence) against the default padded path.
- cell: LSTM of the same width (4 gates instead of 3: 4/3 of the FLOPs), with oneDNN's LSTM
  kernel (torch's CPU default for LSTM) and with oneDNN disabled (`torch.backends.mkldnn`);
  a plain tanh RNN (1 gate) as the floor.
- threads: 1 instead of torch's default (the machine's cores).
- conv front-end: only the conv layers, timed alone, for the preset's stack and a cheaper
  stack (`CHEAP_CONV`: 16 channels and frequency stride 4 in layer 2).

Numbers from a shared machine are lower bounds; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable

import torch

from speechswarm.config import load_config
from speechswarm.model import DeepSpeech2

NUM_FEATURES, VOCAB = 161, 29
# A cheaper conv front-end than the presets': the second layer has 16 channels and strides
# frequency by 4, so the first recurrent layer's input is 16 x 21 = 336 wide, not 1312.
CHEAP_CONV = {
    "conv_channels": (32, 16),
    "conv_kernels": ((41, 11), (21, 11)),
    "conv_strides": ((2, 2), (4, 1)),
}


def make_batch(batch: int, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """feats (N, T, 161) float32, feat_lens (N,) int64 spread over [0.9 T, T] frames."""
    gen = torch.Generator().manual_seed(0)
    t = int(seconds * 100)
    feats = torch.randn(batch, t, NUM_FEATURES, generator=gen)
    lens = torch.linspace(0.9 * t, t, batch).round().to(torch.int64)
    return feats, lens


class Variant:
    """One model + setting; `step()` runs forward and backward once and returns seconds."""

    def __init__(self, name: str, preset: str, **kw):
        self.name, self.preset = name, preset
        self.threads = kw.pop("threads", None)
        self.precision = kw.pop("precision", "bf16")
        self.packing = kw.pop("packing", "padded")
        self.mkldnn = kw.pop("mkldnn", True)
        self.conv_only = kw.pop("conv_only", False)
        torch.manual_seed(0)
        preset_model = dataclasses.asdict(load_config(preset).model)
        self.model = DeepSpeech2(NUM_FEATURES, VOCAB, **{**preset_model, **kw})
        self.model.rnn_packing = self.packing
        if self.precision == "bf16-weights":
            self.model.to(torch.bfloat16)
        self.model.train()
        self.flops = 3 * self.model.flops_per_second()
        if self.conv_only:  # the conv stack's share of the analytic FLOPs
            self.flops = 3 * (self.model.flops_per_second() - _rnn_and_head_flops(self.model))

    def step(self, feats: torch.Tensor, lens: torch.Tensor) -> float:
        threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.backends.mkldnn.flags(enabled=self.mkldnn), self._autocast():
                x = feats.to(torch.bfloat16) if self.precision == "bf16-weights" else feats
                t0 = time.perf_counter()
                if self.conv_only:
                    out = _conv_forward(self.model, x)
                else:
                    out, _ = self.model(x, lens)
                out.float().sum().backward()
                seconds = time.perf_counter() - t0
        finally:
            torch.set_num_threads(threads)
        self.model.zero_grad(set_to_none=True)
        return seconds

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _conv_forward(model: DeepSpeech2, feats: torch.Tensor) -> torch.Tensor:
    x = feats.transpose(1, 2).unsqueeze(1)  # (N, 1, F, T)
    for block in model.conv:
        x = block(x)  # (N, C, F', T')
    return x


def _rnn_and_head_flops(model: DeepSpeech2) -> float:
    """Forward FLOPs per audio second of the recurrent layers and the classifier, as
    `DeepSpeech2.flops_per_second` counts them; the rest of the model's count is the convs."""
    s = model.settings()
    gates = {"gru": 3, "lstm": 4, "rnn": 1}[s["rnn_type"]]
    fps = 100.0 / model.time_reduction
    h, dirs = s["rnn_hidden"], 2 if s["bidirectional"] else 1
    total = sum(2.0 * gates * (r.input_size * h + h * h) * dirs * fps for r in model.rnns)
    return total + 2.0 * model.classifier.in_features * s["vocab_size"] * fps


def variants(preset: str) -> list[Variant]:
    return [
        Variant("GRU, bf16 autocast", preset, rnn_type="gru"),
        Variant("GRU, fp32", preset, rnn_type="gru", precision="fp32"),
        Variant("GRU, bf16 weights", preset, rnn_type="gru", precision="bf16-weights"),
        Variant("GRU, packed sequences", preset, rnn_type="gru", packing="packed"),
        Variant("GRU, 1 thread", preset, rnn_type="gru", threads=1),
        Variant("LSTM, bf16 autocast", preset, rnn_type="lstm"),
        Variant("LSTM, fp32", preset, rnn_type="lstm", precision="fp32"),
        Variant("LSTM, fp32, oneDNN off", preset, rnn_type="lstm", precision="fp32", mkldnn=False),
        Variant("tanh RNN, bf16 autocast", preset, rnn_type="rnn"),
        Variant("conv stack only, bf16", preset, conv_only=True),
        Variant("conv stack only, fp32", preset, conv_only=True, precision="fp32"),
        Variant("cheap conv stack only, bf16", preset, conv_only=True, **CHEAP_CONV),
        Variant(
            "cheap conv stack only, fp32", preset, conv_only=True, precision="fp32", **CHEAP_CONV
        ),
    ]


def measure(preset: str, batch: int, seconds: float, repeats: int, log: Callable) -> list[dict]:
    feats, lens = make_batch(batch, seconds)
    audio = float(lens.sum()) / 100.0
    vs = variants(preset)
    best = {v.name: float("inf") for v in vs}
    for r in range(repeats + 1):  # round 0 is the warm-up
        for v in vs:
            t = v.step(feats, lens)
            if r:
                best[v.name] = min(best[v.name], t)
        log(f"{preset}: round {r}/{repeats} done, load {os.getloadavg()[0]:.2f}")
    base = best[vs[0].name]
    return [
        {
            "preset": preset,
            "variant": v.name,
            "seconds": best[v.name],
            "audio_seconds_per_second": audio / best[v.name],
            "gflops": v.flops * audio / best[v.name] / 1e9,
            "relative_speed": base / best[v.name],
        }
        for v in vs
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load = os.getloadavg()[0]
    rows = [
        row
        for preset in args.presets
        for row in measure(preset, args.batch, args.seconds, args.repeats, log)
    ]
    info = {
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seconds": args.seconds,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(
        f"fwd+bwd of {args.batch} x {args.seconds:g} s, {info['threads']} threads, load "
        f"{info['load_average'][0]} -> {info['load_average'][1]}"
    )
    print(f"{'preset':<7}{'variant':<34}{'s/step':>8}{'audio s/s':>11}{'GFLOP/s':>9}{'rel.':>7}")
    for r in rows:
        print(
            f"{r['preset']:<7}{r['variant']:<34}{r['seconds']:>8.3f}"
            f"{r['audio_seconds_per_second']:>11.1f}{r['gflops']:>9.1f}{r['relative_speed']:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
