"""Kill a P2P simulation anywhere, resume it, compare it with one never interrupted.

    python -m speechswarm.chaos.p2p_kill --trials 10 --out runs/chaos-p2p

`speechswarm p2p` (in-process, `p2p-tiny` cut to a ~30k-parameter model, 4 agents split by
speaker, gossip on a ring and FedAvg, 8 rounds of 2 local steps, a checkpoint every round) on
the kill campaign's small corpus. A reference run gives each run's final `checkpoint.pt` and
`metrics.jsonl`. Each trial starts the same experiment and SIGKILLs its process group at a
random moment: once a random number of rounds (0 to 2 x rounds - 1, over the two runs in
turn) is done, plus a random part of a round's time (the checkpoint writes are widened by
SPEECHSWARM_FAULT_SAVE_DELAY_S as in `chaos kill`). It checks that every checkpoint left
loads, resumes with `--resume`, and compares: every agent's weights bit for bit, and every
row of metrics.jsonl but its timings. A further `--resume` of the finished experiment must write no
checkpoint. `<out>/p2p_kill.json` holds every trial.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from speechswarm.chaos.kill import _env, _small_corpus
from speechswarm.checkpoint import CheckpointError, load_checkpoint

RUNS = ("gossip-ring", "fedavg")
TIMING = ("train_seconds", "wall_time")


def p2p_command(corpus: Path, out: Path, rounds: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "speechswarm", "p2p", "--config", "p2p-tiny", "--workers", "0",
            *extra, f"data.train_manifest={corpus / 'train.jsonl'}",
            f"data.dev_manifest={corpus / 'dev.jsonl'}", f"data.test_manifest={corpus / 'test.jsonl'}",
            "data.validate=false", "data.max_batch_size=4", "model.conv_channels=[4,4]",
            "model.rnn_hidden=32", "model.rnn_layers=1", "train.inter_ctc_layers=[]", "train.precision=fp32",
            "train.num_threads=1", "p2p.agents=4", f"p2p.rounds={rounds}", "p2p.local_steps=2",
            "p2p.checkpoint_every=1", "p2p.eval_every=2", "p2p.global_test_max=8",
            "p2p.runs=[gossip/ring,fedavg]", f"train.out_dir={out}"]  # fmt: skip


@dataclass
class P2PKillTrial:
    index: int
    killed_at: float  # seconds after the start
    target_rounds: int = 0  # rounds done (over both runs, in turn) before the kill moment
    rounds_at_kill: dict[str, int] = field(default_factory=dict)  # run -> checkpointed round
    finished_before_kill: bool = False
    unreadable: list[str] = field(default_factory=list)
    resumed_ok: bool = False
    identical_weights: bool = False
    identical_rows: bool = False
    finished_ok: bool = False
    differences: list[str] = field(default_factory=list)
    error: str = ""


def run_p2p_kill_campaign(out, trials: int = 10, rounds: int = 8, seed: int = 0, corpus=None,
                          log=print) -> list[P2PKillTrial]:  # fmt: skip
    """Run the campaign in `out` (see the module docstring); writes `out/p2p_kill.json`."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(corpus).resolve() if corpus else _small_corpus(out / "corpus")
    for old in [out / "reference", *out.glob("trial-*")]:
        shutil.rmtree(old, ignore_errors=True)
    started = time.perf_counter()
    ref = subprocess.run(p2p_command(corpus, out / "reference", rounds), capture_output=True,
                         text=True, env=_env(delay=False), timeout=1800)  # fmt: skip
    if ref.returncode != 0:
        raise RuntimeError(f"the reference run failed:\n{ref.stderr[-3000:]}")
    ref_seconds = time.perf_counter() - started
    log(f"chaos p2p: reference run {ref_seconds:.1f} s, {rounds} rounds")
    rng = random.Random(seed)
    results = []
    per_round = ref_seconds / (len(RUNS) * rounds)
    for i in range(trials):
        when = (rng.randrange(len(RUNS) * rounds), rng.uniform(0, per_round))
        trial = _trial(i, corpus, out / f"trial-{i:03d}", out / "reference", rounds, when)
        results.append(trial)
        log(f"trial {i + 1}/{trials}: killed at {trial.killed_at:.1f} s (rounds saved "
            f"{trial.rounds_at_kill}); unreadable {len(trial.unreadable)}, resumed "
            f"{trial.resumed_ok}, weights {trial.identical_weights}, rows {trial.identical_rows}, "
            f"finished resume {trial.finished_ok}" + (f"; {trial.error}" if trial.error else ""))  # fmt: skip
    summary = {
        "trials": len(results),
        "finished_before_kill": sum(t.finished_before_kill for t in results),
        "unreadable_checkpoints": sum(len(t.unreadable) for t in results),
        "resumed": sum(t.resumed_ok for t in results),
        "identical_weights": sum(t.identical_weights for t in results),
        "identical_rows": sum(t.identical_rows for t in results),
        "finished_resume_ok": sum(t.finished_ok for t in results),
        "reference_seconds": round(ref_seconds, 1),
    }
    (out / "p2p_kill.json").write_text(
        json.dumps({"summary": summary, "trials": [asdict(t) for t in results]}, indent=1) + "\n"
    )
    log(json.dumps(summary))
    return results


