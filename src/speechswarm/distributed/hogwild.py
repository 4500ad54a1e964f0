"""Hogwild: N CPU worker processes update one model in shared memory, without locks.

    speechswarm train --hogwild 2 --config tiny train.out_dir=runs/hogwild

The parent builds the run, moves the model's parameters and the optimizer's state (moments,
step counts) into shared memory and forks N workers. Worker i runs the ordinary
`run_steps()` on its own share of every epoch's batches (the sampler's rank i of N),
with its own seeds (offset by i); its optimizer steps write straight into the shared tensors,
racing the others' (Niu et al. 2011). At the loop's sync point a worker counts the step
globally, sets its learning rate from the global step and, when the parent asks, pauses.

The parent evaluates and checkpoints: it asks every worker to pause at its next sync point,
copies the weights and optimizer state (so a snapshot never holds half a step), lets them go
on and evaluates and saves the copy. A worker that dies (an exception, a kill) is reported by
index and exit code; the parent then saves a consistent snapshot of the others, stops them
and raises `HogwildWorkerFailed`; `--resume auto` continues from there.

Resuming restores weights, optimizer state, the global step and every worker's place in its
epoch, but not the interleaving of the workers' steps: unlike one process or DDP, a Hogwild
run is not reproducible step for step. Needs the fork start method (Linux) and a CPU device.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import multiprocessing as mp
import signal
import time
from collections.abc import Callable

import torch

from speechswarm.checkpoint import load_checkpoint
from speechswarm.config import Config, dump_yaml
from speechswarm.data.dataset import make_loader
from speechswarm.distributed.hogwild_sync import DONE, Control, HogwildWorkerSync, PipeSink
from speechswarm.errors import SpeechswarmError, UnavailableError, UsageError
from speechswarm.model import model_from_settings
from speechswarm.report import MetricsLogger
from speechswarm.train.assemble import build_run
from speechswarm.train.loop import (
    FINISHED,
    RunLimits,
    TrainResult,
    TrainState,
    evaluate_and_save,
    log_finished,
    resume_path,
    run_steps,
    save,
)
from speechswarm.train.optim import BudgetedLR
from speechswarm.train.rng import restore_rng_state, seed_everything
from speechswarm.train.run import RANK_SEED_STRIDE, Run
from speechswarm.train.training_data import make_sampler

POLL_SECONDS = 0.02  # how often the parent looks at the workers


class HogwildWorkerFailed(SpeechswarmError, RuntimeError):
    """A Hogwild worker process died; the message names it and the checkpoint to resume from."""


def train_hogwild(
    cfg: Config,
    *,
    workers: int,
    resume: str | None = None,
    should_stop: Callable[[TrainState], bool] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train with `workers` Hogwild processes until the stop rules of `cfg.train` say stop.

    Stop rules as in `train()`: epochs (every worker finished its share of each), max_steps
    (global; workers may overshoot by up to workers - 1 steps), time budget, target WER,
    early stopping, and `should_stop(state)`, asked by the parent between polls.
    """
    if workers < 1:
        raise UsageError(f"--hogwild needs at least 1 worker, got {workers}")
    if "fork" not in mp.get_all_start_methods():
        raise UnavailableError("Hogwild needs the 'fork' start method (Linux); use DDP (--nproc)")
    if cfg.data.shards:
        raise UsageError("Hogwild reads a manifest (data.train_manifest); data.shards is for DDP")
    if cfg.optim.accumulate != 1:
        raise UsageError("Hogwild steps after every batch: set optim.accumulate=1")
    run = build_run(cfg, progress=progress)
    if run.device.type != "cpu":
        raise UsageError(
            f"Hogwild shares one model in CPU memory; train.device={cfg.train.device} "
            f"resolved to {run.device}: use --device cpu, or DDP (--nproc) on GPUs"
        )
    if len(run.sampler.durations) < workers:
        raise UsageError(
            f"{len(run.sampler.durations)} utterances cannot be shared by {workers} workers"
        )
    state, positions, resumed = _resume(run, resume, workers)
    finished = RunLimits(run, state)(state) if resumed else ""
    if finished in FINISHED:
        log_finished(run, state, finished)
        run.finish(state, finished, run.dev_history)
        return TrainResult(run.dir, finished, state, run.checkpoints.best_path(), run.dev_history)
    _share(run.model, run.optimizer)
    ctx = mp.get_context("fork")
    control = Control.create(ctx, workers, state.step, positions)
    pipes = [ctx.Pipe(duplex=False) for _ in range(workers)]
    procs = [
        ctx.Process(target=_worker, args=(i, workers, run, control, pipes[i][1]), name=f"hw{i}")
        for i in range(workers)
    ]
    for proc in procs:  # before any thread starts in this process (TensorBoard, tqdm)
        proc.start()
    for _, send in pipes:
        send.close()  # the parent only reads
    parent = _Parent(run, state, control, procs, [recv for recv, _ in pipes])
    try:
        stop_reason = parent.monitor(should_stop, progress)
    finally:
        parent.stop_workers()
    run.finish(state, stop_reason, run.dev_history)
    return TrainResult(run.dir, stop_reason, state, run.checkpoints.best_path(), run.dev_history)


