"""`speechswarm bench profile`: where one training step's time goes, and which kernels run it.

    speechswarm bench profile --config small [--steps 2] [--json] [section.key=value ...]
    speechswarm bench profile --config small --compare packed,unpacked,aten --rounds 3

Builds the run as `speechswarm bench train` does (synthetic LibriSpeech-like audio, the
preset's config) and trains on one fixed batch of the preset's size (`data.max_batch_seconds`
of padded audio), through the loop's own `train_step`:

- `--steps N`: N steps under `torch.profiler` after an untimed one; self CPU time of every
  op, summed over the threads it ran on, in the categories of `CATEGORIES` (the fused GRU
  kernel marks its own parts: `fused_gru::step_gemm`, `gates`, `input_gemm`,
  `weight_gemms`); then one step under oneDNN's verbose mode, counted by primitive and
  implementation (`brg_matmul:avx10_1_512_amx` is AMX; `avx512_core_bf16`, `avx2` or
  `gemm:jit` are not), and the number of ATen GEMM calls beside it (a GEMM that reaches
  MKL or a reference path instead of oneDNN shows up only in the second count).
- `--compare a,b,...`: step wall time of variants (`VARIANTS`) on the same batch,
  interleaved in rounds so machine load hits all alike; best and median per variant.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from speechswarm import fused_gru
from speechswarm.benchmark.corpus import librispeech_like_durations, write_bench_corpus
from speechswarm.benchmark.measure import environment
from speechswarm.benchmark.train import BENCH_EPOCH, bench_overrides, utterances_needed
from speechswarm.config import load_config
from speechswarm.errors import UsageError
from speechswarm.train.assemble import build_run, close_log
from speechswarm.train.loop import TrainState
from speechswarm.train.step import train_step

# (category, pattern): an op's self time goes to the first category whose pattern matches the
# op or, failing that, its nearest enclosing op; the fused GRU's own ranges win over all.
GRU_RANGES = [
    ("GRU recurrent GEMMs (per step)", "fused_gru::step_gemm"),
    ("GRU gate arithmetic", "fused_gru::gates"),
    ("GRU input-projection GEMMs", "fused_gru::input_gemm"),
    ("GRU dx + weight-gradient GEMMs", "fused_gru::weight_gemms"),
]
CATEGORIES = [
    ("optimizer + clipping", r"optimizer|clip_grad|_foreach|adamw"),
    ("CTC loss", r"ctc"),
    ("convolutions", r"convolution"),
    ("batch norm", r"batch_?norm"),
    ("features (STFT)", r"stft|fft"),
    ("copies, casts, gathers, masks", r"copy_|gather|scatter|masked_fill|index|flip|\bcat\b"),
    ("other GEMMs", r"aten::(mm|addmm|bmm|matmul|linear)$"),
    ("GRU kernel, rest (buffers)", r"_fusedgru"),
]
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::addbmm", "aten::baddbmm")


def category(event) -> str:
    """The category of one profiler event's self time (see GRU_RANGES, CATEGORIES)."""
    chain, e = [], event
    while e is not None:
        chain.append(e.name.lower())
        e = e.cpu_parent
    for name, pattern in GRU_RANGES:
        if pattern in chain:
            return name
    for op in chain:
        for name, pattern in CATEGORIES:
            if re.search(pattern, op):
                return name
    return "other element-wise and overhead"


def breakdown(events, steps: int) -> dict[str, float]:
    """CPU seconds per step by category, all threads' self time summed."""
    seconds: dict[str, float] = defaultdict(float)
    for e in events:
        seconds[category(e)] += e.self_cpu_time_total / 1e6 / steps
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1]))


def onednn_kernels(step: Callable[[], None]) -> tuple[list[dict], int]:
    """Run `step` with oneDNN's verbose output captured (from the C library's stdout): one
    row per (primitive, implementation, data types) with calls and milliseconds; and the
    number of ATen GEMM calls in the same step (from a profiler pass)."""
    with tempfile.TemporaryFile(mode="w+") as f:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                step()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        rows = _verbose_rows(f.read().splitlines())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    gemms = sum(e.count for e in prof.key_averages() if e.key in GEMM_OPS)
    return rows, gemms


