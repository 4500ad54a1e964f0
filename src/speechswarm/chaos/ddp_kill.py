"""The kill campaign under DDP: one rank SIGKILLed at a random moment, the run resumed.

    speechswarm chaos ddp --trials 10 --out runs/chaos-ddp      # ~15 min on 2 cores

The run is the kill campaign's (`chaos kill`: `tiny`, fp32, a checkpoint every 2 steps, an
evaluation every 5) launched as `speechswarm train --nproc 2` (two processes, gloo). A
reference launch, never interrupted, gives the final weights. Each trial starts the same
launch in a folder of its own, waits until the run has saved a checkpoint of a random step
(none, 2, 4, ... up to the last but one) and then a random 0-2 s more, and SIGKILLs one
worker (rank 0 and rank 1 in turn; found by the RANK in its environment), checkpoint writes
widened as in `chaos kill`. (Drawing the moment from the reference's time put 6 of 10 kills
before the first checkpoint: starting two workers takes a third of the short run.) Trials alternate between the two ways a DDP run comes back:
- "restart": the launch has `--max-restarts 1`; torchrun restarts both workers, which resume
  from the last checkpoint by themselves and finish: the launch must exit 0;
- "resume": no restarts; the launch fails naming the rank, every checkpoint left must load,
  and `speechswarm train --nproc 2 ... --resume auto` finishes the run.
Either way the final weights must equal the reference's bit for bit.
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

from speechswarm.chaos.kill import SAVE_DELAY_ENV, _last_step, _small_corpus, train_overrides
from speechswarm.checkpoint import CheckpointError, load_checkpoint
from speechswarm.errors import UsageError

MODES = ("restart", "resume")


@dataclass
class DdpKillTrial:
    index: int
    mode: str  # "restart" (torchrun --max-restarts 1) or "resume" (then --resume auto)
    rank: int  # the rank killed
    killed_at: float  # seconds after the launch
    step_at_kill: int  # the last checkpoint's step when killed (-1: none yet)
    killed: bool = False  # False: the launch ended before the kill
    unreadable: list[str] = field(default_factory=list)
    finished_ok: bool = False  # the launch (restart) or the resume exited 0
    identical: bool = False
    seconds: float = 0.0  # the trial's wall time, resume included
    error: str = ""


def summary(trials: list[DdpKillTrial]) -> dict:
    out: dict = {"trials": len(trials)}
    for mode in MODES:
        mine = [t for t in trials if t.mode == mode]
        out[mode] = {
            "trials": len(mine),
            "killed": sum(t.killed for t in mine),
            "ranks_killed": sorted({t.rank for t in mine if t.killed}),
            "before_first_checkpoint": sum(t.killed and t.step_at_kill < 0 for t in mine),
            "finished": sum(t.finished_ok for t in mine),
            "bit_identical": sum(t.identical for t in mine),
            "unreadable_checkpoints": sum(len(t.unreadable) for t in mine),
        }
    return out


def table(trials: list[DdpKillTrial]) -> str:
    s = summary(trials)
    rows = [
        "| way back | trials | killed (rank 0 / rank 1) | killed before the first checkpoint "
        "| run finished | final weights bit-identical | unreadable checkpoints |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, label in (("restart", "torchrun restart"), ("resume", "`--resume auto`")):
        m = s[mode]
        mine = [t for t in trials if t.mode == mode and t.killed]
        per_rank = " / ".join(str(sum(t.rank == r for t in mine)) for r in (0, 1))
        rows.append(
            f"| {label} | {m['trials']} | {m['killed']} ({per_rank}) | "
            f"{m['before_first_checkpoint']} | {m['finished']}/{m['trials']} | "
            f"{m['bit_identical']}/{m['trials']} | {m['unreadable_checkpoints']} |"
        )
    return "\n".join(rows)


def run_ddp_kill_campaign(
    out: str | Path,
    *,
    trials: int = 10,
    steps: int = 16,
    seed: int = 0,
    corpus: str | Path | None = None,
    log=print,
) -> list[DdpKillTrial]:
    """Run the campaign in `out`; writes `out/ddp-kill.json` and returns the trials."""
    if trials < 1 or steps < 4:
        raise UsageError(f"chaos ddp needs --trials >= 1 and --steps >= 4, got {trials}, {steps}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus_dir = Path(corpus) if corpus else _small_corpus(out / "corpus")
    for old in [out / "reference", *out.glob("trial-*")]:
        if old.exists():
            shutil.rmtree(old)
    started = time.perf_counter()
    ref = subprocess.run(
        _command(corpus_dir, out / "reference", steps),
        capture_output=True,
        text=True,
        env=_env(delay=False),
        timeout=1200,
    )
    if ref.returncode != 0:
        raise RuntimeError(f"the reference DDP run failed:\n{ref.stderr[-3000:]}")
    reference_seconds = time.perf_counter() - started
    weights = load_checkpoint(out / "reference" / "checkpoints" / "last.pt")["model"]
    log(f"chaos ddp: reference launch {reference_seconds:.1f} s, {steps} steps, 2 processes")
    rng = random.Random(seed)
    results = []
    for i in range(trials):
        mode, rank = MODES[i % 2], (i // 2) % 2
        after_step = rng.choice([-1, *range(2, steps - 1, 2)])  # checkpoints every 2 steps
        delay = rng.uniform(0.0, 2.0)
        trial = _trial(i, mode, rank, (after_step, delay), corpus_dir, out / f"trial-{i:03d}",
                       steps, weights)  # fmt: skip
        results.append(trial)
        log(
            f"trial {i + 1}/{trials}: {mode}, rank {rank} "
            + (
                f"killed at {trial.killed_at:.1f} s (last checkpoint step {trial.step_at_kill})"
                if trial.killed
                else "not killed: the launch ended first"
            )
            + f"; unreadable {len(trial.unreadable)}, finished {trial.finished_ok}, "
            f"identical {trial.identical}, {trial.seconds:.0f} s"
            + (f"; {trial.error}" if trial.error else "")
        )
    (out / "ddp-kill.json").write_text(
        json.dumps(
            {
                "summary": summary(results),
                "trials": [asdict(t) for t in results],
                "reference_seconds": reference_seconds,
                "steps": steps,
                "command": " ".join(_command(corpus_dir, out / "trial-N", steps)),
            },
            indent=1,
        )
        + "\n"
    )
    return results


def _command(corpus: Path, run_dir: Path, steps: int, restarts: int = 0) -> list[str]:
    launch = [sys.executable, "-m", "speechswarm", "train", "--nproc", "2"]
    if restarts:
        launch += ["--max-restarts", str(restarts)]
    return [*launch, "--config", "tiny", *train_overrides(corpus, run_dir, steps)]


def _env(delay: bool) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if delay:
        env[SAVE_DELAY_ENV] = "0.4"
    return env


def _trial(i, mode, rank, moment, corpus, run_dir, steps, weights) -> DdpKillTrial:
    """One launch killed once `moment` = (a checkpoint of that step exists, then seconds)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    restarts = 1 if mode == "restart" else 0
    with open(run_dir / "launch.stderr", "wb") as err:
        proc = subprocess.Popen(
            _command(corpus, run_dir, steps, restarts),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(delay=True),
            start_new_session=True,
        )
    trial = DdpKillTrial(i, mode, rank, 0.0, -1)
    after_step, delay = moment
    try:
        while proc.poll() is None and (
            _last_step(run_dir) < after_step or _worker(proc.pid, rank) is None
        ):
            time.sleep(0.02)
        end = time.perf_counter() + delay
        while time.perf_counter() < end and proc.poll() is None:
            time.sleep(0.02)
        pid = _worker(proc.pid, rank)
        if pid is not None and proc.poll() is None:
            trial.step_at_kill = _last_step(run_dir)
            os.kill(pid, signal.SIGKILL)
            trial.killed, trial.killed_at = True, time.perf_counter() - t0
        code = proc.wait(timeout=1200)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # a hung launch: the workers go with it
        proc.wait()
        raise
    trial.unreadable = _unreadable(run_dir)
    if mode == "resume" and code != 0:
        resumed = subprocess.run(
            [*_command(corpus, run_dir, steps), "--resume", "auto"],
            capture_output=True,
            text=True,
            env=_env(delay=False),
            timeout=1200,
        )
        code = resumed.returncode
        if code != 0:
            trial.error = (resumed.stderr.strip().splitlines() or ["?"])[-1]
    elif code != 0:
        text = (run_dir / "launch.stderr").read_text(errors="replace").strip()
        trial.error = (text.splitlines() or ["?"])[-1]
    trial.finished_ok = code == 0
    trial.seconds = time.perf_counter() - t0
    if trial.finished_ok:
        final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        trial.identical = final["train_state"]["step"] == steps and all(
            torch.equal(final["model"][k], v) for k, v in weights.items()
        )
    return trial


def _worker(launcher: int, rank: int) -> int | None:
    """The pid of the launcher's worker process with RANK=`rank` (None if there is none now)."""
    children = []
    for task in Path(f"/proc/{launcher}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for child in children:
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


def _unreadable(run_dir: Path) -> list[str]:
    bad = []
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            bad.append(f"{path.name}: {e}")
    return bad


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/chaos-ddp")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpus", default=None, help="a prepared corpus folder (default: made)")
    args = p.parse_args(argv)
    trials = run_ddp_kill_campaign(
        args.out, trials=args.trials, steps=args.steps, seed=args.seed, corpus=args.corpus
    )
    print(table(trials))
    return 0 if passed(trials) else 1


def passed(trials: list[DdpKillTrial]) -> bool:
    """Every trial finished with the reference's weights and no checkpoint was unreadable."""
    return all(t.finished_ok and t.identical and not t.unreadable for t in trials)


if __name__ == "__main__":
    raise SystemExit(main())
