"""Poisoned agents in the P2P simulation: one planted liar per trial, its messages counted.

    python -m speechswarm.chaos.poison --trials 36 --jobs 2 --out runs/chaos-poison

Each trial runs `p2p.simulate` with one agent that sends corrupted weights every round
(`p2p.faulty_agents`, `p2p.fault`; see `p2p.mixing.corrupt`) and compares it with the same
experiment where that agent stays honest (same seed: the clean run). Attacks: `nan` (one NaN
per tensor), `scale` (x1e6), `random` (Gaussian weights with each tensor's own mean and
std), `sign_flip`, `stale` (the agent's round-0 weights, replayed every round) and
`wrong_shape`; aggregations `mean`, `median`, `trimmed_mean` (trim 0.2). Trial i takes the
(attack, aggregation) cell i mod 18 and seed `--seed` + i // 18; the seed picks the data
split, the training and which agent lies.

The experiment: 5 agents, one speaker each of a small tone language (`write_tone_language`),
40 % of each speaker's utterances held out; gossip on a complete graph (each agent mixes its
own state and 4 received ones: trimmed mean cuts one value per side); rounds of 10 Adam steps
on batches of 4, a ~40k-parameter model (LSTM 48), one thread per process. All agents are
honest for the first `--clean-rounds` (20, with `mean`; run once per seed and shared); the
liar lies in the remaining rounds (10 of `--rounds` 30), under the cell's aggregation.

What is counted, over the messages the liar sent to honest agents (`p2p.sync.Counters`):
- refused: validation threw it out before aggregation (`p2p.validate`: NaN/Inf, a norm off by
  more than `p2p.max_norm_ratio`; other names or shapes are refused even with --no-validate);
- outvoted: accepted, but the aggregate stayed inside the range of the honest states it was
  computed from, coordinate by coordinate (`mixing.within_range`): bounded by honest spread;
- through: neither. A trial counts as rejected when nothing got through.
Honest agents' CER: the mean over honest agents of their model's CER (after local training,
before mixing: the simulation's headline view) on 160 held-out utterances of the honest
agents' 4 speakers (40 each, drawn apart from the training corpus). The target per robust
cell (median, trimmed mean): >= 95 % of trials rejected and every trial's honest CER within
1 point of its clean run. `mean` is the baseline. `<out>/poison.json` holds every trial,
`<out>/poison.md` the table. 36 trials take ~5 CPU-minutes (20 clean rounds; 11 from the first
round); --jobs 2 runs the seeds side by side (4.4 min wall on 2 cores loaded by other jobs).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speechswarm.atomic import atomic_open

ATTACKS = {  # name -> (p2p.fault, p2p.fault_scale)
    "nan": ("nan", 0.0),
    "scale": ("scale", 1e6),
    "random": ("random", 0.0),
    "sign_flip": ("sign_flip", 0.0),
    "stale": ("stale", 0.0),
    "wrong_shape": ("wrong_shape", 0.0),
}
AGGREGATIONS = ("mean", "median", "trimmed_mean")
ROBUST = ("median", "trimmed_mean")
TARGET_REJECTED = 0.95  # share of a robust cell's trials with nothing through
TARGET_CER_POINTS = 1.0  # |honest CER - clean run's| in points, every trial
AGENTS = 5
LETTERS = "abcdef"
_say = functools.partial(print, flush=True)  # progress lines, also from worker processes


# ---------------------------------------------------------------------- the corpus


def write_tone_language(
    out: Path,
    speakers: int = AGENTS,
    per: int = 50,
    seed: int = 0,
    *,
    letters: str = LETTERS,
    step: float = 1.3,
    shortest: float = 0.1,
    jitter: float = 0.04,
    speaker_step: float = 0.03,
) -> Path:
    """A tone language (idempotent: an existing manifest is kept): each of `letters` is a tone,
    `step` times the one before from 300 Hz (30 %: 300-1,114 Hz for a-f), `shortest`-0.2 s
    long with +-`jitter` pitch, a random second harmonic, noise and gaps; each speaker's pitch
    `speaker_step` off the next one's. `per` utterances of 2-4 letters per speaker, 16 kHz
    FLAC; returns the manifest."""
    import soundfile as sf

    from speechswarm.data.manifest import Utterance, write_manifest

    manifest = out / "tones.jsonl"
    if manifest.is_file():
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sr, utts = 16000, []
    for s in range(speakers):
        shift = 1.0 + speaker_step * (s - speakers / 2)
        for j in range(per):
            text = "".join(rng.choice(list(letters), size=rng.integers(2, 5)))
            parts = [0.01 * rng.standard_normal(int(0.05 * sr))]
            for ch in text:
                t = np.arange(int(rng.uniform(shortest, 0.2) * sr)) / sr  # seconds
                f = 300 * step ** letters.index(ch) * shift * rng.uniform(1 - jitter, 1 + jitter)
                tone = rng.uniform(0.2, 0.6) * np.sin(2 * math.pi * f * t)
                tone += 0.2 * rng.uniform(0, 1) * np.sin(2 * math.pi * 2 * f * t)
                tone += 0.05 * rng.standard_normal(len(t))
                parts += [tone, 0.01 * rng.standard_normal(int(rng.uniform(0.02, 0.08) * sr))]
            wave = np.concatenate(parts).astype(np.float32)
            path = out / f"s{s}-{j}.flac"
            sf.write(path, wave, sr, format="FLAC", subtype="PCM_16")
            utts.append(Utterance(f"s{s}-{j}", str(path), len(wave) / sr, text, f"s{s}"))
    write_manifest(manifest, utts)
    return manifest


def tone_corpus(out: Path) -> tuple[Path, Path]:
    """(train manifest: 50 utterances per speaker, split into agents; shared test set: 40 per
    speaker, drawn apart)."""
    return write_tone_language(out / "train"), write_tone_language(out / "test", per=40, seed=1)


# ---------------------------------------------------------------------- one simulation


def overrides(corpus: tuple[Path, Path], out: Path, aggregation: str, seed: int, rounds: int,
              validate: bool) -> list[str]:  # fmt: skip
    train, test = corpus
    return [
        f"data.train_manifest={train}", f"data.dev_manifest={train}", f"data.test_manifest={test}",
        "data.validate=false", "data.num_workers=0", "data.speed_factors=[]",
        "data.max_batch_size=4", "augment.gain_db=null", "augment.noise_prob=0",
        "augment.freq_masks=0", "augment.time_masks=0", "augment.vtlp_alpha=null",
        "features.n_mels=40",
        "model.conv_channels=[4,4]", "model.rnn_hidden=48", "model.rnn_layers=1", "train.inter_ctc_layers=[]",
        "optim.name=adam", "optim.schedule=cosine", "optim.warmup_steps=10", "optim.lr=8e-3",
        "train.num_threads=1", "train.precision=fp32", "train.device=cpu", f"train.seed={seed}",
        f"train.out_dir={out}", f"p2p.agents={AGENTS}", "p2p.partition=speaker",
        "p2p.test_fraction=0.4", "p2p.topology=complete", f"p2p.rounds={rounds}",
        "p2p.local_steps=10", f"p2p.eval_every={rounds}", f"p2p.checkpoint_every={rounds}",
        "p2p.global_test_max=0", "p2p.train_score_max=0", f"p2p.aggregation={aggregation}",
        f"p2p.validate={str(validate).lower()}", f"p2p.seed={seed}",
    ]  # fmt: skip


def simulate(corpus, out: Path, aggregation: str, seed: int, rounds: int, validate: bool,
             liar: int, attack: str = "", start: Path | None = None,
             stop_after: int = 0) -> tuple[list[dict], dict]:  # fmt: skip
    """Gossip of the campaign's experiment in `out` (emptied first); agent `liar` sends
    `attack` ("": honest). Continued from the simulation checkpoint `start` if given, stopped
    after `stop_after` rounds if set. Agents are scored on the shared test set's utterances
    of every speaker but the liar's. Returns the last round's rows (one per agent) and the
    agents' message counters."""
    from speechswarm.checkpoint import load_checkpoint
    from speechswarm.config import load_config
    from speechswarm.data.manifest import read_manifest
    from speechswarm.p2p.experiment import make_agents
    from speechswarm.p2p.report import read_rows
    from speechswarm.p2p.runner import simulate_run

    shutil.rmtree(out, ignore_errors=True)
    extra = []
    if attack:
        fault, scale = ATTACKS[attack]
        extra = [f"p2p.faulty_agents=[{liar}]", f"p2p.fault={fault}", f"p2p.fault_scale={scale}"]
    cfg = load_config("tiny", overrides(corpus, out, aggregation, seed, rounds, validate) + extra)
    agents = make_agents(cfg, out)
    liars = {u.speaker for u in (*agents[liar].train, *agents[liar].test)}
    test = [u for u in read_manifest(corpus[1]) if u.speaker not in liars]
    if start is not None:
        (out / "run").mkdir(parents=True)
        shutil.copyfile(start, out / "run" / "checkpoint.pt")
    stop = (lambda done: done >= stop_after) if stop_after else None
    result = simulate_run(cfg, "gossip", "complete", agents, test, out / "run",
                          resume=start is not None, should_stop=stop)  # fmt: skip
    rows = read_rows(out / "run" / "metrics.jsonl")
    rows = [r for r in rows if r["round"] == result["round"]]
    counters = load_checkpoint(result["dir"] / "checkpoint.pt")["counters"]
    return rows, {int(k): v for k, v in counters.items()}


