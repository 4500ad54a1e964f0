"""The one training step: batch → features → forward → CTC → backward → clip → optimizer step.

    result = train_step(run, state, batch)   # every mode: train, DDP, Hogwild, P2P agents, peers

`train_step()` trains one (micro-)batch of a `train.run.Run` and advances its `TrainState`.
Every trainer in speechswarm calls it, so a batch means the same thing everywhere:
- a batch with no usable utterance ("empty") is passed over: no step, nothing counted;
- a batch whose loss is not finite ("nonfinite") is skipped: its gradients are dropped, the
  BatchNorm running statistics its forward pass moved are put back, no step is counted, and
  `train.max_nonfinite` of those in a row stop the run (`TrainingDiverged`);
- a finite loss whose gradient norm is not finite skips the update (`clip_and_step`) and
  counts the same way; the step itself is counted (the schedule moved on);
- a batch that runs out of memory ("oom") is skipped the same way, counted
  (`state.oom_skipped`) and logged with a hint to lower `data.max_batch_seconds`;
  `train.max_oom` of those in a row stop the run (`OutOfMemory`). Under DDP a rank that runs
  out in its forward pass skips the batch on every rank; one that runs out in the backward
  pass (its peers are already all-reducing) stops the run with the same hint;
- after every optimizer step the run's synchronizer acts (`run.sync.after_step`): that is
  the one place where DDP, Hogwild and peer-to-peer differ.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from speechswarm.build import autocast
from speechswarm.data.dataset import Batch
from speechswarm.errors import SpeechswarmError

if TYPE_CHECKING:
    from speechswarm.train.loop import TrainState
    from speechswarm.train.run import Run


class TrainingDiverged(SpeechswarmError, RuntimeError):
    """Too many non-finite losses in a row: the run cannot go on as configured."""


@dataclass(frozen=True)
class StepResult:
    """What one `train_step` did."""

    flag: str  # "" (trained), "empty" (nothing to train on), "nonfinite" or "oom" (skipped)
    loss: float = math.nan  # the batch's mean per-utterance CTC loss ("" only)
    stepped: bool = False  # an optimizer step was taken: state.step counts it
    grad_norm: float = math.nan  # before clipping, when `stepped`
    audio_seconds: float = 0.0  # training audio in the batch ("" only)


class OutOfMemory(SpeechswarmError, RuntimeError):
    """Batches ran out of memory `train.max_oom` times in a row, or in a DDP backward pass."""


def train_step(run: Run, state: TrainState, batch: Batch) -> StepResult:
    """Train `run` on one micro-batch; update `state` (see the module docstring).

    With `run.accumulate` > 1 the optimizer steps on every `run.accumulate`-th finite
    micro-batch (`run.accumulated` counts them); under DDP gradients are all-reduced in the
    backward pass of that last one."""
    state.skipped_utterances += batch.skipped
    oom: BaseException | None = None
    with run.grad_sync(run.accumulated + 1 == run.accumulate):  # DDP: all-reduce on the last
        run.norm_stats.save()
        try:
            loss = _forward(run, batch) if batch.ids else None
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            loss, oom = None, e
        flag = run.sync.agree(_flag(loss, oom))  # skip a batch everywhere or nowhere
        if not flag:
            try:
                run.backward(loss * (1.0 / run.accumulate))
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                if run.env.world_size > 1:  # the other ranks wait in an all-reduce
                    raise OutOfMemory(f"{_oom_words(run, batch)}; {_OOM_HINT}") from None
                flag, oom = "oom", e
    if flag == "empty":
        return StepResult("empty")
    if flag:  # non-finite or out of memory: drop this batch's gradients, count, maybe give up
        run.norm_stats.restore()  # its forward pass moved them
        run.optimizer.zero_grad(set_to_none=True)
        run.accumulated = 0
        if flag == "oom":
            skip_out_of_memory(run, state, batch, here=oom is not None)
            return StepResult("oom")
        count_nonfinite(state, run.cfg.train.max_nonfinite)
        return StepResult("nonfinite")
    state.oom_in_row = 0
    run.accumulated += 1
    loss_value = float(loss.detach())
    state.loss_sum += loss_value
    state.loss_count += 1
    audio = float(batch.wave_lens.sum()) / run.sample_rate
    state.audio_seconds += audio
    if run.accumulated < run.accumulate:
        return StepResult("", loss_value, audio_seconds=audio)
    grad_norm = run.optimizer_step()  # skips the update if the gradient is not finite
    run.accumulated = 0
    state.step += 1
    # ---- sync point: DDP has all-reduced gradients inside backward(); Hogwild and
    # ---- peer-to-peer synchronizers act here, after the local step.
    run.sync.after_step(run.model, state)
    if math.isfinite(grad_norm):
        state.nonfinite_in_row = 0
    else:
        count_nonfinite(state, run.cfg.train.max_nonfinite)
    return StepResult("", loss_value, True, grad_norm, audio)


def count_nonfinite(state: TrainState, limit: int) -> None:
    """One more skipped batch or update (non-finite loss or gradient); stop after `limit` in a
    row: by then the weights or the recipe are broken, and going on only burns the budget."""
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    if state.nonfinite_in_row >= limit:
        raise TrainingDiverged(
            f"{state.nonfinite_in_row} non-finite losses or gradients in a row at step "
            f"{state.step}: lower optim.lr, set optim.grad_clip, or use precision=fp32"
        )


def _flag(loss: torch.Tensor | None, oom: BaseException | None) -> str:
    if oom is not None:
        return "oom"
    if loss is None:
        return "empty"
    return "" if torch.isfinite(loss) else "nonfinite"


_OOM_HINT = "lower data.max_batch_seconds (or data.max_batch_size) so that batches fit"


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation failure: CUDA/MPS out of memory, or the CPU allocator's
    (a RuntimeError; the kernel's OOM killer, in contrast, cannot be caught)."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "can't allocate memory" in str(e)


def _oom_words(run: Run, batch: Batch) -> str:
    n = len(batch.ids)
    longest = float(batch.wave_lens.max()) / run.sample_rate if n else 0.0
    return (
        f"out of memory on a batch of {n} utterances ({n * longest:.0f} s padded, the longest "
        f"{longest:.1f} s; data.max_batch_seconds={run.cfg.data.max_batch_seconds:g})"
    )


def skip_out_of_memory(run: Run, state: TrainState, batch: Batch, here: bool) -> None:
    """Count a batch skipped for memory (`here`: this process ran out, else another rank
    did), free what the allocator caches, and stop after `train.max_oom` in a row."""
    state.oom_skipped += 1
    state.oom_in_row += 1
    if run.device.type == "cuda":
        torch.cuda.empty_cache()
    where = _oom_words(run, batch) if here else "another process ran out of memory"
    limit = run.cfg.train.max_oom
    if state.oom_in_row >= limit:
        raise OutOfMemory(f"{where}, {state.oom_in_row} batches in a row; {_OOM_HINT}")
    run.log.warning(
        f"step {state.step}: {where}; batch skipped ({state.oom_skipped} so far, "
        f"{limit} in a row stop the run); {_OOM_HINT}"
    )


def _forward(run: Run, batch: Batch) -> torch.Tensor:
    """The run's per-batch loss (through the DDP wrapper when there is one)."""
    return forward_loss(
        run.forward_model or run.model,
        run.extractor,
        run.ctc,
        batch,
        device=run.device,
        amp_dtype=run.amp_dtype,
        generator=run.generator,
        wave_augment=run.wave_augment,
        freq_warp=run.freq_warp,
        spec_augment=run.spec_augment,
        inter_ctc=(run.cfg.train.inter_ctc_layers, run.cfg.train.inter_ctc_weight),
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
    freq_warp: Callable | None = None,
    spec_augment: Callable | None = None,
    inter_ctc: tuple[Sequence[int], float] = ((), 0.0),
) -> torch.Tensor:
    """Features, augmentation, forward, CTC loss: the per-utterance loss, a () tensor.

    `ctc`: `nn.CTCLoss(blank=0, reduction="sum")`; the augmenters draw from `generator`;
    `amp_dtype` from `build.resolve_precision` (None: fp32). `inter_ctc`: (layers, weight)
    of intermediate CTC (`train.inter_ctc_layers`, `train.inter_ctc_weight`); no layers: off."""
    batch = batch.to(device)
    with torch.no_grad():
        waves = batch.waves
        if wave_augment is not None:
            waves = wave_augment(waves, batch.wave_lens, generator)
        warp = None if freq_warp is None else freq_warp(len(waves), generator, waves.device)
        feats, feat_lens = extractor(waves, batch.wave_lens, warp)  # (N, T, F), (N,) frames
        if spec_augment is not None:
            feats = spec_augment(feats, feat_lens, generator)
    layers, weight = inter_ctc
    with autocast(device, amp_dtype):
        # (N, T', V) log-softmax, (N,), and one (N, T', V) per intermediate layer
        log_probs, out_lens, *inter = model(feats, feat_lens, intermediate=layers)

    # CTC in fp32 on (T', N, V); summed over the batch then divided by N: a per-utterance loss
    # that does not shrink long transcripts as reduction="mean" (per target token) would.
    def loss_of(lp: torch.Tensor) -> torch.Tensor:
        return ctc(lp.float().transpose(0, 1), batch.tokens, out_lens, batch.token_lens)

    loss = loss_of(log_probs)
    if layers:
        inter_loss = sum(loss_of(lp) for lp in inter[0]) / len(layers)
        loss = (1.0 - weight) * loss + weight * inter_loss
    return loss / len(batch.ids)


def clip_and_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float,
) -> float:
    """After backward: unscale (fp16), clip the trainable parameters' gradient norm to
    `grad_clip` (0: no clipping), step the optimizer and the schedule, zero the gradients.
    Returns the gradient norm before clipping.

    A non-finite gradient norm (a finite loss whose backward overflowed) skips the update, as
    GradScaler does for fp16: one such update would turn every weight into NaN. The schedule
    still advances; callers see the non-finite norm and count the skip."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf))
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when the gradients are not finite
        scaler.update()
    elif math.isfinite(grad_norm):
        optimizer.step()
    if scheduler is not None:
        with warnings.catch_warnings():  # torch warns when a skipped first update precedes it
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class NormStatistics:
    """A model's BatchNorm running statistics, saved before a forward pass and put back when
    its batch is skipped: a batch whose loss is not finite has already updated them, and a
    NaN kept there would ruin every later evaluation (eval mode reads them) while training,
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
