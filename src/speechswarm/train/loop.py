"""The training loop: one readable path from batch to optimizer step.

    speechswarm train --config tiny train.out_dir=runs/mine

`train()` sets a run up (data, model, optimizer, checkpoints), then alternates
`train_one_epoch()` and `evaluate()` until a stop rule fires. Distribution (DDP, Hogwild,
peer-to-peer) changes only what `run.sync` (a `train.sync.Synchronizer`) does: at the
marked sync point in `train_one_epoch()`, and where every process must take the same branch
(`run.sync.agree`). Under torchrun (`torchrun --nproc_per_node=2 -m speechswarm train ...`)
`train()` joins the process group itself; only rank 0 logs, evaluates and saves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from speechswarm.build import autocast
from speechswarm.checkpoint import load_checkpoint
from speechswarm.config import Config, dump_yaml
from speechswarm.data.dataset import Batch
from speechswarm.evaluate import evaluate
from speechswarm.report import MetricsLogger
from speechswarm.train import ddp
from speechswarm.train.rng import restore_rng_state
from speechswarm.train.setup import Run, make_checkpoint_state, setup_run


class TrainingDiverged(RuntimeError):
    """Too many non-finite losses in a row: the run cannot go on as configured."""


@dataclass
class TrainState:
    """Counters that a checkpoint carries so a resumed run continues exactly."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch consumed (the sampler's resume point)
    audio_seconds: float = 0.0  # training audio seen (before speed perturbation)
    train_seconds: float = 0.0  # wall time spent in training steps, across resumes
    best_score: float = math.inf  # best dev WER or CER (train.select_by) so far
    evals_since_best: int = 0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    skipped_utterances: int = 0

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
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
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
    run = setup_run(cfg, progress=progress, env=env)
    state = TrainState()
    rng_to_restore = None
    checkpoint_path = resume_path(run, resume)
    if checkpoint_path is not None:
        rng_to_restore = _restore(run, state, checkpoint_path)
        run.log.info(f"resumed from {checkpoint_path} at step {state.step}, epoch {state.epoch}")
    if run.sync.is_main:
        run.metrics = MetricsLogger(run.dir, resume_step=state.step if checkpoint_path else None)
        (run.dir / "config.yaml").write_text(dump_yaml(cfg))

    started = time.perf_counter()
    dev_history = run.dev_history
    while True:
        if state.epoch >= cfg.train.epochs:
            stop_reason = "epochs"
            break
        stop_reason = train_one_epoch(run, state, started, should_stop, rng_to_restore, progress)
        rng_to_restore = None
        if stop_reason:
            break
        state.epoch += 1  # before evaluating, so its checkpoint resumes at the next epoch
        state.batch_in_epoch = 0
        stop_reason = evaluate_and_save(run, state, dev_history)
        if stop_reason:
            break
    if stop_reason in ("max_steps", "time_budget") and run.last_eval_step != state.step:
        evaluate_and_save(run, state, dev_history)  # score the final weights: best.pt exists
    if run.last_save_step != state.step:
        save(run, state)
    # Each DDP rank counted only its own batches; the summary reports what all of them trained on.
    audio_per_rank = run.sync.gather(state.audio_seconds)
    if run.sync.is_main:
        run.finish(state, stop_reason, dev_history, audio_seconds=sum(audio_per_rank))
    return TrainResult(run.dir, stop_reason, state, run.checkpoints.best_path(), dev_history)


def train_one_epoch(
    run: Run,
    state: TrainState,
    started: float,
    should_stop: Callable[[TrainState], bool] | None,
    rng_to_restore: dict | None,
    progress: bool,
) -> str:
    """Train on this epoch's remaining batches; return why it stopped ("" at epoch end)."""
    cfg = run.cfg.train
    model, optimizer, sync = run.model, run.optimizer, run.sync
    run.sampler.set_epoch(state.epoch, state.batch_in_epoch)
    run.dataset_set_epoch(state.epoch)
    batches = iter(run.loader)  # starts the workers; they draw nothing from the global RNG
    if rng_to_restore is not None:
        restore_rng_state(rng_to_restore)  # dropout etc. continue where the checkpoint left off
    model.train()
    total = len(run.sampler)
    bar = tqdm(
        batches,
        total=total,
        desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
        disable=not (progress and sync.is_main),
        leave=False,
    )
    window = _Window()
    accumulated = 0
    norm_stats = NormStatistics(model)
    ready = time.perf_counter()  # when the loop last asked the loader for a batch
    for batch in bar:
        t0 = time.perf_counter()
        window.wait += t0 - ready  # time the model sat idle waiting on data
        state.batch_in_epoch += 1
        state.skipped_utterances += batch.skipped
        with run.grad_sync(accumulated + 1 == run.accumulate):  # DDP: all-reduce on the last
            norm_stats.save()
            loss = _forward(run, batch) if batch.ids else None
            flag = "empty" if loss is None else "" if torch.isfinite(loss) else "nonfinite"
            flag = sync.agree(flag)  # skip a batch everywhere or nowhere
            if not flag:
                run.backward(loss * (1.0 / run.accumulate))
        if flag == "empty":
            ready = time.perf_counter()
            continue
        if flag:  # non-finite: drop this batch's gradients, count, maybe give up
            ready = time.perf_counter()
            norm_stats.restore()  # its forward pass moved them
            optimizer.zero_grad(set_to_none=True)
            accumulated = 0
            _count_nonfinite(state, cfg.max_nonfinite)
            continue
        accumulated += 1
        loss = float(loss.detach())
        if accumulated == run.accumulate:
            grad_norm = run.optimizer_step()  # skips the update if the gradient is not finite
            accumulated = 0
            state.step += 1
            # ---- sync point: DDP has all-reduced gradients inside backward(); Hogwild and
            # ---- peer-to-peer synchronizers act here, after the local step.
            sync.after_step(model, state)
            if math.isfinite(grad_norm):
                state.nonfinite_in_row = 0
                window.add(loss, grad_norm)
            else:
                _count_nonfinite(state, cfg.max_nonfinite)
        audio = float(batch.wave_lens.sum()) / run.sample_rate
        now = time.perf_counter()
        state.audio_seconds += audio
        state.train_seconds += now - ready
        window.audio += audio
        window.seconds += now - ready
        ready = now
        if state.step and accumulated == 0 and state.step % cfg.log_every == 0:
            _log_window(run, state, window, bar)
            window = _Window()
        reason = sync.agree(_stop_reason(run, state, started, should_stop))
        if reason:
            return reason
        if (
            cfg.eval_every
            and accumulated == 0
            and state.step % cfg.eval_every == 0
            and state.batch_in_epoch < total
        ):
            reason = evaluate_and_save(run, state, run.dev_history)
            if reason:
                return reason
        elif cfg.checkpoint_every and accumulated == 0 and state.step % cfg.checkpoint_every == 0:
            save(run, state)
        ready = time.perf_counter()  # evaluation and saving are not data wait
    return ""


