"""A disk that fills, a folder that turns read-only: on a real file system, not a mock.

    sudo .venv/bin/python -m speechswarm.chaos.disk --trials 10 --out runs/chaos-disk

Each trial trains the kill campaign's run (`chaos.kill.train_overrides`, a smaller model,
every checkpoint kept) with its output folder on a tmpfs of its own (Linux, root: `mount -t
tmpfs`). Trials alternate between two faults:

- full: the tmpfs holds 25-90 % of what the whole run writes (measured on the reference
  run), so the disk fills at a random checkpoint; then it is grown to 64 MB;
- read_only: the run (as user nobody, so that permissions bind) is made read-only, folder
  and files (`chmod -R a-w`), once its checkpoints reach a random step; then made writable.
  (A tmpfs cannot be remounted read-only while the run holds its log open for writing.)

Each must fail with one line on stderr that names the file (`error_line`; `one_line`: and
no traceback from any thread; `thread_traceback`: TensorBoard's writer thread printed one),
leave every checkpoint loadable and no temporary file, and, once the disk is fixed,
`--resume auto` must end with the reference run's weights bit for bit.
`<out>/disk.json` holds every trial.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from speechswarm.chaos.kill import _command, _env, _last_step, _small_corpus
from speechswarm.checkpoint import CheckpointError, load_checkpoint
from speechswarm.errors import UnavailableError, UsageError

SMALLER = ("model.conv_channels=[4,4]", "model.rnn_hidden=32", "model.rnn_layers=1", "train.inter_ctc_layers=[]",
           "train.keep_last=0")  # fmt: skip
FAULTS = ("full", "read_only")


@dataclass
class DiskTrial:
    index: int
    fault: str  # one of FAULTS
    size_kb: int = 0  # full: the tmpfs size; read_only: 0
    ro_at_step: int = 0  # read_only: the checkpoint step at which it was made read-only
    returncode: int = 0
    error_line: bool = False  # exit 1 with `speechswarm train: error: <path>: ...`
    one_line: bool = False  # that line and no traceback at all on stderr
    thread_traceback: bool = False  # a traceback printed by another thread (TensorBoard's)
    message: str = ""
    intact: bool = False  # every checkpoint loads, no temporary file (read_only: nothing changed)
    resumed_identical: bool = False
    errors: list[str] = field(default_factory=list)


def run_disk_campaign(
    out: str | Path, trials: int = 10, steps: int = 12, seed: int = 0, corpus=None, log=print
) -> list[DiskTrial]:
    """Run `trials` trials in `out` (see the module docstring); writes `out/disk.json`."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        raise UnavailableError("chaos disk mounts a tmpfs per trial: run it as root on Linux")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(corpus) if corpus else _small_corpus(out / "corpus")
    shared = out / "corpus-readable"  # a copy user nobody can read (manifests are 0600)
    shutil.rmtree(shared, ignore_errors=True)
    shutil.copytree(corpus, shared)
    subprocess.run(["chmod", "-R", "a+rX", str(shared)], check=True)
    corpus = shared
    ref_dir = out / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref = _train(corpus, ref_dir, steps)
    if ref.returncode != 0:
        raise RuntimeError(f"the reference run failed:\n{ref.stderr[-3000:]}")
    weights = load_checkpoint(ref_dir / "checkpoints" / "last.pt")["model"]
    files = {p.stat().st_ino: p.stat().st_size for p in ref_dir.rglob("*") if p.is_file()}
    need_kb = sum(files.values()) // 1024  # by inode: last.pt and best.pt are hard links
    rng = random.Random(seed)
    results = []
    for i in range(trials):
        mnt = out / f"trial-{i:03d}"
        mnt.mkdir(exist_ok=True)
        trial = DiskTrial(i, FAULTS[i % len(FAULTS)])
        try:
            _disk_trial(trial, mnt, corpus, steps, weights, need_kb, rng)
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        results.append(trial)
        log(f"trial {i + 1}/{trials}: {trial.fault} (size {trial.size_kb} KB, step "
            f"{trial.ro_at_step}): exit {trial.returncode}, one line {trial.one_line}, intact "
            f"{trial.intact}, resumed identical {trial.resumed_identical}; {trial.message}")  # fmt: skip
    summary = {
        "trials": len(results),
        "by_fault": {f: sum(t.fault == f for t in results) for f in FAULTS},
        "error_line": sum(t.error_line for t in results),
        "one_line_error": sum(t.one_line for t in results),
        "thread_traceback": sum(t.thread_traceback for t in results),
        "intact": sum(t.intact for t in results),
        "resumed_identical": sum(t.resumed_identical for t in results),
        "run_writes_kb": need_kb,
    }
    (out / "disk.json").write_text(
        json.dumps({"summary": summary, "trials": [asdict(t) for t in results]}, indent=1) + "\n"
    )
    log(json.dumps(summary))
    return results