def _resume(run: Run, resume: str | None, workers: int) -> tuple[TrainState, list[list[int]], bool]:
    state = TrainState()
    positions = [[0, 0] for _ in range(workers)]
    path = resume_path(run, resume)
    if path is not None:
        ckpt = load_checkpoint(path)
        restore_rng_state(run.load_state(ckpt))
        vars(state).update(vars(TrainState.from_dict(ckpt["train_state"])))
        if isinstance(run.scheduler, BudgetedLR):
            run.scheduler.resume_clock(state.wall_seconds)  # the budget spans resumes
        saved = ckpt.get("hogwild", {}).get("positions", [])
        if len(saved) == workers:
            positions = [list(p) for p in saved]
        else:  # another worker count: the shares differ; start this epoch over
            positions = [[state.epoch, 0] for _ in range(workers)]
            run.log.warning(
                f"checkpoint has {len(saved)} worker position(s), this run {workers} "
                f"workers: each starts epoch {state.epoch + 1} from its beginning"
            )
        run.last_eval_step = run.dev_history[-1]["step"] if run.dev_history else None
        run.last_save_step = state.step
        run.log.info(f"resumed from {path} at step {state.step}")
    run.metrics = MetricsLogger(run.dir, resume_step=state.step if path else None)
    (run.dir / "config.yaml").write_text(dump_yaml(run.cfg))
    return state, positions, path is not None


def _share(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Move parameters, buffers and the optimizer's state into shared memory, in place.

    The optimizer's state is created now (one step with zero gradients at learning rate 0,
    step counts reset: exactly the lazy initial state) so that every worker's copy of the
    optimizer refers to the same moment tensors rather than making its own on first use.
    """
    model.share_memory()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(p not in optimizer.state for p in params):
        lrs = [group["lr"] for group in optimizer.param_groups]
        for p in params:
            p.grad = torch.zeros_like(p)
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        with torch.no_grad():
            fresh = {p: p.detach().clone() for p in params}
            optimizer.step()
            for p in params:
                p.copy_(fresh[p])  # a weight decay of lr 0 is a no-op; make sure anyway
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        for p in params:
            p.grad = None
            step = optimizer.state[p].get("step")
            if isinstance(step, torch.Tensor):
                step.zero_()
    for per_param in optimizer.state.values():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                per_param[key] = value.share_memory_()


def _worker(index: int, workers: int, run: Run, control: Control, conn) -> None:
    """One Hogwild worker (a forked child): train on share `index` until done or stopped."""
    cfg = run.cfg
    torch.set_num_threads(max(1, cfg.train.num_threads or 1))  # N workers on N cores
    seed_everything(cfg.train.seed, index)
    run.generator.manual_seed(cfg.train.seed + 1 + RANK_SEED_STRIDE * index)
    sampler = make_sampler(cfg, list(run.sampler.durations), index, workers)
    loader = make_loader(
        run.dataset,
        sampler,
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
    )
    wrun = dataclasses.replace(
        run,
        sampler=sampler,
        loader=loader,
        sync=HogwildWorkerSync(index, control, run.scheduler, _snapshot_every(run)),
        metrics=PipeSink(conn, index),
    )
    epoch, done = control.positions[2 * index], control.positions[2 * index + 1]
    state = TrainState(step=int(control.step.value), epoch=int(epoch), batch_in_epoch=int(done))

    def epoch_done(s: TrainState) -> str:
        control.positions[2 * index] = s.epoch
        control.positions[2 * index + 1] = 0
        return ""

    limits = RunLimits(wrun, state, should_stop=lambda s: bool(control.stop.value))
    run_steps(wrun, state, limits, at_epoch_end=epoch_done)
    totals = {k: getattr(state, k) for k in ("audio_seconds", "train_seconds", "nonfinite_total",
                                              "skipped_utterances")}  # fmt: skip
    conn.send(("done", totals))
    control.status[index] = DONE
    conn.close()


def _snapshot_every(run: Run) -> tuple[int, int]:
    """(eval_every, checkpoint_every) in global steps; an epoch is all workers' shares."""
    cfg = run.cfg.train
    return (cfg.eval_every or max(1, len(run.sampler.rank_batches())), cfg.checkpoint_every)