# ---------------------------------------------------------------------- trials


@dataclass
class PoisonTrial:
    index: int
    attack: str
    aggregation: str
    seed: int
    liar: int  # the poisoned agent
    messages: int = 0  # the liar's messages honest agents received
    refused: int = 0  # ... refused by validation
    outvoted: int = 0  # ... accepted, aggregate inside the honest states' range
    honest_refused: int = 0  # honest agents' messages refused by honest agents (false alarms)
    reasons: dict = field(default_factory=dict)  # honest agents' refusals by reason
    max_shift: float | None = 0.0  # largest |agg with - without liar| / |without|; None: inf
    cer_clean: float = math.nan  # honest agents' mean CER on the honest speakers' test set, clean
    cer: float = math.nan  # the same with the liar
    own_cer_clean: float = math.nan  # honest agents' mean CER on their own test splits
    own_cer: float = math.nan
    seconds: float = 0.0
    error: str = ""

    @property
    def through(self) -> int:
        return self.messages - self.refused - self.outvoted

    @property
    def rejected(self) -> bool:
        return not self.error and self.messages > 0 and self.through == 0

    @property
    def delta_points(self) -> float:
        return 100.0 * (self.cer - self.cer_clean)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(through=self.through, rejected=self.rejected, delta_points=self.delta_points)
        return _finite(d)