def _verbose_rows(lines: Sequence[str]) -> list[dict]:
    calls: Counter = Counter()
    ms: dict[tuple, float] = defaultdict(float)
    for line in lines:
        parts = line.split(",")
        if len(parts) < 11 or parts[0] != "onednn_verbose" or parts[3] != "exec":
            continue
        kind, impl = parts[5], parts[6]
        dtypes = {m.split(":")[1] for m in parts[8].split() if ":" in m} - {"undef"}
        dtypes = " ".join(sorted(dtypes))
        key = (kind, impl, dtypes)
        calls[key] += 1
        ms[key] += float(parts[-1])
    return [
        {"primitive": k[0], "implementation": k[1], "dtypes": k[2], "calls": calls[k], "ms": ms[k]}
        for k in sorted(calls, key=lambda k: -ms[k])
    ]


# ----------------------------------------------------------------------------- variants

VARIANTS: dict[str, Callable] = {
    # name: set-up called on the run's model before each of its steps
    "packed": lambda model: _set_kernel(model, "fused", packed=True),
    "unpacked": lambda model: _set_kernel(model, "fused", packed=False),
    "aten": lambda model: _set_kernel(model, "aten", packed=True),
}


def _set_kernel(model, kernel: str, packed: bool) -> None:
    model.rnn_kernel = kernel
    fused_gru.packed_recurrent_gemm = packed


