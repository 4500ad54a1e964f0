"""The training loop: one readable path from batch to optimizer step, for every mode.

    speechswarm train --config tiny train.out_dir=runs/mine

`train()` builds a run (data, model, optimizer, checkpoints) and calls `run_steps()`: epochs
of `train_one_epoch()`, each batch one `train.step.train_step()`, dev evaluation at every
epoch's end, until a stop rule (`RunLimits`) fires. Distribution changes only what `run.sync`
(a `train.sync.Synchronizer`) does: at the step's sync point, and where every process must
take the same branch (`run.sync.agree`). DDP, Hogwild workers (`distributed.hogwild`), P2P
agents (`p2p.workspace`) and networked peers (`p2p.net.peer`) run these same functions with
their own synchronizer and stop rule. Under torchrun (`torchrun --nproc_per_node=2 -m
speechswarm train ...`) `train()` joins the process group itself; only rank 0 logs,
evaluates and saves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from speechswarm.checkpoint import load_checkpoint
from speechswarm.config import Config, dump_yaml, to_dict
from speechswarm.errors import InputNotFoundError
from speechswarm.evaluate import evaluate
from speechswarm.report import MetricsLogger
from speechswarm.tracking import open_tracking
from speechswarm.train import ddp
from speechswarm.train.assemble import build_run
from speechswarm.train.optim import BudgetedLR
from speechswarm.train.rng import restore_rng_state
from speechswarm.train.run import Run, make_checkpoint_state
from speechswarm.train.step import train_step

# Stop reasons that mean the run is done as configured (a resume of it trains nothing).
FINISHED = ("epochs", "max_steps", "time_budget", "target_wer", "early_stop")


@dataclass
class TrainState:
    """Counters that a checkpoint carries so a resumed run continues exactly."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch consumed (the sampler's resume point)
    audio_seconds: float = 0.0  # training audio seen (before speed perturbation)
    train_seconds: float = 0.0  # wall time spent in training steps, across resumes
    wall_seconds: float = 0.0  # the run's wall time (evaluation included), across resumes
    best_score: float = math.inf  # best dev WER or CER (train.select_by) so far
    evals_since_best: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    oom_in_row: int = 0
    oom_skipped: int = 0  # batches skipped because they ran out of memory
    skipped_utterances: int = 0
    loss_sum: float = 0.0  # finite training losses (per utterance, one per micro-batch)
    loss_count: int = 0

    def to_dict(self) -> dict:
        return {
            k: (v if not (isinstance(v, float) and math.isinf(v)) else -1.0)
            for k, v in vars(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        state = cls(**d)
        if state.best_score < 0:
            state.best_score = math.inf
        return state


@dataclass
class TrainResult:
    run_dir: Path
    stop_reason: str
    state: TrainState
    best_checkpoint: Path | None
    dev_history: list[dict] = field(default_factory=list)


def train(
    cfg: Config,
    *,
    resume: str | None = None,
    should_stop: Callable[[TrainState], bool] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train until epochs, steps, time budget, early stopping or target WER says stop.

    `resume`: a checkpoint path, or "auto" for the run folder's last checkpoint.
    `should_stop(state)` is asked after every step (interruptions, embedding in other loops):
    when it returns True the run saves a checkpoint and returns; resuming from it continues
    as if it had never stopped.

    In a torchrun worker (WORLD_SIZE > 1) this is DDP: the process group is joined here and
    left on return. When torchrun restarts a failed worker group (--max-restarts), the new
    workers resume from the run's last checkpoint unless `resume` names one.
    """
    if resume and resume != "auto" and not Path(resume).is_file():
        # Before setup: a typo should not cost a corpus validation or leave a run folder.
        raise InputNotFoundError(f"--resume {resume}: no such checkpoint")
    env = ddp.dist_env()
    if env.restart_count and not resume:
        resume = "auto"  # a restarted worker group continues from the last checkpoint
    created = False
    if env.is_distributed:
        created = ddp.init_distributed(
            env, ddp.worker_device(cfg.train.device, env), cfg.train.dist_timeout_min
        )
    try:
        result = _train(cfg, env, resume, should_stop, progress and env.is_main)
    except BaseException:
        ddp.shutdown(created, wait_for_all=False)  # the others fail on their own; no barrier
        raise
    ddp.shutdown(created, wait_for_all=True)
    return result


def _train(cfg: Config, env, resume, should_stop, progress: bool) -> TrainResult:
    run = build_run(cfg, progress=progress, env=env)
    try:
        return _train_run(run, cfg, resume, should_stop, progress)
    except BaseException as e:  # the metrics' files closed; an MLflow run ends FAILED/KILLED
        if run.metrics is not None and not run.metrics.closed:
            status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
            try:
                run.metrics.close(status)
            except Exception as close_error:  # never hide the error that stopped the run
                run.log.warning(f"closing the metrics failed too: {close_error}")
        raise


def _train_run(run: Run, cfg: Config, resume, should_stop, progress: bool) -> TrainResult:
    state = TrainState()
    rng_to_restore = None
    checkpoint_path = resume_path(run, resume)
    if checkpoint_path is not None:
        rng_to_restore = restore(run, state, checkpoint_path)
        run.log.info(f"resumed from {checkpoint_path} at step {state.step}, epoch {state.epoch}")
    if run.sync.is_main:
        mirror = open_tracking(cfg.train.tracking, cfg.train.tracking_uri, run.dir, to_dict(cfg))
        resume_step = state.step if checkpoint_path else None
        run.metrics = MetricsLogger(run.dir, resume_step=resume_step, mlflow=mirror)
        (run.dir / "config.yaml").write_text(dump_yaml(cfg))
    limits = RunLimits(run, state, should_stop)
    dev_history = run.dev_history
    finished = run.sync.agree(limits(state)) if checkpoint_path is not None else ""
    if finished in FINISHED:
        log_finished(run, state, finished)
        stop_reason = finished
    else:
        stop_reason = run_steps(
            run,
            state,
            limits,
            at_epoch_end=lambda s: evaluate_and_save(run, s, dev_history),
            rng_to_restore=rng_to_restore,
            progress=progress,
        )
    if stop_reason in ("max_steps", "time_budget") and run.last_eval_step != state.step:
        evaluate_and_save(run, state, dev_history)  # score the final weights: best.pt exists
    if run.last_save_step != state.step:
        save(run, state)
    # Each DDP rank counted only its own batches; the summary reports what all of them trained on.
    audio_per_rank = run.sync.gather(state.audio_seconds)
    if run.sync.is_main:
        run.finish(state, stop_reason, dev_history, audio_seconds=sum(audio_per_rank))
    return TrainResult(run.dir, stop_reason, state, run.checkpoints.best_path(), dev_history)


def log_finished(run: Run, state: TrainState, reason: str) -> None:
    """One line for a resumed run that had already finished: it trains nothing."""
    run.log.info(
        f"run already finished ({reason}) at step {state.step}, epoch {state.epoch}: "
        "nothing to train; raise that limit in the config to train on"
    )


def run_steps(
    run: Run,
    state: TrainState,
    stop: StopRule,
    *,
    at_epoch_end: Callable[[TrainState], str] | None = None,
    rng_to_restore: dict | None = None,
    progress: bool = False,
) -> str:
    """Train epoch after epoch from `state`'s place until `stop(state)` (asked before the
    first batch, after every step and at every epoch's end) or `at_epoch_end(state)` (the
    central run's dev evaluation) names a reason, which it returns.

    The outer loop of every mode: `speechswarm train` and DDP, Hogwild workers, a P2P agent's
    round, a networked peer. A run whose stop rule already holds takes no step."""
    reason = run.sync.agree(stop(state))
    while not reason:
        reason = train_one_epoch(run, state, stop, rng_to_restore, progress)
        rng_to_restore = None
        if reason:
            break
        state.epoch += 1  # before evaluating, so its checkpoint resumes at the next epoch
        state.batch_in_epoch = 0
        if at_epoch_end is not None:
            reason = at_epoch_end(state)
        if not reason:
            reason = run.sync.agree(stop(state))
    return reason


def train_one_epoch(
    run: Run,
    state: TrainState,
    stop: StopRule,
    rng_to_restore: dict | None = None,
    progress: bool = False,
) -> str:
    """Train on this epoch's remaining batches, one `train_step` each; return why it stopped
    ("" at the epoch's end). Dev evaluation and checkpoints every `train.eval_every` /
    `train.checkpoint_every` steps; a log line every `train.log_every`."""
    cfg = run.cfg.train
    run.sampler.set_epoch(state.epoch, state.batch_in_epoch)
    run.dataset_set_epoch(state.epoch)
    batches = iter(run.loader)  # starts the workers; they draw nothing from the global RNG
    if rng_to_restore is not None:
        restore_rng_state(rng_to_restore)  # dropout etc. continue where the checkpoint left off
    run.model.train()
    total = len(run.sampler)
    bar = tqdm(
        batches,
        total=total,
        desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
        disable=not (progress and run.sync.is_main),
        leave=False,
    )
    window = _Window()
    ready = time.perf_counter()  # when the loop last asked the loader for a batch
    for batch in bar:
        window.wait += time.perf_counter() - ready  # time the model sat idle waiting on data
        state.batch_in_epoch += 1
        result = train_step(run, state, batch)
        now = time.perf_counter()
        if result.flag:  # empty or skipped: no training time, no log line, no stop check
            ready = now
            continue
        if result.stepped and math.isfinite(result.grad_norm):
            window.add(result.loss, result.grad_norm)
        state.train_seconds += now - ready
        window.audio += result.audio_seconds
        window.seconds += now - ready
        ready = now
        stepped = result.stepped
        if stepped and state.step % cfg.log_every == 0:
            _log_window(run, state, window, bar)
            window = _Window()
        reason = run.sync.agree(stop(state))
        if reason:
            return reason
        if (
            stepped
            and cfg.eval_every
            and state.step % cfg.eval_every == 0
            and (state.batch_in_epoch < total)
        ):
            reason = evaluate_and_save(run, state, run.dev_history)
            if reason:
                return reason
        elif stepped and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            save(run, state)
        ready = time.perf_counter()  # evaluation and saving are not data wait
    return ""


class StopRule(Protocol):
    """Why a run should stop now ("" to go on), from its `TrainState`."""

    def __call__(self, state: TrainState) -> str: ...


class RunLimits:
    """The stop rules of `cfg.train`: epochs, max_steps, time budget, target WER, early
    stopping, and `should_stop(state)` ("interrupted"). Each reads `state` (and the dev
    history), so a resumed run whose rule already holds stops before its first step.

    The time budget counts the run's wall time across resumes: asking updates
    `state.wall_seconds`, which checkpoints carry."""

    def __init__(self, run: Run, state: TrainState, should_stop=None) -> None:
        self.run, self.cfg, self.should_stop = run, run.cfg.train, should_stop
        self.dev_history = run.dev_history
        run.wall_origin = time.perf_counter() - state.wall_seconds

    def __call__(self, state: TrainState) -> str:
        cfg = self.cfg
        tick(self.run, state)
        if state.epoch >= cfg.epochs:
            return "epochs"
        if cfg.max_steps and state.step >= cfg.max_steps:
            return "max_steps"
        if cfg.time_budget_min and state.wall_seconds >= cfg.time_budget_min * 60:
            return "time_budget"
        if cfg.target_wer and self.dev_history and self._last_wer() <= cfg.target_wer:
            return "target_wer"
        if cfg.early_stop_patience and state.evals_since_best >= cfg.early_stop_patience:
            return "early_stop"
        if self.should_stop is not None and self.should_stop(state):
            return "interrupted"
        return ""

    def _last_wer(self) -> float:
        return self.dev_history[-1]["dev_wer"]


def tick(run: Run, state: TrainState) -> None:
    """Bring `state.wall_seconds` up to now (a run the loop's stop rule times)."""
    if run.wall_origin is not None:
        state.wall_seconds = time.perf_counter() - run.wall_origin


def save(run: Run, state: TrainState, metric: float | None = None) -> None:
    """Checkpoint the run (every process calls it; the main process writes)."""
    tick(run, state)  # a checkpoint after an evaluation counts the evaluation's time
    ckpt = make_checkpoint_state(run, state)
    if ckpt is not None:
        run.checkpoints.save(ckpt, step=state.step, metric=metric)
    run.last_save_step = state.step


def evaluate_and_save(run: Run, state: TrainState, dev_history: list[dict]) -> str:
    """Score the dev set, log it, checkpoint (tracking the best), apply the stop rules.

    Every process calls it; the main one evaluates while the others wait in `save`."""
    run.last_eval_step = state.step
    reason, score = "", None
    if run.sync.is_main:
        reason, score = _evaluate(run, state, dev_history)
    save(run, state, metric=score)
    return run.sync.agree(reason)


def _evaluate(run: Run, state: TrainState, dev_history: list[dict]) -> tuple[str, float]:
    cfg = run.cfg.train
    result = evaluate(
        run.model,
        run.extractor,
        run.dev_loader(),
        run.tokenizer,
        device=run.device,
        amp_dtype=run.amp_dtype,
        speakers=run.dev_speakers,
        references=run.dev_references,
    )
    row = {"step": state.step, "epoch": state.epoch, "dev_wer": result.wer, "dev_cer": result.cer}
    dev_history.append(row)
    run.metrics.log(
        state.step,
        epoch=state.epoch,
        dev_wer=result.wer,
        dev_cer=result.cer,
        dev_seconds=result.seconds,
    )
    run.log.info(
        f"step {state.step}: dev WER {result.wer:.1%} CER {result.cer:.1%} "
        f"({result.utterances} utts, {result.seconds:.0f} s)"
    )
    score = result.wer if cfg.select_by == "wer" else result.cer
    if score < state.best_score:
        state.best_score = score
        state.evals_since_best = 0
    else:
        state.evals_since_best += 1
    if cfg.target_wer and result.wer <= cfg.target_wer:
        return "target_wer", score
    if cfg.early_stop_patience and state.evals_since_best >= cfg.early_stop_patience:
        return "early_stop", score
    return "", score


def resume_path(run: Run, resume: str | None) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return run.checkpoints.latest()
    return Path(resume)  # train() checked that it exists


def restore(run: Run, state: TrainState, path: Path) -> dict:
    """Load a checkpoint into the run and `state`; returns the RNG state to restore."""
    ckpt = load_checkpoint(path)
    rng = run.load_state(ckpt)
    restored = TrainState.from_dict(ckpt["train_state"])
    vars(state).update(vars(restored))
    if isinstance(run.scheduler, BudgetedLR):
        run.scheduler.resume_clock(state.wall_seconds)  # the budget spans resumes
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != run.env.world_size and state.batch_in_epoch:
        # Batches are dealt to ranks in turn: the same share of the epoch is done.
        state.batch_in_epoch = state.batch_in_epoch * saved_world // run.env.world_size
    run.last_eval_step = run.dev_history[-1]["step"] if run.dev_history else None
    run.last_save_step = state.step
    return rng


class _Window:
    """Running sums between two log lines."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.audio = 0.0  # seconds of training audio
        self.seconds = 0.0  # wall seconds, data wait included
        self.wait = 0.0  # wall seconds spent waiting for the loader

    def add(self, loss: float, grad_norm: float) -> None:
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)


def _log_window(run: Run, state: TrainState, window: _Window, bar) -> None:
    """Log the window's mean loss and throughput, summed over processes under DDP."""
    parts = run.sync.gather(
        (sum(window.losses), len(window.losses), max(window.grad_norms, default=0.0),
         window.audio, window.seconds, window.wait)
    )  # fmt: skip
    if parts is None or run.metrics is None:
        return
    loss_sum, count, grad_norm, audio, seconds, wait = (
        sum(p[0] for p in parts),
        sum(p[1] for p in parts),
        max(p[2] for p in parts),
        sum(p[3] for p in parts),
        max(p[4] for p in parts),  # processes run side by side: wall time is the longest
        max(p[5] for p in parts),
    )
    if not count:
        return
    loss = loss_sum / count
    lr = run.optimizer.param_groups[0]["lr"]
    speed = audio / max(seconds, 1e-9)
    run.metrics.log(
        state.step,
        epoch=state.epoch,
        train_loss=loss,
        lr=lr,
        grad_norm=grad_norm,
        audio_seconds_per_second=speed,
        data_wait_fraction=wait / max(seconds, 1e-9),
        nonfinite_total=state.nonfinite_total,
    )
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", audio_s_per_s=f"{speed:.0f}")
