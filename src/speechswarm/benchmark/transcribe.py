"""`speechswarm bench transcribe`: how fast greedy transcription runs on one CPU core.

    speechswarm bench transcribe                          # the tiny preset, random weights
    speechswarm bench transcribe --checkpoint runs/demo/checkpoints/best.pt --json

It writes speech-like FLAC files (`benchmark.corpus`, 2-10 s each, `--seconds` of audio in
all), then transcribes them all through the public API, `speechswarm.inference.Recognizer`
(`transcribe_batch`: decode the files, features, model under `torch.inference_mode`, greedy
CTC), with torch on `--threads` threads (default 1: "one core"), for each precision (fp32, and
bf16 where the CPU has it) and batch size (files sorted by length, then grouped, so a batch
pads little). Speed does not depend on the weights, so without `--checkpoint` the preset's
model is used untrained. Reported: the real-time factor RTF = processing seconds / audio
seconds (lower is faster) and its inverse, "x real time"; the best of `--repeats` passes
after one warm-up batch. Beside wall time, the CPU time of the transcribing thread: with one
thread it is the work one core does, and it stays put when other processes load the machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from speechswarm.benchmark.corpus import write_bench_corpus
from speechswarm.benchmark.measure import environment
from speechswarm.build import build_features, build_model, build_tokenizer, cpu_has_bf16
from speechswarm.config import load_config
from speechswarm.data.manifest import read_manifest
from speechswarm.errors import InputNotFoundError, UsageError


def untrained_checkpoint(config: str, overrides: Sequence[str] = ()) -> dict:
    """What `speechswarm.inference.Recognizer` needs from a checkpoint, for a preset's model
    with its initial weights (seeded from train.seed)."""
    cfg = load_config(config, list(overrides))
    torch.manual_seed(cfg.train.seed)
    tokenizer = build_tokenizer(cfg.tokenizer)
    extractor = build_features(cfg.features, cfg.data.sample_rate)
    model = build_model(cfg.model, extractor.num_features, len(tokenizer))
    return {
        "tokenizer": tokenizer.to_dict(),
        "features": extractor.feature_settings(),
        "model_settings": model.settings(),
        "model": model.state_dict(),
    }


def file_durations(total_seconds: float, seed: int = 0) -> np.ndarray:
    """Durations uniform in [2, 10] s until they add up to at least `total_seconds`."""
    rng = np.random.default_rng([seed, 4])
    out: list[float] = []
    while sum(out) < total_seconds:
        out.append(float(rng.uniform(2.0, 10.0)))
    return np.array(out)


def time_transcription(
    recognizer, files: Sequence[str], batch_size: int, repeats: int
) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds of this thread) of `repeats` passes transcribing all
    `files` in batches (after one warm-up batch); `files` are grouped in the order given.
    With one torch thread all the work runs on this thread, so its CPU time is what the
    pass costs one core even when other processes share the machine (wall time is not)."""
    groups = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    recognizer.transcribe_batch(groups[0])  # warm-up: oneDNN primitives, allocator
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        for group in groups:
            recognizer.transcribe_batch(group)
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.thread_time() - c0)
    return wall, cpu


def run_transcribe_bench(
    config: str = "tiny",
    overrides: Sequence[str] = (),
    *,
    checkpoint: str | None = None,
    seconds: float = 120.0,
    batch_sizes: Sequence[int] = (1, 8),
    threads: int = 1,
    repeats: int = 2,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure greedy transcription speed (see the module docstring); returns a dict."""
    from speechswarm.checkpoint import load_checkpoint
    from speechswarm.inference import Recognizer

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if seconds <= 0 or threads < 1 or repeats < 1 or min(batch_sizes, default=0) < 1:
        raise UsageError("--seconds must be > 0; --threads, --repeats and --batch-sizes >= 1")
    if checkpoint:
        if not Path(checkpoint).is_file():
            raise InputNotFoundError(f"--checkpoint {checkpoint}: no such file")
        ckpt, source = load_checkpoint(Path(checkpoint)), checkpoint
    else:
        ckpt, source = untrained_checkpoint(config, overrides), f"preset {config} (untrained)"
    precisions = ["fp32"] + (["bf16"] if device != "cpu" or cpu_has_bf16() else [])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="speechswarm-bench-") as tmp:
            sample_rate = int(ckpt["features"]["sample_rate"])
            manifest = write_bench_corpus(Path(tmp), file_durations(seconds), sample_rate)
            utts = sorted(read_manifest(manifest), key=lambda u: u.duration)
            files = [u.audio for u in utts]
            audio = sum(u.duration for u in utts)
            log(f"bench: transcribing {len(files)} files ({audio:.0f} s) on {threads} thread(s)")
            for precision in precisions:
                recognizer = Recognizer(ckpt, device=device, precision=precision)
                for batch_size in batch_sizes:
                    wall, cpu = time_transcription(recognizer, files, batch_size, repeats)
                    rows.append(
                        {
                            "precision": precision,
                            "batch_size": batch_size,
                            "seconds": wall,
                            "rtf": wall / audio,
                            "x_real_time": audio / wall,
                            "cpu_seconds": cpu,
                            "x_real_time_cpu": audio / cpu,
                        }
                    )
                    log(
                        f"bench: {precision}, batch {batch_size}: {audio / wall:.0f}x real time "
                        f"({audio / cpu:.0f}x per CPU second)"
                    )
    finally:
        torch.set_num_threads(threads_before)
    best = max(rows, key=lambda r: r["x_real_time"])
    return {
        "model": source,
        "model_settings": ckpt["model_settings"],
        "device": device,
        "threads": threads,
        "files": len(files),
        "audio_seconds": audio,
        "results": rows,
        "best": best,
        "load_average": round(os.getloadavg()[0], 2),
        **environment(),
    }


def format_transcribe_report(r: dict) -> str:
    """The benchmark's result as a table for people."""
    lines = [
        f"bench transcribe: {r['model']} on {r['device']}, {r['threads']} thread(s), "
        f"{r['files']} files, {r['audio_seconds']:.0f} s of audio, load average {r['load_average']}",
        f"  {'precision':<10}{'batch':>6}{'seconds':>10}{'RTF':>9}{'x real time':>13}"
        f"{'CPU seconds':>13}{'x per CPU s':>13}",
    ]
    for row in r["results"]:
        lines.append(
            f"  {row['precision']:<10}{row['batch_size']:>6}{row['seconds']:>10.2f}"
            f"{row['rtf']:>9.4f}{row['x_real_time']:>13.0f}{row['cpu_seconds']:>13.2f}"
            f"{row['x_real_time_cpu']:>13.0f}"
        )
    best = r["best"]
    lines.append(
        f"  best: {best['x_real_time']:.0f}x real time, {best['x_real_time_cpu']:.0f}x per CPU "
        f"second ({best['precision']}, batch {best['batch_size']}); target >= 50x on one core"
    )
    lines.append(f"  {r['date']}, commit {r['commit']}, {r['machine']}, torch {r['torch']}")
    return "\n".join(lines)
