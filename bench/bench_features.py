"""Feature, augmentation and FLAC-decode speed in x-real-time (audio seconds per wall second).

    PYTHONPATH=src .venv/bin/python bench/bench_features.py [--device cpu] [--repeats 5]

The batch is 60 s of audio as 8 utterances of 7.5 s at 16 kHz. Each number is the best of
`--repeats` timed runs after one warm-up (the best run is the least disturbed by other
processes on a shared machine). "1 thread" is per core; "2 threads" shows how it scales.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechswarm.augment import SpecAugment, WaveAugment
from speechswarm.features import KINDS, FeatureExtractor

SAMPLE_RATE = 16000
BATCH, SECONDS = 8, 7.5


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Fastest of `repeats` runs of fn (after one warm-up), synchronising CUDA around each."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def speechlike_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(8, 120000) float32 chirps + noise and (8,) lengths: 60 s of audio."""
    g = torch.Generator().manual_seed(0)
    num = int(SECONDS * SAMPLE_RATE)
    t = torch.arange(num) / SAMPLE_RATE
    waves = 0.3 * torch.sin(2 * torch.pi * (200 + 300 * t) * t) + 0.05 * torch.randn(
        BATCH, num, generator=g
    )
    lens = torch.full((BATCH,), num)
    return waves.to(device), lens.to(device)


def flac_decode_xrt(repeats: int) -> float:
    """x-real-time of soundfile decoding a generated 60 s, 16 kHz, 16-bit mono FLAC file."""
    rng = np.random.default_rng(0)
    t = np.arange(int(60 * SAMPLE_RATE)) / SAMPLE_RATE
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.flac"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        seconds = best_seconds(lambda: sf.read(path, dtype="float32"), repeats, torch.device("cpu"))
    return 60.0 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per number (best is kept)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    waves, lens = speechlike_batch(device)
    audio_s = float(lens.sum()) / SAMPLE_RATE
    rows: list[tuple[str, Callable[[], object]]] = []
    for kind in KINDS:
        for normalize in ("utterance", "none"):
            fe = FeatureExtractor(kind=kind, normalize=normalize).to(device)
            rows.append(
                (f"features {kind:<11} normalize={normalize}", lambda fe=fe: fe(waves, lens))
            )
    gen = torch.Generator(device).manual_seed(0)
    wave_aug = WaveAugment(shift_ms=50, gain_db=(-6, 6), noise_snr_db=(5, 20))
    reverb = WaveAugment(reverb_prob=1.0)
    feats, feat_lens = FeatureExtractor().to(device)(waves, lens)
    spec_aug = SpecAugment()
    rows.append(("augment shift+noise+gain", lambda: wave_aug(waves, lens, gen)))
    rows.append(("augment reverb (p=1)", lambda: reverb(waves, lens, gen)))
    rows.append(("augment SpecAugment", lambda: spec_aug(feats, feat_lens, gen)))

    print(
        f"{audio_s:.1f} s of audio as {BATCH} x {SECONDS} s device {device}, best of {args.repeats}"
    )
    print(f"{'what':<44} {'1 thread':>10} {'2 threads':>10}   (x real time)")
    for name, fn in rows:
        xrt = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            xrt.append(audio_s / best_seconds(fn, args.repeats, device))
        print(f"{name:<44} {xrt[0]:>10,.0f} {xrt[1]:>10,.0f}")
    print(
        f"{'FLAC decode (soundfile, 60 s 16-bit mono)':<44} {flac_decode_xrt(args.repeats):>10,.0f} {'-':>10}"
    )


if __name__ == "__main__":
    main()