class _Parent:
    """The parent's side: watch the workers, snapshot, evaluate, checkpoint, stop."""

    def __init__(self, run: Run, state: TrainState, control: Control, procs, conns) -> None:
        self.run, self.state, self.control, self.procs, self.conns = (
            run, state, control, procs, list(conns))  # fmt: skip
        # Global steps per epoch: all workers' shares together make one pass over the data.
        self.steps_per_epoch = max(1, len(run.sampler.rank_batches()))
        self.totals: dict[int, dict] = {}
        self.started = time.perf_counter()
        self.train_seconds0, self.audio0 = state.train_seconds, state.audio_seconds
        self.wall_seconds0 = state.wall_seconds

    def monitor(self, should_stop, progress: bool) -> str:
        cfg = self.run.cfg.train
        eval_every = _snapshot_every(self.run)[0]
        next_eval = (self.state.step // eval_every + 1) * eval_every
        next_save = (self.state.step // cfg.checkpoint_every + 1) * cfg.checkpoint_every if (
            cfg.checkpoint_every) else math.inf  # fmt: skip
        reason = ""
        while True:
            time.sleep(POLL_SECONDS)
            self._drain()
            failed = self._failed_worker()
            if failed is not None:
                self._fail(failed)  # raises
            step = int(self.control.step.value)
            if all(s == DONE for s in self.control.status) and self._all_exited():
                break
            if not reason:
                reason = self._stop_reason(should_stop)
            if reason:
                self.control.stop.value = 1
                # the workers finish their step and exit; one that asked for a snapshot at
                # its last step must not wait for it (the final one is taken after they exit)
                self.control.resume_gen.value = self.control.pause_gen.value
                continue
            evaluate, checkpoint = step >= next_eval, step >= next_save
            if evaluate or checkpoint:
                reason = self._snapshot_and_save(evaluate=evaluate)
                step = self.state.step  # where the snapshot was taken
                next_eval = (step // eval_every + 1) * eval_every
                if cfg.checkpoint_every:
                    next_save = (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
            elif self.control.pause_gen.value > self.control.resume_gen.value:
                self.control.resume_gen.value = self.control.pause_gen.value  # nothing due
        self._drain()
        failed = self._failed_worker()
        if failed is not None:
            self._fail(failed)
        self._update_state()
        if not reason:
            reason = "max_steps" if cfg.max_steps and self.state.step >= cfg.max_steps else "epochs"
        if reason != "interrupted" and self.run.last_eval_step != self.state.step:
            self._snapshot_and_save(evaluate=True)  # score the final weights: best.pt exists
        elif self.run.last_save_step != self.state.step:
            self._snapshot_and_save(evaluate=False)
        return reason

    def _stop_reason(self, should_stop) -> str:
        cfg = self.run.cfg.train
        if cfg.max_steps and self.control.step.value >= cfg.max_steps:
            return "max_steps"
        self._update_state()
        if cfg.time_budget_min and self.state.wall_seconds >= cfg.time_budget_min * 60:
            return "time_budget"
        if should_stop is not None and should_stop(self.state):
            return "interrupted"
        return ""

    def _snapshot_and_save(self, evaluate: bool) -> str:
        """Pause every live worker at its sync point, copy, release, then evaluate and save."""
        weights, optimizer_state = self._snapshot()
        model = model_from_settings(self.run.model.settings())
        model.load_state_dict(weights)
        sched = dict(self.run.scheduler.state_dict(), last_epoch=self.state.step)
        frozen = dataclasses.replace(
            self.run,
            model=model,
            optimizer=_StateOnly(optimizer_state),
            scheduler=_StateOnly(sched),
            checkpoint_extra={
                "hogwild": {"workers": len(self.procs), "positions": self._positions}
            },
        )
        if evaluate:
            reason = evaluate_and_save(frozen, self.state, self.run.dev_history)
        else:
            save(frozen, self.state)
            reason = ""
        self.run.last_eval_step, self.run.last_save_step = (
            frozen.last_eval_step,
            frozen.last_save_step,
        )
        return reason

    def _snapshot(self) -> tuple[dict, dict]:
        c = self.control
        with c.pause_gen.get_lock():
            if c.pause_gen.value <= c.resume_gen.value:  # no worker asked already
                c.pause_gen.value += 1
            request = c.pause_gen.value
        while True:
            waiting = [
                i for i, p in enumerate(self.procs)
                if p.is_alive() and c.status[i] != DONE and c.paused_gen[i] != request
            ]  # fmt: skip
            if not waiting:
                break
            self._drain()  # a worker blocked on a full pipe never reaches its sync point
            time.sleep(0.0005)
        try:
            self._update_state()
            self._positions = [[int(c.positions[2 * i]), int(c.positions[2 * i + 1])]
                               for i in range(len(self.procs))]  # fmt: skip
            weights = {k: v.detach().clone() for k, v in self.run.model.state_dict().items()}
            optimizer_state = copy.deepcopy(self.run.optimizer.state_dict())
        finally:
            c.resume_gen.value = request
        bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise HogwildWorkerFailed(
                f"the shared model holds non-finite values ({bad[:3]}) at step {self.state.step}; "
                "not saved. Lower optim.lr or use fewer workers (stale updates), then resume"
            )
        return weights, optimizer_state

    def _update_state(self) -> None:
        c, state = self.control, self.state
        state.step = int(c.step.value)
        state.epoch = min(int(c.positions[2 * i]) for i in range(len(self.procs)))
        state.batch_in_epoch = 0  # per worker: in the checkpoint's "hogwild" positions
        state.train_seconds = self.train_seconds0 + time.perf_counter() - self.started
        state.wall_seconds = self.wall_seconds0 + time.perf_counter() - self.started
        state.audio_seconds = self.audio0 + sum(t["audio_seconds"] for t in self.totals.values())
        state.nonfinite_total = sum(t["nonfinite_total"] for t in self.totals.values())
        state.skipped_utterances = sum(t["skipped_utterances"] for t in self.totals.values())

    def _drain(self) -> None:
        for i, conn in enumerate(self.conns):
            if conn is None:
                continue
            try:
                while conn.poll():
                    kind, payload = conn.recv()
                    if kind == "log":
                        self._log(i, payload)
                    else:
                        self.totals[i] = payload
            except (EOFError, OSError):  # the worker exited (or died mid-message)
                self.conns[i] = None

    def _log(self, index: int, record: dict) -> None:
        step = record.pop("step")
        epoch = record.pop("epoch")
        self.run.metrics.log(step, epoch=epoch, worker=index, **record)

    def _failed_worker(self) -> int | None:
        for i, p in enumerate(self.procs):
            if p.exitcode not in (None, 0):
                return i
            if p.exitcode == 0 and self.control.status[i] != DONE:
                return i  # exited without finishing: treat as a failure too
        return None

    def _all_exited(self) -> bool:
        for p in self.procs:
            p.join(timeout=0)
        return all(p.exitcode is not None for p in self.procs)

    def _fail(self, index: int) -> None:
        code = self.procs[index].exitcode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        self.control.stop.value = 1
        self._snapshot_and_save(evaluate=False)
        path = self.run.checkpoints.latest()
        self.stop_workers()
        self._update_state()
        self.run.finish(self.state, "worker_failed", self.run.dev_history)
        raise HogwildWorkerFailed(
            f"Hogwild worker {index} died ({how}) near step {self.state.step}; the other "
            f"workers were stopped and a consistent checkpoint saved at step {self.state.step} "
            f"({path}); see the worker's traceback above, then continue with --resume auto"
        )

    def stop_workers(self) -> None:
        self.control.stop.value = 1
        self.control.resume_gen.value = self.control.pause_gen.value  # never leave one paused
        deadline = time.perf_counter() + 30
        for p in self.procs:
            while p.is_alive() and time.perf_counter() < deadline:
                self._drain()
                p.join(timeout=0.05)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


class _StateOnly:
    """Stands in for an optimizer or scheduler in a snapshot: only `state_dict()`."""

    def __init__(self, state: dict) -> None:
        self._state = state
        self.param_groups = state.get("param_groups", [])

    def state_dict(self) -> dict:
        return self._state
