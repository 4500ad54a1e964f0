"""`speechswarm bench train`: the speechswarm training loop against a plain PyTorch loop.

    speechswarm bench train --config small          # ~6 min on 2 CPU cores
    speechswarm bench train --config tiny --quick --json

Both loops train the same model config from the same initial weights on the same synthetic
audio (`benchmark.corpus`: LibriSpeech-like lengths, or short ones with `--quick`), in one
process, with the same features, augmentation, CTC loss, AdamW and gradient clipping:

- reference: what a PyTorch user writes first. `DataLoader(batch_size=B, shuffle=False,
  num_workers=0)` over the manifest in order, each batch padded to its longest item, fp32,
  PyTorch's own GRU/LSTM (never the fused kernel: `model.rnn_kernel = "aten"`). B is the
  mean number of utterances in speechswarm's batches, so both see batches of the same size
  on average and differ only in how the batches are made and run.
- speechswarm: `train.assemble.build_run` and `train.loop.train_one_epoch` exactly as
  `speechswarm train` runs them (precision auto = bf16 where the CPU or GPU has it,
  semi-sorted batches on speed-perturbed durations, persistent loader workers, the
  config's thread count), halted every few steps through the loop's `should_stop` hook.

After one untimed warm-up step each, the loops alternate in rounds (a block of reference
steps, then a block of speechswarm steps), so load from other processes hits both alike; the
per-round speed ratios show how steady the machine was. A block's time is wall time
including data wait (time blocked in `next(loader)`), so loading is charged to the loop
that does it. Reported per loop: audio seconds per wall second (audio after speed
perturbation), GFLOP/s from the model's analytic FLOPs (`model.flops_per_second()`; training
= 3 x forward) on real frames only, its share of a bf16 GEMM peak measured before and after
(`benchmark.gemm`), padded share of frames (of the batches loaded, and of one whole epoch
of PLAN_UTTERANCES lengths of the same distribution), data-wait share, and peak memory
(resident set of this process, sampled every 20 ms; on CUDA `max_memory_allocated`).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from speechswarm.benchmark.corpus import (
    librispeech_like_durations,
    short_durations,
    write_bench_corpus,
)
from speechswarm.benchmark.gemm import gemm_peaks
from speechswarm.benchmark.measure import PeakMemory, environment, measure_in_run
from speechswarm.config import load_config
from speechswarm.data.dataset import Batch, SpeechDataset, collate
from speechswarm.data.manifest import read_manifest
from speechswarm.data.sampler import BucketBatchSampler, epoch_speed_factors, padding_fraction
from speechswarm.errors import UsageError
from speechswarm.train.assemble import schedule_for
from speechswarm.train.loop import TrainState, train_one_epoch
from speechswarm.train.optim import make_optimizer
from speechswarm.train.step import clip_and_step, forward_loss

BENCH_EPOCH = 1  # a shuffled epoch, as most of a run is (epoch 0 may be SortaGrad-sorted)
TRAIN_FLOPS_PER_FORWARD = 3.0
# Epoch padding is reported for an epoch of this many utterances of the same length
# distribution (lengths only, no audio): the few batches the benchmark times are too few to
# say what a whole epoch pads.
PLAN_UTTERANCES = 5000  # forward + backward (~2 x forward) per training step


@dataclass
class LoopStats:
    """Sums over one loop's timed steps. Times in wall seconds, audio in seconds, frames in
    feature frames; `padded_frames` counts every frame the batches occupy, padding included."""

    name: str
    precision: str
    batching: str
    steps: int = 0
    seconds: float = 0.0
    wait: float = 0.0
    audio: float = 0.0
    frames: int = 0
    padded_frames: int = 0
    block_speeds: list[float] = field(default_factory=list)  # audio s/s of each timed block
    peak_rss_bytes: int = 0
    peak_cuda_bytes: int = 0
    epoch_padding: float = 0.0  # padded share of the whole epoch's planned batches

    def add_batch(self, batch: Batch, frames_of: Callable, sample_rate: int) -> None:
        frames = frames_of(batch.wave_lens)  # (N,) feature frames
        self.audio += float(batch.wave_lens.sum()) / sample_rate
        self.frames += int(frames.sum())
        self.padded_frames += int(frames.max()) * len(frames) if len(frames) else 0

    @property
    def audio_per_second(self) -> float:
        return self.audio / max(self.seconds, 1e-12)

    def summary(self, train_flops_per_audio_second: float, bf16_peak: float) -> dict:
        gflops = self.audio_per_second * train_flops_per_audio_second / 1e9
        out = {k: v for k, v in asdict(self).items() if k not in ("block_speeds",)}
        out.update(
            audio_seconds_per_second=self.audio_per_second,
            block_speeds=list(self.block_speeds),
            gflops=gflops,
            fraction_of_bf16_peak=gflops / bf16_peak if bf16_peak else 0.0,
            padding=1.0 - self.frames / self.padded_frames if self.padded_frames else 0.0,
            data_wait_fraction=self.wait / max(self.seconds, 1e-12),
        )
        return out


class _Recorder:
    """Stands in for `run.loader` in the loop: yields the loader's batches unchanged and
    records, per batch, the wall time spent blocked in `next()` and the audio and frames."""

    def __init__(self, loader, stats: LoopStats, frames_of: Callable, sample_rate: int):
        self.loader, self.stats = loader, stats
        self.frames_of, self.sample_rate = frames_of, sample_rate

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            self.stats.wait += time.perf_counter() - t0
            if batch is None:
                return
            self.stats.add_batch(batch, self.frames_of, self.sample_rate)
            yield batch


# ----------------------------------------------------------------------------- the reference


class ReferenceLoop:
    """The plain PyTorch training loop: fixed batch size, num_workers=0, fp32; manifest order,
    or with `shuffle` a new seeded permutation each epoch (`DataLoader(shuffle=True)`).

    It shares the feature extractor and augmenters of the speechswarm run (the same work per
    utterance) and owns a copy of the initial model with its own AdamW. It starts at `epoch`
    and goes on to the next epoch (its speed factors) when one runs out. `schedule`: the run's
    LR schedule (`train.assemble.schedule_for` on this loop's batches per epoch) steps with
    it; otherwise the LR stays at `optim.lr`."""

    def __init__(
        self,
        run,
        utts,
        batch_size: int,
        *,
        epoch: int = BENCH_EPOCH,
        shuffle: bool = False,
        schedule: bool = False,
    ):
        cfg = run.cfg
        self.run = run
        self.model = copy.deepcopy(run.model)
        self.model.rnn_kernel = "aten"  # nn.GRU / nn.LSTM as a user has them, not our kernel
        self.optimizer = make_optimizer(cfg, self.model)
        self.dataset = SpeechDataset(
            utts,
            run.tokenizer,
            cfg.data.sample_rate,
            speed_factors=cfg.data.speed_factors,
            seed=cfg.train.seed,
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=0,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(cfg.train.seed) if shuffle else None,
        )
        self.scheduler = schedule_for(cfg, self.optimizer, len(self.loader)) if schedule else None
        self.epoch = epoch
        self.dataset.set_epoch(epoch)
        self.batches = iter(self.loader)
        self.generator = torch.Generator(device=run.device).manual_seed(cfg.train.seed + 2)
        self.ctc = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)

    def next_batch(self) -> Batch:
        """The epoch's next batch; at its end, the first of the next epoch."""
        batch = next(self.batches, None)
        if batch is None:
            self.epoch += 1
            self.dataset.set_epoch(self.epoch)
            self.batches = iter(self.loader)
            batch = next(self.batches)
        return batch

    def step(self, stats: LoopStats | None) -> None:
        """One training step on the next batch; adds its time, wait and frames to `stats`."""
        run, device = self.run, self.run.device
        t0 = time.perf_counter()
        batch = self.next_batch()
        t1 = time.perf_counter()
        self.model.train()
        loss = forward_loss(
            self.model,
            run.extractor,
            self.ctc,
            batch,
            device=device,
            amp_dtype=None,  # fp32
            generator=self.generator,
            wave_augment=run.wave_augment,
            freq_warp=run.freq_warp,
            spec_augment=run.spec_augment,
        )
        loss.backward()
        clip_and_step(self.model, self.optimizer, self.scheduler, None, run.cfg.optim.grad_clip)
        float(loss.detach())  # waits for the device, so the step's time is all in
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if stats is not None:
            stats.steps += 1
            stats.seconds += time.perf_counter() - t0
            stats.wait += t1 - t0
            stats.add_batch(batch, run.extractor.num_frames, run.sample_rate)


def reference_epoch_padding(
    durations: Sequence[float], speed_factors, seed: int, batch_size: int
) -> float:
    """Padded share of one epoch of manifest-order batches of `batch_size`, on the durations
    the dataset delivers in BENCH_EPOCH (after its speed factors)."""
    d = np.asarray(durations) / epoch_speed_factors(
        len(durations), speed_factors, seed, BENCH_EPOCH
    )
    batches = [list(range(i, min(i + batch_size, len(d)))) for i in range(0, len(d), batch_size)]
    return padding_fraction(d, batches)


# ----------------------------------------------------------------------------- the benchmark


def speechswarm_block(run, state, stats: LoopStats, steps: int) -> None:
    """`steps` optimizer steps of the real training loop, timed as one block."""
    stop_at = state.step + steps
    steps_before = state.step
    t0 = time.perf_counter()
    reason = train_one_epoch(
        run, state, lambda s: "interrupted" if s.step >= stop_at else "", progress=False
    )
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    stats.seconds += time.perf_counter() - t0
    stats.steps += state.step - steps_before
    if reason != "interrupted":  # the epoch ran out: the caller sized the corpus too small
        raise UsageError(
            f"bench: the synthetic epoch ended after {state.step} steps; use fewer "
            "--rounds/--steps or a smaller data.max_batch_seconds"
        )


def bench_overrides(manifest: Path, out_dir: Path, device: str) -> list[str]:
    """What the benchmark changes in the config: its data, a scratch run folder, no dev
    evaluation, checkpoints or metric lines inside the timed steps."""
    return [
        f"data.train_manifest={manifest}",
        f"data.dev_manifest={manifest}",
        "data.shards=",
        "data.validate=false",
        f"train.out_dir={out_dir}",
        f"train.device={device}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.max_steps=0",
        "train.time_budget_min=0",
        f"train.log_every={10**9}",
    ]


def utterances_needed(batches: int, max_batch_seconds: float, max_batch_size: int, mean: float):
    """Utterances for `batches` batches of about min(max_batch_size, seconds / mean) each,
    with 30 % to spare (batches hold less than the bound: their longest item sets the cost)."""
    per_batch = max(1.0, min(max_batch_size, max_batch_seconds / mean))
    return math.ceil(1.3 * (batches + 1) * per_batch)


def run_train_bench(
    config: str = "small",
    overrides: Sequence[str] = (),
    *,
    rounds: int | None = None,
    steps: int | None = None,
    quick: bool = False,
    device: str = "auto",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run the benchmark (see the module docstring) and return its results as a dict."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    rounds = (1 if quick else 2) if rounds is None else rounds
    steps = (1 if quick else 2) if steps is None else steps
    if rounds < 1 or steps < 1:
        raise UsageError(f"--rounds and --steps must be >= 1, got {rounds} and {steps}")
    base = load_config(config, list(overrides))  # checked before any work
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="speechswarm-bench-") as tmp:
        batches = 1 + rounds * steps  # warm-up + timed, per loop
        make = short_durations if quick else librispeech_like_durations
        mean = float(make(1000).mean())
        n = utterances_needed(batches, base.data.max_batch_seconds, base.data.max_batch_size, mean)
        durations = make(n, seed=base.train.seed)
        log(f"bench: writing {n} synthetic utterances ({durations.sum() / 60:.1f} min of audio)")
        manifest = write_bench_corpus(Path(tmp) / "data", durations, base.data.sample_rate)
        cfg = load_config(
            config, [*overrides, *bench_overrides(manifest, Path(tmp) / "run", device)]
        )
        plan_durations = make(PLAN_UTTERANCES, seed=base.train.seed + 1)
        utts = read_manifest(manifest)
        result = measure_in_run(
            cfg, lambda run: _measure(run, utts, plan_durations, rounds, steps, quick, log)
        )
    result.update(
        config=config,
        overrides=list(overrides),
        quick=quick,
        load_average=[
            round(load_before[0], 2),
            round(os.getloadavg()[0], 2),
        ],  # 1-min, before/after
        data={
            "utterances": int(n),
            "audio_minutes": round(float(durations.sum()) / 60, 1),
            "durations": "short 0.4-1.2 s" if quick else "LibriSpeech-like, mean 12.7 s",
            "speed_factors": list(base.data.speed_factors),
        },
        **environment(),
    )
    return result


def epoch_plan(sampler, durations: np.ndarray, cfg) -> tuple[float, float, int]:
    """One whole epoch (BENCH_EPOCH) of `durations` batched two ways, on the lengths the
    dataset delivers (after its speed factors): (padded share with `sampler`'s settings,
    padded share of manifest-order batches of B, B = the sampler's mean batch size)."""
    twin = BucketBatchSampler(
        durations,
        sampler.max_batch_seconds,
        max_batch_size=sampler.max_batch_size,
        jitter=sampler.jitter,
        shuffle=sampler.shuffle,
        sortagrad=sampler.sortagrad,
        seed=sampler.seed,
        speed_factors=sampler.speed_factors,
    )
    twin.set_epoch(BENCH_EPOCH)
    plan = twin.rank_batches()
    factors, seed = cfg.data.speed_factors, cfg.train.seed
    delivered = durations / epoch_speed_factors(len(durations), factors, seed, BENCH_EPOCH)
    batch_size = max(1, round(len(durations) / len(plan)))
    ref = reference_epoch_padding(durations, factors, seed, batch_size)
    return padding_fraction(delivered, plan), ref, batch_size


def _measure(run, utts, plan_durations, rounds: int, steps: int, quick: bool, log) -> dict:
    cfg, device = run.cfg, run.device
    precision = str(run.amp_dtype or torch.float32).replace("torch.", "")
    speed_aware = tuple(getattr(run.sampler, "speed_factors", ())) == cfg.data.speed_factors
    ours_padding, ref_padding, batch_size = epoch_plan(run.sampler, plan_durations, cfg)
    ours = LoopStats(
        "speechswarm",
        precision,
        f"semi-sorted, <= {cfg.data.max_batch_seconds:g} s padded",
        epoch_padding=ours_padding,
    )
    ref = LoopStats(
        "reference", "float32", f"manifest order, {batch_size} utts", epoch_padding=ref_padding
    )
    frames_of = run.extractor.num_frames
    loader = run.loader
    state = TrainState(epoch=BENCH_EPOCH)
    gemm_n, gemm_repeats = (256, 2) if quick else (2048, 5)
    peaks = gemm_peaks(device, gemm_n, gemm_repeats)
    log(
        f"bench: {run.model.describe()}; {torch.get_num_threads()} threads; GEMM peak "
        f"fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )

    # Warm-ups, untimed (oneDNN primitives, allocator, first-touch pages, worker start).
    # speechswarm's runs first, before the reference model exists: its memory peak is the
    # speechswarm loop's alone (a process's heap rarely shrinks, so later peaks mix both).
    warmup = LoopStats("warm-up", "", "")
    run.loader = _Recorder(loader, warmup, frames_of, run.sample_rate)
    with PeakMemory(device) as mem:
        speechswarm_block(run, state, warmup, 1)
    ours.peak_rss_bytes, ours.peak_cuda_bytes = mem.rss, mem.cuda
    reference = ReferenceLoop(run, utts, batch_size)
    reference.step(None)
    run.loader = _Recorder(loader, ours, frames_of, run.sample_rate)
    for r in range(rounds):
        with PeakMemory(device) as mem:
            before = (ref.audio, ref.seconds)
            for _ in range(steps):
                reference.step(ref)
        _block_done(ref, before, mem)
        with PeakMemory(device) as mem:
            before = (ours.audio, ours.seconds)
            speechswarm_block(run, state, ours, steps)
        _block_done(ours, before, mem, rss=False)  # RSS: the warm-up's, measured alone
        log(
            f"bench: round {r + 1}/{rounds}: reference {ref.block_speeds[-1]:.1f}, speechswarm "
            f"{ours.block_speeds[-1]:.1f} audio s/s"
        )
    run.loader = loader
    after = gemm_peaks(device, gemm_n, gemm_repeats)
    peaks = {k: max(peaks[k], after[k]) for k in peaks}
    flops = TRAIN_FLOPS_PER_FORWARD * run.model.flops_per_second(1000.0 / cfg.features.hop_ms)
    return {
        "model": run.model.describe(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "steps_per_round": steps,
        "reference_batch_size": batch_size,
        "sampler_speed_aware": speed_aware,  # batches formed on the perturbed durations
        "gemm_gflops": peaks,
        "train_gflop_per_audio_second": flops / 1e9,
        "reference": ref.summary(flops, peaks["bf16"]),
        "speechswarm": ours.summary(flops, peaks["bf16"]),
        "speedup": ours.audio_per_second / max(ref.audio_per_second, 1e-12),
        "round_speedups": [
            o / max(r, 1e-12) for o, r in zip(ours.block_speeds, ref.block_speeds, strict=True)
        ],
    }


def _block_done(
    stats: LoopStats, before: tuple[float, float], mem: PeakMemory, rss: bool = True
) -> None:
    audio, seconds = stats.audio - before[0], stats.seconds - before[1]
    stats.block_speeds.append(audio / max(seconds, 1e-12))
    if rss:
        stats.peak_rss_bytes = max(stats.peak_rss_bytes, mem.rss)
    stats.peak_cuda_bytes = max(stats.peak_cuda_bytes, mem.cuda)  # per block: exact


def format_train_report(r: dict) -> str:
    """The benchmark's result as a table for people."""
    ref, ours = r["reference"], r["speechswarm"]
    peaks = r["gemm_gflops"]

    def row(name: str, fmt: Callable[[dict], str]) -> str:
        return f"  {name:<28}{fmt(ref):>26}{fmt(ours):>30}"

    gb = 1024**3
    lines = [
        f"bench train: config {r['config']} on {r['device']}, {r['threads']} threads, "
        f"load average {r['load_average'][0]} -> {r['load_average'][1]}",
        f"  {r['model']}",
        f"  data: {r['data']['utterances']} synthetic utterances, {r['data']['durations']}, "
        f"speed factors {r['data']['speed_factors'] or 'none'}",
        f"  GEMM peak measured now: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} "
        f"GFLOP/s; training costs {r['train_gflop_per_audio_second']:.2f} GFLOP per audio second",
        f"  {'':<28}{'reference':>26}{'speechswarm':>30}",
        row("precision", lambda s: s["precision"]),
        row("batches", lambda s: s["batching"]),
        row("steps timed", lambda s: str(s["steps"])),
        row("audio seconds / second", lambda s: f"{s['audio_seconds_per_second']:.1f}"),
        row("achieved GFLOP/s", lambda s: f"{s['gflops']:.1f}"),
        row("of the bf16 GEMM peak", lambda s: f"{s['fraction_of_bf16_peak']:.1%}"),
        row("padded frames (loaded)", lambda s: f"{s['padding']:.1%}"),
        row(f"padded frames ({PLAN_UTTERANCES} utts)", lambda s: f"{s['epoch_padding']:.1%}"),
        row("data wait", lambda s: f"{s['data_wait_fraction']:.1%}"),
        row("peak memory (RSS) *", lambda s: f"{s['peak_rss_bytes'] / gb:.2f} GB"),
    ]
    if r["device"].startswith("cuda"):
        lines.append(row("peak CUDA memory", lambda s: f"{s['peak_cuda_bytes'] / gb:.2f} GB"))
    lines.append(
        "  * speechswarm: its first step, before the reference existed; reference: the "
        "process's peak (both loops' memory)"
    )
    rounds = ", ".join(f"{x:.2f}" for x in r["round_speedups"])
    lines.append(
        f"  speedup: {r['speedup']:.2f}x (per round: {rounds}); targets on CPUs: >= 6x and >= 40 % "
        "of the bf16 peak with AMX, >= 50 % of it with AVX-512 alone"
    )
    lines.append(f"  {r['date']}, commit {r['commit']}, {r['machine']}, torch {r['torch']}")
    return "\n".join(lines)