def compare(entries: Sequence[tuple], rounds: int, log) -> list[dict]:
    """Step wall times of `entries` (label, run, batch, variant name), interleaved: one
    untimed step each, then `rounds` rounds of one step per entry. Per entry: best and
    median step seconds (wall, and CPU seconds of this process: on a shared machine the
    steadier of the two), the batch's audio seconds and utterances."""
    states = [TrainState(epoch=BENCH_EPOCH) for _ in entries]
    times: list[list[float]] = [[] for _ in entries]
    cpu: list[list[float]] = [[] for _ in entries]  # this process' CPU s, all its threads
    for r in range(rounds + 1):
        for i, (_, run, batch, variant) in enumerate(entries):
            VARIANTS[variant](run.model)
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(run, states[i], batch)
            if r:
                times[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
        if r:
            log(
                "bench profile: "
                + ", ".join(f"{e[0]} {t[-1]:.2f} s" for e, t in zip(entries, times, strict=True))
            )
    return [
        {
            "variant": label,
            "utterances": len(batch.ids),
            "audio_s": float(batch.wave_lens.sum()) / run.sample_rate,
            "best_s": min(t),
            "median_s": statistics.median(t),
            "seconds": t,
            "cpu_median_s": statistics.median(c),
            "cpu_seconds": c,
        }
        for (label, run, batch, _), t, c in zip(entries, times, cpu, strict=True)
    ]


# ----------------------------------------------------------------------------- the command


def run_profile_bench(
    config: str = "small",
    overrides: Sequence[str] = (),
    *,
    steps: int = 1,
    variants: Sequence[str] = (),
    rounds: int = 3,
    lengths: Sequence[float] = (1.0,),
    log: Callable[[str], None] | None = None,
) -> dict:
    """Profile (no `variants`) or compare (see the module docstring); a dict of results."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or steps < 1 or rounds < 1 or not lengths:
        raise UsageError(
            f"--compare takes {', '.join(VARIANTS)} (got {', '.join(variants)}); --steps, "
            "--rounds >= 1; --lengths at least one scale"
        )
    base = load_config(config, list(overrides))
    with tempfile.TemporaryDirectory(prefix="speechswarm-profile-") as tmp:
        runs = [
            _run_for(config, overrides, base, scale, Path(tmp) / f"x{scale:g}", log)
            for scale in lengths
        ]
        batches = [_first_batch(run) for run in runs]
        if variants:
            entries = [
                (f"{v}" + (f" x{s:g} lengths" if len(lengths) > 1 else ""), run, batch, v)
                for s, run, batch in zip(lengths, runs, batches, strict=True)
                for v in variants
            ]
            result = {"compare": compare(entries, rounds, log)}
        else:
            result = profile(runs[0], batches[0], steps, log)
        result["model"] = runs[0].model.describe()
        result["threads"] = torch.get_num_threads()
        result["train_gflop_per_audio_second"] = (
            3.0 * runs[0].model.flops_per_second(1000.0 / base.features.hop_ms) / 1e9
        )
        for run in runs:
            close_log(run.log)
        del runs, batches
    result.update(config=config, overrides=list(overrides), load_average=os.getloadavg()[0])
    return {**result, **environment()}


def _first_batch(run):
    """The first batch of the benchmark's epoch (shuffled, semi-sorted, as most of a run)."""
    run.sampler.set_epoch(BENCH_EPOCH)
    run.dataset_set_epoch(BENCH_EPOCH)
    return next(iter(run.loader))


def _run_for(config, overrides, base, scale: float, folder: Path, log):
    """A run on synthetic LibriSpeech-like audio with every length times `scale`."""
    mean = float(librispeech_like_durations(1000).mean()) * scale
    n = utterances_needed(3, base.data.max_batch_seconds, base.data.max_batch_size, mean)
    durations = librispeech_like_durations(n, seed=base.train.seed) * scale
    log(f"bench profile: writing {n} synthetic utterances, lengths x{scale:g}")
    manifest = write_bench_corpus(folder / "data", durations, base.data.sample_rate)
    cfg = load_config(config, [*overrides, *bench_overrides(manifest, folder / "run", "cpu")])
    return build_run(cfg, progress=False)


def profile(run, batch, steps: int, log) -> dict:
    """The breakdown of `steps` profiled steps on `batch`, and one step's oneDNN kernels."""
    state = TrainState(epoch=BENCH_EPOCH)
    train_step(run, state, batch)  # untimed: primitives, allocator, first-touch pages
    t0 = time.perf_counter()
    train_step(run, state, batch)
    wall = time.perf_counter() - t0
    log(f"bench profile: one step {wall:.2f} s unprofiled; profiling {steps}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(run, state, batch)
        profiled = (time.perf_counter() - t0) / steps
    kernels, gemms = onednn_kernels(lambda: train_step(run, state, batch))
    cpu = breakdown(prof.events(), steps)
    return {
        "utterances": len(batch.ids),
        "audio_s": float(batch.wave_lens.sum()) / run.sample_rate,
        "step_wall_s": wall,
        "profiled_step_wall_s": profiled,
        "cpu_s_per_step": cpu,
        "onednn": kernels,
        "aten_gemm_calls": gemms,
    }


def format_profile_report(r: dict) -> str:
    """The result as text for people."""
    lines = [
        f"bench profile: config {r['config']}, {r['threads']} threads, load {r['load_average']:.1f}",
        f"  {r['model']}",
    ]
    if "compare" in r:
        gflop = r["train_gflop_per_audio_second"]
        first = r["compare"][0]["median_s"] / r["compare"][0]["audio_s"]
        for c in r["compare"]:
            per_audio = c["median_s"] / c["audio_s"]
            lines.append(
                f"  {c['variant']:<28} {c['utterances']:>3} utts {c['audio_s']:6.1f} s audio: "
                f"median {c['median_s']:6.2f} s (best {c['best_s']:.2f}; "
                f"CPU {c['cpu_median_s']:.2f} s), "
                f"{gflop / per_audio:6.1f} GFLOP/s, {first / per_audio:.2f}x the first"
            )
    else:
        total = sum(r["cpu_s_per_step"].values())
        lines.append(
            f"  one batch: {r['utterances']} utts, {r['audio_s']:.1f} s audio; step "
            f"{r['step_wall_s']:.2f} s wall ({r['profiled_step_wall_s']:.2f} s profiled), "
            f"{total:.2f} CPU s over all threads"
        )
        for name, sec in r["cpu_s_per_step"].items():
            lines.append(f"  {name:<36}{sec:8.2f} CPU s {sec / total:7.1%}")
        lines.append(f"  oneDNN, one step ({r['aten_gemm_calls']} ATen GEMM calls):")
        for k in r["onednn"]:
            lines.append(
                f"    {k['primitive']:<12}{k['implementation']:<32}{k['dtypes']:<12}"
                f"{k['calls']:>6} calls {k['ms']:10.1f} ms"
            )
    lines.append(f"  {r['date']}, commit {r['commit']}, {r['machine']}, torch {r['torch']}")
    return "\n".join(lines)
