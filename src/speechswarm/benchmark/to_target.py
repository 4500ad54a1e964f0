"""`speechswarm bench target`: training time to a dev CER, speechswarm against a plain loop.

    speechswarm bench target --target-cer 60 --budget-min 20 \\
        data.train_manifest=data/synth-v2/train.jsonl data.dev_manifest=data/synth-v2/dev.jsonl
    speechswarm bench target --target-cer 100 --budget-min 0.5 --slice-s 10 --json

Audio seconds per second (`bench train`) can hide a recipe that learns less per step; this
measures what a user waits for. Both loops train the same config (default: the demo's
`tiny`, on the demo's corpus) from the same initial weights on the real training manifest,
in one process:

- reference: `benchmark.train.ReferenceLoop`, a plain PyTorch loop: fixed batches of B
  utterances (B = the mean of speechswarm's batches), a new seeded shuffle each epoch
  (`--reference-order manifest`: the manifest's order, which on the built-in corpus is one
  TTS engine after another), `num_workers=0`, fp32;
- speechswarm: `train.assemble.build_run` and `train.loop.run_steps` (epochs of
  `train_one_epoch`) exactly as `speechswarm train` runs them, halted through the stop rule.

They alternate in slices of `--slice-s` seconds of training (reference first), so load from
other processes hits both alike. After each slice the loop that trained is scored on the dev
subset (`train.dev_max_utterances`, spread over the manifest) with `evaluate.evaluate`:
greedy CTC in the run's precision (bf16 autocast where the machine has it), as
`speechswarm train` scores its dev set; the same for both loops, so the CER compares weights.

Each loop has its own training clock: the wall seconds of its own slices, data waits and
epoch starts included, the other loop's slices and every evaluation left out. Its LR
schedule runs on that clock: the config's schedule over a time budget of `--budget-min`
(`train.time_budget_min`, the demo's one-cycle), a `BudgetedLR` whose clock is set to the
loop's training seconds as each slice starts (`resume_clock`, as a resumed run does). A loop
stops when its dev CER is <= the target (its time to target: its training seconds at that
evaluation, so resolution is one slice) or when its budget is spent.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from speechswarm.benchmark.measure import environment, measure_in_run
from speechswarm.benchmark.train import LoopStats, ReferenceLoop
from speechswarm.config import load_config
from speechswarm.errors import UsageError
from speechswarm.evaluate import EvalResult, evaluate
from speechswarm.train.loop import TrainState, run_steps
from speechswarm.train.optim import BudgetedLR

REFERENCE_ORDERS = ("shuffled", "manifest")


class TrainingClock:
    """One loop's training time: wall seconds spent inside its own slices, nothing else."""

    def __init__(self) -> None:
        self.banked = 0.0  # seconds of finished slices
        self._since: float | None = None  # perf_counter() at the running slice's start

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        self.banked = self()
        self._since = None

    def __call__(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.banked + running


@dataclass
class Progress:
    """A loop's standing in the race: its clock, its dev curve, and why it stopped."""

    clock: TrainingClock = field(default_factory=TrainingClock)
    curve: list[dict] = field(default_factory=list)  # one row per evaluation
    stop: str = ""  # "" while it trains, then "target" or "budget"


class SpeechswarmSide:
    """`speechswarm train`'s loop on `run`: `run_steps`, halted by the slice's stop rule."""

    name = "speechswarm"

    def __init__(self, run) -> None:
        self.run, self.state = run, TrainState()
        self.model, self.optimizer, self.scheduler = run.model, run.optimizer, run.scheduler
        self.precision = str(run.amp_dtype or torch.float32).replace("torch.", "")
        self.batching = f"semi-sorted, <= {run.cfg.data.max_batch_seconds:g} s padded"
        self.progress = Progress()

    @property
    def steps(self) -> int:
        return self.state.step

    @property
    def audio_seconds(self) -> float:
        return self.state.audio_seconds

    def train_until(self, clock: Callable[[], float], end_s: float) -> None:
        # "interrupted": the stop reason a `should_stop` hook gives (`train.loop.RunLimits`)
        run_steps(self.run, self.state, lambda state: "interrupted" if clock() >= end_s else "")


class ReferenceSide:
    """The plain loop (`ReferenceLoop`), one step after another until the slice is over."""

    name = "reference"

    def __init__(self, loop: ReferenceLoop, batch_size: int, order: str) -> None:
        self.loop = loop
        self.model, self.optimizer, self.scheduler = loop.model, loop.optimizer, loop.scheduler
        self.precision = "float32"
        self.batching = f"{order}, {batch_size} utts"
        self.stats = LoopStats(self.name, self.precision, self.batching)
        self.progress = Progress()

    @property
    def steps(self) -> int:
        return self.stats.steps

    @property
    def audio_seconds(self) -> float:
        return self.stats.audio

    def train_until(self, clock: Callable[[], float], end_s: float) -> None:
        while clock() < end_s:
            self.loop.step(self.stats)


def train_slice(side, end_s: float, device: torch.device) -> None:
    """Train `side` until its clock reads `end_s` (checked after each step), its schedule
    reading the same clock."""
    clock = side.progress.clock
    clock.start()
    if isinstance(side.scheduler, BudgetedLR):
        side.scheduler.resume_clock(clock())  # its budget counts this loop's training only
    side.train_until(clock, end_s)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    clock.stop()


def score(run, model: torch.nn.Module) -> EvalResult:
    """Greedy CER of `model` on the run's dev subset, in the run's precision."""
    return evaluate(
        model,
        run.extractor,
        run.dev_loader(),
        run.tokenizer,
        device=run.device,
        amp_dtype=run.amp_dtype,
        references=run.dev_references,
    )


def race(sides, run, target: float, budget_s: float, slice_s: float, log) -> None:
    """Alternate slices of the sides still training, score each after its slice, and stop
    each at the target or at its budget (module docstring)."""
    while not all(side.progress.stop for side in sides):
        for side in sides:
            p = side.progress
            if p.stop:
                continue
            train_slice(side, min(p.clock() + slice_s, budget_s), run.device)
            result = score(run, side.model)
            p.curve.append(
                {
                    "train_seconds": round(p.clock(), 3),
                    "steps": side.steps,
                    "audio_seconds": round(side.audio_seconds, 1),
                    "cer": result.cer,
                    "wer": result.wer,
                    "lr": side.optimizer.param_groups[0]["lr"],
                    "eval_seconds": round(result.seconds, 3),
                    "load": round(os.getloadavg()[0], 2),
                }
            )
            if result.cer <= target:
                p.stop = "target"
            elif p.clock() >= budget_s:
                p.stop = "budget"
            log(
                f"bench target: {side.name:<11} {p.clock():7.1f} s, {side.steps:5d} steps: "
                f"dev CER {result.cer:.1%} (scored in {result.seconds:.1f} s)"
                + (f" -> {p.stop}" if p.stop else "")
            )


def summarize(curve: Sequence[dict], target: float) -> dict:
    """Time to target from a loop's curve: the first evaluation at or below `target`
    (None when none was); the best CER and where it was reached; the totals at the end."""
    hit = next((row for row in curve if row["cer"] <= target), None)
    best = min(curve, key=lambda row: row["cer"])
    last = curve[-1]
    return {
        "reached": hit is not None,
        "time_to_target_s": hit["train_seconds"] if hit else None,
        "steps_to_target": hit["steps"] if hit else None,
        "audio_seconds_to_target": hit["audio_seconds"] if hit else None,
        "best_cer": best["cer"],
        "best_cer_at_s": best["train_seconds"],
        "train_seconds": last["train_seconds"],
        "steps": last["steps"],
        "audio_seconds": last["audio_seconds"],
        "eval_seconds": round(sum(row["eval_seconds"] for row in curve), 3),
    }


def time_ratio(reference: dict, ours: dict) -> dict:
    """Reference time to target over speechswarm's. When only one loop reached the target,
    the other's whole training time bounds the ratio from one side."""
    t_ref, t_ours = reference["time_to_target_s"], ours["time_to_target_s"]
    ratio = at_least = at_most = None
    if t_ref is not None and t_ours is not None:
        ratio = t_ref / t_ours
    elif t_ours is not None:  # the reference did not get there within its training time
        at_least = reference["train_seconds"] / t_ours
    elif t_ref is not None:
        at_most = t_ref / ours["train_seconds"]
    return {"ratio": ratio, "ratio_at_least": at_least, "ratio_at_most": at_most}


def check_arguments(target_cer: float, budget_min: float, slice_s: float, order: str) -> None:
    if not (0 < target_cer <= 100):
        raise UsageError(f"--target-cer is a percentage in (0, 100], got {target_cer:g}")
    if not (budget_min > 0 and math.isfinite(budget_min)):
        raise UsageError(
            f"--budget-min must be > 0 minutes of training per loop, got {budget_min:g}"
        )
    if not (slice_s > 0 and math.isfinite(slice_s)):
        raise UsageError(f"--slice-s must be > 0 seconds, got {slice_s:g}")
    if order not in REFERENCE_ORDERS:
        raise UsageError(f"--reference-order: one of {', '.join(REFERENCE_ORDERS)}, got {order!r}")


def check_manifests(cfg) -> None:
    """Both manifests exist, before a minute of validation is spent on the train set."""
    for key, path in (("train", cfg.data.train_manifest), ("dev", cfg.data.dev_manifest)):
        if not path or not Path(path).is_file():
            raise UsageError(
                f"bench target: no {key} manifest at data.{key}_manifest={path!r}; make the "
                "demo's corpus (speechswarm synth --out data/synth) or pass "
                "data.train_manifest=... data.dev_manifest=..."
            )


def target_overrides(out_dir: Path, device: str, budget_min: float) -> list[str]:
    """What the benchmark sets in the config: a scratch run folder, its budget (the schedule's
    length), and no evaluation, checkpoint or metric line inside the timed slices."""
    return [
        "data.shards=",
        f"train.out_dir={out_dir}",
        f"train.device={device}",
        f"train.time_budget_min={budget_min}",
        "train.max_steps=0",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        f"train.log_every={10**9}",
    ]


def run_target_bench(
    config: str = "tiny",
    overrides: Sequence[str] = (),
    *,
    target_cer: float,
    budget_min: float = 20.0,
    slice_s: float = 60.0,
    reference_order: str = "shuffled",
    device: str = "auto",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run the race (module docstring); `target_cer` in percent. Returns the results."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    check_arguments(target_cer, budget_min, slice_s, reference_order)
    check_manifests(load_config(config, list(overrides)))  # and the config, before any work
    target, budget_s = target_cer / 100.0, budget_min * 60.0
    load_before = os.getloadavg()[0]
    started = environment()  # the date and commit of the code this process runs
    with tempfile.TemporaryDirectory(prefix="speechswarm-target-") as tmp:
        cfg = load_config(
            config, [*overrides, *target_overrides(Path(tmp) / "run", device, budget_min)]
        )
        result = measure_in_run(
            cfg, lambda run: _race(run, target, budget_s, slice_s, reference_order, log)
        )
    result.update(
        config=config,
        overrides=list(overrides),
        target_cer=target,
        budget_min=budget_min,
        slice_s=slice_s,
        reference_order=reference_order,
        load_average=[round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-min
        **started,
    )
    return result


def _race(run, target: float, budget_s: float, slice_s: float, order: str, log) -> dict:
    utts = run.dataset.utts
    batch_size = max(1, round(len(utts) / len(run.sampler)))
    # Built before either loop trains: it copies the initial weights.
    reference = ReferenceLoop(
        run, utts, batch_size, epoch=0, shuffle=order == "shuffled", schedule=True
    )
    sides = [ReferenceSide(reference, batch_size, order), SpeechswarmSide(run)]
    log(
        f"bench target: dev CER <= {target * 100:g} % on {len(run.dev_utts)} dev utts, "
        f"{budget_s / 60:g} min per loop in slices of {slice_s:g} s; {run.model.describe()}; "
        f"{torch.get_num_threads()} threads"
    )
    race(sides, run, target, budget_s, slice_s, log)
    loops = {}
    for side in sides:
        loops[side.name] = {
            "precision": side.precision,
            "batching": side.batching,
            "stop": side.progress.stop,
            **summarize(side.progress.curve, target),
            "curve": side.progress.curve,
        }
    return {
        "model": run.model.describe(),
        "device": str(run.device),
        "threads": torch.get_num_threads(),
        "dev_utterances": len(run.dev_utts),
        "train": {"utterances": len(utts), "hours": round(run.train_hours, 3)},
        **loops,
        **time_ratio(loops["reference"], loops["speechswarm"]),
    }


def _reached(s: dict) -> str:
    if s["reached"]:
        t = s["time_to_target_s"]
        return f"{t:.0f} s ({t / 60:.1f} min)"
    return f"not reached, best CER {s['best_cer']:.1%} at budget"


def format_target_report(r: dict) -> str:
    """The race's result as tables for people."""
    ref, ours = r["reference"], r["speechswarm"]

    def row(name: str, fmt: Callable[[dict], str]) -> str:
        return f"  {name:<26}{fmt(ref):>40}{fmt(ours):>40}"

    def at_target(s: dict) -> str:
        if not s["reached"]:
            return "-"
        return f"{s['steps_to_target']} steps, {s['audio_seconds_to_target'] / 3600:.2f} h audio"

    lines = [
        f"bench target: dev CER <= {r['target_cer'] * 100:g} % ({r['dev_utterances']} dev utts), "
        f"config {r['config']} on {r['device']}, {r['threads']} threads, "
        f"load average {r['load_average'][0]} -> {r['load_average'][1]}",
        f"  {r['model']}",
        f"  train: {r['train']['utterances']:,} utts ({r['train']['hours']:.2f} h); budget "
        f"{r['budget_min']:g} min of training per loop, slices of {r['slice_s']:g} s",
        f"  {'':<26}{'reference (plain PyTorch)':>40}{'speechswarm':>40}",
        row("precision", lambda s: s["precision"]),
        row("batches", lambda s: s["batching"]),
        row("time to target", _reached),
        row("at the target", at_target),
        row("best dev CER", lambda s: f"{s['best_cer']:.1%} at {s['best_cer_at_s']:.0f} s"),
        row(
            "trained",
            lambda s: (
                f"{s['train_seconds']:.0f} s, {s['steps']} steps, "
                f"{s['audio_seconds'] / 3600:.2f} h audio"
            ),
        ),
        row("scoring (not on the clock)", lambda s: f"{s['eval_seconds']:.0f} s"),
    ]
    if r["ratio"] is not None:
        lines.append(f"  reference / speechswarm time to target: {r['ratio']:.2f}x")
    elif r["ratio_at_least"] is not None:
        lines.append(
            f"  reference / speechswarm time to target: > {r['ratio_at_least']:.2f}x "
            "(the reference did not reach it)"
        )
    elif r["ratio_at_most"] is not None:
        lines.append(
            f"  reference / speechswarm time to target: < {r['ratio_at_most']:.2f}x "
            "(speechswarm did not reach it)"
        )
    else:
        lines.append("  neither loop reached the target within its budget")
    for name in ("reference", "speechswarm"):
        lines.append(f"  {name} curve: training s, steps, audio h, dev CER, LR, load")
        for c in r[name]["curve"]:
            lines.append(
                f"    {c['train_seconds']:8.0f} {c['steps']:7d} {c['audio_seconds'] / 3600:7.2f}"
                f" {c['cer']:8.1%} {c['lr']:10.2e} {c['load']:6.2f}"
            )
    lines.append(f"  {r['date']}, commit {r['commit']}, {r['machine']}, torch {r['torch']}")
    return "\n".join(lines)