class NormStatistics:
    """A model's BatchNorm running statistics, saved before a forward pass and put back when
    its batch is skipped. A batch whose loss is not finite has already updated them; kept, a
    single NaN there would ruin every later evaluation (eval mode reads them) while training,
    on batch statistics, carried on."""

    def __init__(self, model: torch.nn.Module):
        self.buffers = [
            b
            for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
            if b is not None
        ]
        self._saved: list[torch.Tensor] = []

    def save(self) -> None:
        self._saved = [b.clone() for b in self.buffers]

    def restore(self) -> None:
        for buf, old in zip(self.buffers, self._saved, strict=True):
            buf.copy_(old)


def _forward(run: Run, batch: Batch) -> torch.Tensor:
    """The loop's per-batch loss (through the DDP wrapper when there is one)."""
    return forward_loss(
        run.forward_model or run.model,
        run.extractor,
        run.ctc,
        batch,
        device=run.device,
        amp_dtype=run.amp_dtype,
        generator=run.generator,
        wave_augment=run.wave_augment,
        spec_augment=run.spec_augment,
    )


def forward_loss(
    model: torch.nn.Module,
    extractor: torch.nn.Module,
    ctc: Callable,
    batch: Batch,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    generator: torch.Generator | None = None,
    wave_augment: Callable | None = None,
    spec_augment: Callable | None = None,
) -> torch.Tensor:
    """Features, augmentation, forward, CTC loss: the per-utterance loss, a () tensor.

    The one per-batch path of every trainer (this loop, Hogwild, peer-to-peer agents, the
    benchmark). `ctc`: `nn.CTCLoss(blank=0, reduction="sum")`; the augmenters draw from
    `generator`; `amp_dtype` from `build.resolve_precision` (None: fp32)."""
    batch = batch.to(device)
    with torch.no_grad():
        waves = batch.waves
        if wave_augment is not None:
            waves = wave_augment(waves, batch.wave_lens, generator)
        feats, feat_lens = extractor(waves, batch.wave_lens)  # (N, T, F), (N,) frames
        if spec_augment is not None:
            feats = spec_augment(feats, feat_lens, generator)
    with autocast(device, amp_dtype):
        log_probs, out_lens = model(feats, feat_lens)  # (N, T', V) log-softmax, (N,)
    # CTC in fp32 on (T', N, V); summed over the batch then divided by N: a per-utterance loss
    # that does not shrink long transcripts as reduction="mean" (per target token) would.
    loss = ctc(log_probs.float().transpose(0, 1), batch.tokens, out_lens, batch.token_lens)
    return loss / len(batch.ids)


def _stop_reason(run: Run, state: TrainState, started: float, should_stop) -> str:
    cfg = run.cfg.train
    if cfg.max_steps and state.step >= cfg.max_steps:
        return "max_steps"
    if cfg.time_budget_min and time.perf_counter() - started >= cfg.time_budget_min * 60:
        return "time_budget"
    if should_stop is not None and should_stop(state):
        return "interrupted"
    return ""


def save(run: Run, state: TrainState, metric: float | None = None) -> None:
    """Checkpoint the run (every process calls it; the main process writes)."""
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


def _restore(run: Run, state: TrainState, path: Path) -> dict:
    """Load a checkpoint into the run and `state`; returns the RNG state to restore."""
    ckpt = load_checkpoint(path)
    rng = run.load_state(ckpt)
    restored = TrainState.from_dict(ckpt["train_state"])
    vars(state).update(vars(restored))
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != run.env.world_size and state.batch_in_epoch:
        # Batches are dealt to ranks in turn: the same share of the epoch is done.
        state.batch_in_epoch = state.batch_in_epoch * saved_world // run.env.world_size
    run.last_eval_step = run.dev_history[-1]["step"] if run.dev_history else None
    run.last_save_step = state.step
    return rng


def _count_nonfinite(state: TrainState, limit: int) -> None:
    """One more skipped batch or update (non-finite loss or gradient); stop after `limit` in a
    row: by then the weights or the recipe are broken, and going on only burns the budget."""
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    if state.nonfinite_in_row >= limit:
        raise TrainingDiverged(
            f"{state.nonfinite_in_row} non-finite losses or gradients in a row at step "
            f"{state.step}: lower optim.lr, set optim.grad_clip, or use precision=fp32"
        )


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