def _finite(d: dict) -> dict:
    """`d` with non-finite floats as None (JSON has no NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def honest_cer(rows: list[dict], liar: int, key: str) -> float:
    vals = [r[key] for r in rows if r["agent"] != liar]
    return math.nan if any(v is None for v in vals) else float(np.mean(vals))


def fill_trial(t: PoisonTrial, rows: list[dict], counters: dict, clean_rows: list[dict]) -> None:
    honest = [r for r in rows if r["agent"] != t.liar]
    t.messages = sum(r["poisoned_recv"] for r in honest)
    t.refused = sum(r["poisoned_refused"] for r in honest)
    t.outvoted = sum(r["poisoned_outvoted"] for r in honest)
    t.honest_refused = sum(r["rejected"] - r["poisoned_refused"] for r in honest)
    shifts = [r["poison_shift"] for r in honest]
    t.max_shift = None if any(s is None for s in shifts) else max(shifts)
    for r in honest:
        for reason, n in counters[r["agent"]]["reasons"].items():
            t.reasons[reason] = t.reasons.get(reason, 0) + n
    t.cer, t.own_cer = honest_cer(rows, t.liar, "global_cer"), honest_cer(rows, t.liar, "own_cer")
    t.cer_clean = honest_cer(clean_rows, t.liar, "global_cer")
    t.own_cer_clean = honest_cer(clean_rows, t.liar, "own_cer")


def run_poison_campaign(out, trials: int = 36, rounds: int = 30, clean_rounds: int = 20,
                        seed: int = 0, attacks=tuple(ATTACKS), aggregations=AGGREGATIONS,
                        validate: bool = True, jobs: int = 1, log=_say) -> list[PoisonTrial]:  # fmt: skip
    """Run the campaign in `out` (see the module docstring); writes `out/poison.json` and
    `out/poison.md` and returns the trials. `jobs` > 1: seeds in parallel processes."""
    if not 0 <= clean_rounds < rounds:
        raise ValueError(f"clean rounds must be in [0, rounds), got {clean_rounds} of {rounds}")
    out = Path(out).resolve()
    corpus = tone_corpus(out / "corpus")
    cells = [(a, g) for a in attacks for g in aggregations]
    by_seed: dict[int, list[PoisonTrial]] = {}
    for i in range(trials):
        attack, aggregation = cells[i % len(cells)]
        s = seed + i // len(cells)
        liar = random.Random(s).randrange(AGENTS)
        by_seed.setdefault(s, []).append(PoisonTrial(i, attack, aggregation, s, liar))
    work = [(corpus, out, ts, rounds, clean_rounds, validate, trials) for ts in by_seed.values()]
    started = time.perf_counter()
    if jobs > 1 and len(work) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(work)), mp_context=context,
                                 initializer=_init_worker, initargs=(os.getpid(),)) as pool:  # fmt: skip
            done = list(pool.map(_run_seed, *zip(*work, strict=True)))
    else:
        done = [_run_seed(*w, log=log) for w in work]
    results = sorted((t for ts in done for t in ts), key=lambda t: t.index)
    settings = {"trials": trials, "rounds": rounds, "clean_rounds": clean_rounds, "seed": seed,
                "validate": validate, "jobs": jobs,
                "attacks": list(attacks), "aggregations": list(aggregations),
                "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    summary = [_finite(dict(row, trials=len(row["trials"]))) for row in cell_rows(results)]
    with atomic_open(out / "poison.json") as f:
        json.dump({"settings": settings, "cells": summary,
                   "trials": [t.to_dict() for t in results]}, f, indent=1)  # fmt: skip
    with atomic_open(out / "poison.md") as f:
        f.write(table(results) + "\n")
    return results


def _run_seed(corpus, out: Path, trials: list[PoisonTrial], rounds: int, clean_rounds: int,
              validate: bool, total: int, log=_say) -> list[PoisonTrial]:  # fmt: skip
    """One seed's trials: the clean swarm's first `clean_rounds` (shared), each aggregation's
    clean run from there, then every trial's poisoned run."""
    s = trials[0].seed
    start, clean = None, {}
    for t in trials:
        t0 = time.perf_counter()
        try:
            if clean_rounds and start is None:
                simulate(corpus, out / f"start-{s}", "mean", s, rounds, validate, t.liar,
                         stop_after=clean_rounds)  # fmt: skip
                start = out / f"start-{s}" / "run" / "checkpoint.pt"
            if t.aggregation not in clean:
                clean[t.aggregation] = simulate(corpus, out / f"clean-{t.aggregation}-{s}",
                                                t.aggregation, s, rounds, validate, t.liar,
                                                start=start)[0]  # fmt: skip
            rows, counters = simulate(corpus, out / f"trial-{t.index:03d}", t.aggregation, s,
                                      rounds, validate, t.liar, t.attack, start)  # fmt: skip
            fill_trial(t, rows, counters, clean[t.aggregation])
        except Exception as e:  # a simulation a liar crashed is a result, not a campaign error
            t.error = f"{type(e).__name__}: {e}"
        t.seconds = round(time.perf_counter() - t0, 1)
        log(f"trial {t.index + 1}/{total}: {t.attack} under {t.aggregation} (seed {s}, agent "
            f"{t.liar}): {t.messages} poisoned messages, {t.refused} refused, {t.outvoted} "
            f"outvoted, {t.through} through; honest CER {_pct(t.cer_clean)} -> {_pct(t.cer)}, "
            f"{t.seconds:.0f} s" + (f"; {t.error}" if t.error else ""))  # fmt: skip
    return trials