# Run as user nobody without capabilities: root writes through any permission bits.
AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             "--inh-caps=-all", "--bounding-set=-all")  # fmt: skip


def _args(corpus: Path, run_dir: Path, steps: int, extra, nobody: bool) -> list[str]:
    return [*(AS_NOBODY if nobody else ()), *_command(corpus, run_dir, steps), *SMALLER, *extra]


def _train(corpus, run_dir, steps, *extra, nobody=False) -> subprocess.CompletedProcess:
    return subprocess.run(_args(corpus, run_dir, steps, extra, nobody), capture_output=True,
                          text=True, env=_env(delay=False), timeout=900)  # fmt: skip


def _mount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], check=True)


def _remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def _disk_trial(trial, mnt, corpus, steps, weights, need_kb, rng) -> None:
    run_dir = mnt / "run"
    if trial.fault == "full":
        trial.size_kb = int(rng.uniform(0.25, 0.9) * need_kb)
        _mount(mnt, f"size={trial.size_kb}k")
        failed = _train(corpus, run_dir, steps)
        _judge_failure(trial, failed, run_dir)
        _remount(mnt, "size=64m")
    else:
        _mount(mnt, "size=64m,mode=1777")
        trial.ro_at_step = rng.randrange(2, steps - 1)
        failed = _train_until_read_only(trial.ro_at_step, corpus, run_dir, steps)
        _judge_failure(trial, failed, run_dir)
        subprocess.run(["chmod", "-R", "u+w", str(run_dir)], check=True)
    nobody = trial.fault == "read_only"
    resumed = _train(corpus, run_dir, steps, "--resume", "auto", nobody=nobody)
    if resumed.returncode != 0:
        trial.errors.append("resume: " + (resumed.stderr.strip().splitlines() or ["?"])[-1])
        return
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    trial.resumed_identical = final["train_state"]["step"] == steps and all(
        torch.equal(final["model"][k], v) for k, v in weights.items()
    )


def _train_until_read_only(at_step: int, corpus, run_dir: Path, steps: int):
    """Train as nobody; once the checkpoint index reaches `at_step`, chmod the run read-only."""
    run_dir.mkdir()
    shutil.chown(run_dir, "nobody")
    if subprocess.run([*AS_NOBODY, "test", "-w", str(run_dir)]).returncode != 0:
        raise UsageError(f"{run_dir}: user nobody cannot reach it; choose an --out it can")
    proc = subprocess.Popen(_args(corpus, run_dir, steps, (), nobody=True), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(delay=False))  # fmt: skip
    while proc.poll() is None and _last_step(run_dir) < at_step:
        time.sleep(0.01)
    reached = _last_step(run_dir)
    subprocess.run(["chmod", "-R", "a-w", str(run_dir)], check=True)
    _, stderr = proc.communicate(timeout=900)
    if reached < at_step:  # it ended (or failed) before the fault: not this trial's failure
        stderr += f"\nchaos disk: the run ended at checkpoint step {reached}, before {at_step}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


def _judge_failure(trial: DiskTrial, proc: subprocess.CompletedProcess, run_dir: Path) -> None:
    trial.returncode = proc.returncode
    (run_dir.parent.parent / f"{run_dir.parent.name}.stderr").write_text(proc.stderr)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("speechswarm train: error:")]
    trial.message = errors[-1] if errors else (lines[-1] if lines else "")
    early = "chaos disk: the run ended" in proc.stderr
    trial.error_line = (
        proc.returncode == 1 and bool(errors) and str(run_dir) in trial.message and not early
    )
    # TensorBoard writes from a thread of its own, which prints its traceback on its way out
    trial.thread_traceback = "Exception in thread" in proc.stderr
    trial.one_line = trial.error_line and "Traceback" not in proc.stderr
    if "Traceback" in proc.stderr:
        tail = proc.stderr[proc.stderr.rindex("Traceback") :].strip().splitlines()[-1]
        trial.errors.append(f"traceback ({'thread' if trial.thread_traceback else 'main'}): {tail}")
    folder = run_dir / "checkpoints"
    leftovers = [p.name for p in folder.glob(".*.tmp")] if folder.is_dir() else []
    unreadable = []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            unreadable.append(str(e))
    trial.errors += [f"left {n}" for n in leftovers] + unreadable
    trial.intact = not leftovers and not unreadable


def _stamps(run_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def disk_passed(trials: list[DiskTrial]) -> bool:
    """Each fault gave a one-line error, left the checkpoints intact and resumed exactly."""
    return all(t.error_line and t.intact and t.resumed_identical for t in trials)
