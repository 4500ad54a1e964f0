"""Fault-injection campaigns: kill a training run anywhere, resume it, and count what was lost.

    speechswarm chaos kill --trials 20 --out runs/chaos      # ~15 min on 2 cores

The `kill` campaign trains the `tiny` preset on a small built-in corpus. A reference run,
never interrupted, gives the final weights. Each trial starts the same run in a folder of its
own, waits until its main process is in the phase the trial targets (a training step, data
loading, a dev evaluation, a checkpoint write), and kills it with SIGKILL, process group and
all. Then it checks:
- every checkpoint file left in the folder loads (`checkpoint.load_checkpoint`);
- `speechswarm train --resume auto` runs the run to its end, and its final weights equal the
  reference run's bit for bit;
- resuming the finished run once more takes no step and writes no checkpoint.

Phases are read from the process itself: `speechswarm` dumps its Python stack on SIGUSR1
(`faulthandler`), and the campaign kills once the main thread's stack is in the target phase.
Checkpoint writes take milliseconds, so the campaign widens them on purpose: the trials'
processes run with SPEECHSWARM_FAULT_SAVE_DELAY_S (a pause between writing a checkpoint's
temporary file and renaming it into place; see `checkpoint._atomic_write`).
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

from speechswarm.checkpoint import CheckpointError, load_checkpoint
from speechswarm.errors import UsageError

PHASES = ("step", "data", "evaluation", "checkpoint")
SAVE_DELAY_ENV = "SPEECHSWARM_FAULT_SAVE_DELAY_S"
# Markers in a faulthandler stack that place the main thread in a phase, checked in this
# order over the whole stack: a checkpoint write inside an evaluation's save is a checkpoint
# write, a dev batch being loaded is an evaluation, and data loading outside both (the loop
# waiting for its next training batch) is "data".
_MARKERS = (
    ("checkpoint", ("in save_checkpoint", "in _atomic_write", "in make_checkpoint_state")),
    ("evaluation", ("in evaluate_and_save", "in _evaluate")),
    ("step", ("in train_step",)),
    ("data", ("dataloader.py", "dataset.py", "in collate")),
)


@dataclass
class KillTrial:
    index: int
    target: str  # the phase the trial waited for
    phase: str  # the phase it was in when killed ("finished": it ended first; "died": it
    # exited with an error before the kill)
    killed_at: float  # seconds after the start
    step_at_kill: int  # the last checkpoint's step when killed (-1: none yet)
    checkpoints: int  # checkpoint files found after the kill
    unreadable: list[str] = field(default_factory=list)
    resumed_ok: bool = False
    identical: bool = False
    finished_ok: bool = False  # a further resume trained nothing and wrote nothing
    error: str = ""


@dataclass
class KillCampaign:
    trials: list[KillTrial]
    reference_seconds: float
    steps: int
    command: str

    def summary(self) -> dict:
        n = len(self.trials)
        phases = {p: sum(t.phase == p for t in self.trials)
                  for p in (*PHASES, "finished", "died", "other")}  # fmt: skip
        return {
            "trials": n,
            "kills_by_phase": {k: v for k, v in phases.items() if v},
            "before_first_checkpoint": sum(t.step_at_kill < 0 for t in self.trials),
            "resumed": sum(t.resumed_ok for t in self.trials),
            "bit_identical": sum(t.identical for t in self.trials),
            "unreadable_checkpoints": sum(len(t.unreadable) for t in self.trials),
            "finished_resume_ok": sum(t.finished_ok for t in self.trials),
        }

    def table(self) -> str:
        s = self.summary()
        kills = ", ".join(f"{k} {v}" for k, v in s["kills_by_phase"].items())
        return "\n".join([
            "| trials | kills by phase | killed before the first checkpoint | resumed to the end "
            "| final weights bit-identical | unreadable checkpoints "
            "| finished run resumed: no step, no write |",
            "|---|---|---|---|---|---|---|",
            f"| {s['trials']} | {kills} | {s['before_first_checkpoint']} | "
            f"{s['resumed']}/{s['trials']} | "
            f"{s['bit_identical']}/{s['trials']} | {s['unreadable_checkpoints']} | "
            f"{s['finished_resume_ok']}/{s['trials']} |",
        ])  # fmt: skip


def train_overrides(corpus: Path, out: Path, steps: int) -> list[str]:
    """The campaign's run: tiny, fp32, one thread, in-process data loading (so a kill can land
    while the main process decodes audio), a checkpoint every 2 steps and an evaluation every
    5 on a dev set large enough to take a moment."""
    return [
        f"data.train_manifest={corpus / 'train.jsonl'}",
        f"data.dev_manifest={corpus / 'dev.jsonl'}",
        "data.num_workers=0",
        "data.max_batch_size=4",
        "data.validate=false",
        "train.precision=fp32",
        "train.num_threads=1",
        f"train.max_steps={steps}",
        "train.checkpoint_every=2",
        "train.eval_every=5",
        "train.dev_max_utterances=24",
        "train.rnn_kernel=aten",
        "train.keep_last=3",
        "augment.time_masks=2",
        "model.dropout=0.1",
        f"train.out_dir={out}",
    ]


def run_kill_campaign(
    out: str | Path,
    *,
    trials: int = 20,
    steps: int = 24,
    seed: int = 0,
    corpus: str | Path | None = None,
    log=print,
) -> KillCampaign:
    """Run the kill campaign in `out`; writes `out/kill.json` and returns the result."""
    if trials < 1 or steps < 4:
        raise UsageError(f"chaos kill needs --trials >= 1 and --steps >= 4, got {trials}, {steps}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus_dir = Path(corpus) if corpus else _small_corpus(out / "corpus")
    rng = random.Random(seed)
    started = time.perf_counter()
    for old in [out / "reference", *out.glob("trial-*")]:  # runs of an earlier campaign
        if old.exists():
            shutil.rmtree(old)
    ref = _train(corpus_dir, out / "reference", steps)
    if ref.returncode != 0:
        raise RuntimeError(f"the reference run failed:\n{ref.stderr[-3000:]}")
    reference_seconds = time.perf_counter() - started
    weights = load_checkpoint(out / "reference" / "checkpoints" / "last.pt")["model"]
    log(f"chaos kill: reference run {reference_seconds:.1f} s, {steps} steps")
    results = []
    for i in range(trials):
        target = PHASES[i % len(PHASES)]
        trial = _kill_trial(i, target, corpus_dir, out / f"trial-{i:03d}", steps, weights, rng,
                            reference_seconds)  # fmt: skip
        results.append(trial)
        log(
            f"trial {i + 1}/{trials}: target {target}, killed in {trial.phase} at "
            f"{trial.killed_at:.1f} s (last checkpoint step {trial.step_at_kill}); "
            f"unreadable {len(trial.unreadable)}, resumed {trial.resumed_ok}, "
            f"identical {trial.identical}, finished resume {trial.finished_ok}"
            + (f"; {trial.error}" if trial.error else "")
        )
    campaign = KillCampaign(results, reference_seconds, steps, " ".join(_command(corpus_dir, out / "trial-N", steps)))  # fmt: skip
    (out / "kill.json").write_text(
        json.dumps({"summary": campaign.summary(), "trials": [asdict(t) for t in results],
                    "reference_seconds": reference_seconds, "steps": steps}, indent=1) + "\n"
    )  # fmt: skip
    return campaign


def _small_corpus(out: Path) -> Path:
    from speechswarm.data.prepare import synthesize_and_prepare

    synthesize_and_prepare(out, hours=0.03, progress=False)
    return out


def _command(corpus: Path, run_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "speechswarm", "train", "--config", "tiny",
            *train_overrides(corpus, run_dir, steps)]  # fmt: skip


def _env(delay: bool) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if delay:
        env[SAVE_DELAY_ENV] = "0.4"
    return env


def _train(corpus: Path, run_dir: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_command(corpus, run_dir, steps), *extra],
        capture_output=True,
        text=True,
        env=_env(delay=False),
        timeout=900,
    )


def _kill_trial(i, target, corpus, run_dir, steps, weights, rng, reference_seconds) -> KillTrial:
    run_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = run_dir / "killed.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            _command(corpus, run_dir, steps), stdout=subprocess.DEVNULL, stderr=err,
            env=_env(delay=True), start_new_session=True,
        )  # fmt: skip
    t0 = time.perf_counter()
    earliest = rng.uniform(0.15, 0.85) * reference_seconds
    phase = _wait_for_phase(proc, stderr_path, target, t0, earliest, 3 * reference_seconds + 30)
    killed_at = time.perf_counter() - t0
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    trial = KillTrial(i, target, phase, killed_at, _last_step(run_dir), 0)
    found = sorted((run_dir / "checkpoints").glob("*.pt"))
    trial.checkpoints = len(found)
    for path in found:
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            trial.unreadable.append(f"{path.name}: {e}")
    resumed = _train(corpus, run_dir, steps, "--resume", "auto")
    trial.resumed_ok = resumed.returncode == 0
    if not trial.resumed_ok:
        trial.error = resumed.stderr.strip().splitlines()[-1] if resumed.stderr.strip() else "?"
        return trial
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    trial.identical = final["train_state"]["step"] == steps and all(
        torch.equal(final["model"][k], v) for k, v in weights.items()
    )
    stamps = _stamps(run_dir)
    again = _train(corpus, run_dir, steps, "--resume", "auto")
    log_text = (run_dir / "train.log").read_text()
    trial.finished_ok = (
        again.returncode == 0
        and _stamps(run_dir) == stamps
        and "run already finished (max_steps)" in log_text
    )
    return trial


def _wait_for_phase(proc, stderr_path: Path, target: str, t0: float, earliest: float,
                    deadline: float) -> str:  # fmt: skip
    """Poll the process's stack (SIGUSR1 -> faulthandler dump on stderr) from `earliest`
    seconds on until it is in `target`; returns the phase it was in at the last look."""
    phase = "other"
    offset = 0
    while True:
        if proc.poll() is not None:
            return "finished" if proc.returncode == 0 else "died"
        elapsed = time.perf_counter() - t0
        if elapsed < earliest:
            time.sleep(min(0.05, earliest - elapsed))
            continue
        offset = stderr_path.stat().st_size
        try:
            os.kill(proc.pid, signal.SIGUSR1)
        except ProcessLookupError:
            proc.wait()
            return "finished" if proc.returncode == 0 else "died"
        stack = _read_dump(stderr_path, offset)
        if stack is None:
            continue
        phase = classify_stack(stack)
        if phase == target or elapsed > deadline:
            return phase


def _read_dump(path: Path, offset: int, timeout: float = 1.0) -> str | None:
    """The main thread's part of the faulthandler dump written after `offset`."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if "Current thread" in text:
            block = text[text.index("Current thread") :]
            lines = block.splitlines()[1:]
            frames = []
            for line in lines:
                if not line.startswith("  File "):
                    break
                frames.append(line)
            if frames:
                return "\n".join(frames)
        time.sleep(0.005)
    return None


def classify_stack(stack: str) -> str:
    """The training phase a faulthandler stack of the main thread shows (see _MARKERS)."""
    for phase, markers in _MARKERS:
        if any(m in stack for m in markers):
            return phase
    return "other"


def _last_step(run_dir: Path) -> int:
    index = run_dir / "checkpoints" / "index.json"
    try:
        return int(json.loads(index.read_text())["last"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _stamps(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("*")}