def _init_worker(parent: int) -> None:
    from speechswarm.p2p.workspace import _exit_with_parent

    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


# ---------------------------------------------------------------------- verdicts and table


def cell_rows(trials: list[PoisonTrial]) -> list[dict]:
    """One row per (attack, aggregation) cell, in the trials' order, with its verdict."""
    cells: dict[tuple[str, str], list[PoisonTrial]] = {}
    for t in trials:
        cells.setdefault((t.attack, t.aggregation), []).append(t)
    return [{"attack": a, "aggregation": g, "trials": ts, **verdict(ts)}
            for (a, g), ts in cells.items()]  # fmt: skip


def verdict(trials: list[PoisonTrial]) -> dict:
    """Whether a cell's trials meet the target, and why not."""
    rejected = sum(t.rejected for t in trials)
    deltas = [t.delta_points for t in trials]
    worst = max(deltas, key=lambda d: abs(d) if math.isfinite(d) else math.inf)
    why = []
    if rejected < TARGET_REJECTED * len(trials):
        why.append(f"{len(trials) - rejected}/{len(trials)} trials let poisoned weights through"
                   if not any(t.error for t in trials) else "a simulation failed")  # fmt: skip
    if not (math.isfinite(worst) and abs(worst) <= TARGET_CER_POINTS):
        side = " (better)" if worst < 0 else ""
        why.append(f"honest CER {_points(worst)} points off the clean run{side}")
    return {"rejected": rejected, "worst_delta_points": worst, "met": not why, "why": why}