def _trial(i, corpus, run_dir, ref_dir, rounds, when) -> P2PKillTrial:
    run_dir.mkdir(parents=True)
    with open(run_dir.parent / f"{run_dir.name}.killed.stderr", "wb") as err:
        proc = subprocess.Popen(p2p_command(corpus, run_dir, rounds), stdout=subprocess.DEVNULL,
                                stderr=err, env=_env(delay=True), start_new_session=True)  # fmt: skip
    t0 = time.perf_counter()
    target, extra_s = when  # rounds done over both runs, then a moment into the next
    while proc.poll() is None and _rounds_done(run_dir) < target:
        time.sleep(0.02)
    end = time.perf_counter() + extra_s
    while proc.poll() is None and time.perf_counter() < end:
        time.sleep(0.01)
    trial = P2PKillTrial(i, time.perf_counter() - t0, finished_before_kill=proc.poll() is not None)
    trial.target_rounds = target
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for name in RUNS:
        path = run_dir / name / "checkpoint.pt"
        if not path.exists():
            continue
        try:
            trial.rounds_at_kill[name] = int(load_checkpoint(path)["round"])
        except CheckpointError as e:
            trial.unreadable.append(str(e))
    resumed = subprocess.run(p2p_command(corpus, run_dir, rounds, "--resume"), capture_output=True,
                             text=True, env=_env(delay=False), timeout=1800)  # fmt: skip
    trial.resumed_ok = resumed.returncode == 0
    if not trial.resumed_ok:
        trial.error = (resumed.stderr.strip().splitlines() or ["?"])[-1]
        return trial
    _compare(trial, run_dir, ref_dir)
    stamps = {name: (run_dir / name / "checkpoint.pt").stat().st_mtime_ns for name in RUNS}
    again = subprocess.run(p2p_command(corpus, run_dir, rounds, "--resume"), capture_output=True,
                           text=True, env=_env(delay=False), timeout=1800)  # fmt: skip
    trial.finished_ok = again.returncode == 0 and stamps == {
        name: (run_dir / name / "checkpoint.pt").stat().st_mtime_ns for name in RUNS
    }
    return trial


def _compare(trial: P2PKillTrial, run_dir: Path, ref_dir: Path) -> None:
    """Every agent's final weights and every metrics row (timings aside) against the reference."""
    weights_equal, rows_equal = True, True
    for name in RUNS:
        a = load_checkpoint(ref_dir / name / "checkpoint.pt")
        b = load_checkpoint(run_dir / name / "checkpoint.pt")
        for k, state in a["states"].items():
            for key, tensor in state["model"].items():
                if not torch.equal(tensor, b["states"][k]["model"][key]):
                    weights_equal = False
                    trial.differences.append(f"{name} agent {k} {key}")
        rows_a, rows_b = _rows(ref_dir / name / "metrics.jsonl"), _rows(run_dir / name / "metrics.jsonl")  # fmt: skip
        if rows_a != rows_b:
            rows_equal = False
            diff = [f"{name} row {j}: {ra} != {rb}" for j, (ra, rb)
                    in enumerate(zip(rows_a, rows_b, strict=False)) if ra != rb]  # fmt: skip
            trial.differences += diff[:3] or [f"{name}: {len(rows_a)} rows != {len(rows_b)}"]
    trial.identical_weights, trial.identical_rows = weights_equal, rows_equal


def _rounds_done(run_dir: Path) -> int:
    """Rounds finished so far over RUNS (run one after the other): metrics rows / agents."""
    done = 0
    for name in RUNS:
        path = run_dir / name / "metrics.jsonl"
        if path.is_file():
            done += path.read_bytes().count(b"\n") // 4  # 4 agents, one row each per round
    return done


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def p2p_kill_passed(trials: list[P2PKillTrial]) -> bool:
    """Every resumed simulation equals the uninterrupted one, weights and rows."""
    return all(
        t.identical_weights and t.identical_rows and t.finished_ok and not t.unreadable
        for t in trials
    )