def poison_passed(trials: list[PoisonTrial]) -> bool:
    """Every robust-aggregation cell meets the target (mean is the baseline)."""
    return all(row["met"] for row in cell_rows(trials) if row["aggregation"] in ROBUST)


def table(trials: list[PoisonTrial]) -> str:
    lines = [
        "| attack | aggregation | trials | rejected | poisoned messages: refused / outvoted / "
        "through | honest messages refused | honest CER, clean | honest CER, poisoned "
        "| ΔCER, worst trial | target met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in cell_rows(trials):
        ts = row["trials"]
        clean, poisoned = np.mean([t.cer_clean for t in ts]), np.mean([t.cer for t in ts])
        met = "yes" if row["met"] else "no: " + "; ".join(row["why"])
        if row["aggregation"] not in ROBUST:
            met = f"baseline ({met})"
        lines.append(
            f"| {row['attack']} | {row['aggregation']} | {len(ts)} | {row['rejected']}/{len(ts)} "
            f"| {sum(t.refused for t in ts)} / {sum(t.outvoted for t in ts)} / "
            f"{sum(t.through for t in ts)} of {sum(t.messages for t in ts)} "
            f"| {sum(t.honest_refused for t in ts)} | {_pct(clean)} | {_pct(poisoned)} "
            f"| {_points(row['worst_delta_points'])} | {met} |"
        )
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if math.isfinite(x) else "n/a"


def _points(x: float) -> str:
    return f"{x:+.1f}" if math.isfinite(x) else "n/a"


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`python -m speechswarm.chaos.poison`: run the campaign, print the table; exit 0 when
    every robust-aggregation cell meets the target."""
    ap = argparse.ArgumentParser(
        prog="speechswarm chaos poison", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--out", default="runs/chaos-poison", help="campaign folder")
    ap.add_argument("--trials", type=int, default=36,
                    help="trials, dealt over the attack x aggregation cells in turn (36: 2 each)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=30, help="gossip rounds of each simulation")
    ap.add_argument("--clean-rounds", type=int, default=20,
                    help="rounds every agent is honest before the liar starts (0: from the start)")  # fmt: skip
    ap.add_argument(
        "--seed", type=int, default=0, help="first seed (one more per pass over the cells)"
    )
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset")
    ap.add_argument("--aggregations", default=",".join(AGGREGATIONS), help="comma-separated subset")
    ap.add_argument("--jobs", type=int, default=1,
                    help="processes running seeds side by side (2 on 2 idle cores: ~2x faster)")  # fmt: skip
    ap.add_argument("--no-validate", dest="validate", action="store_false",
                    help="receivers check names and shapes only, not values (NaN, norm): "
                    "the aggregation alone")  # fmt: skip
    args = ap.parse_args(argv)
    attacks, aggregations = args.attacks.split(","), args.aggregations.split(",")
    unknown = sorted(set(attacks) - set(ATTACKS)) + sorted(set(aggregations) - set(AGGREGATIONS))
    if unknown or args.trials < 1 or not 0 <= args.clean_rounds < args.rounds:
        ap.error(f"unknown attack or aggregation {unknown}; attacks: {', '.join(ATTACKS)}; "
                 f"aggregations: {', '.join(AGGREGATIONS)}; --trials >= 1 and "
                 "0 <= --clean-rounds < --rounds")  # fmt: skip
    trials = run_poison_campaign(args.out, args.trials, args.rounds, args.clean_rounds,
                                 args.seed, attacks, aggregations, args.validate, args.jobs)  # fmt: skip
    print(table(trials))
    robust = [t for t in trials if t.aggregation in ROBUST]
    if robust:
        print(f"robust aggregation: {sum(t.rejected for t in robust)}/{len(robust)} trials "
              f"rejected the liar; target {'met' if poison_passed(trials) else 'missed'} — "
              f"see {Path(args.out) / 'poison.json'}")  # fmt: skip
    return 0 if poison_passed(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
