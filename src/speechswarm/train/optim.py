"""Optimizers and learning-rate schedules for the training loop.

    speechswarm train --config configs/demo.yaml optim.name=adamw optim.schedule=onecycle

`build_optimizer` splits parameters into a weight-decayed group (matrices and conv kernels)
and an undecayed one (biases, BatchNorm/LayerNorm scales and shifts), because decaying those
only shrinks activations' scale and offset without regularising anything.

`lr_factor` is the whole schedule as a pure function of the optimizer step: the learning
rate at step k (0-based, counting optimizer steps, not micro-batches) is `lr * lr_factor(k)`.
`build_scheduler` wraps it in a `LambdaLR`; call `scheduler.step()` once after each
`optimizer.step()`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from speechswarm.config import Config
from speechswarm.errors import ConfigError

SCHEDULES = ("constant", "warmup", "cosine", "onecycle", "anneal")
OPTIMIZERS = ("adamw", "adam", "sgd")


def split_decay_groups(
    named_params: nn.Module | Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict]:
    """Param groups: `{"name": "decay", ...}` for >= 2-D tensors, `"no_decay"` for 1-D ones.

    Rule (as nanoGPT): a parameter with `ndim <= 1` is a bias or a norm scale/shift (RNN
    `bias_ih_l0`, BatchNorm `weight`, LayerNorm `weight`), so it gets weight_decay 0.
    Frozen parameters (`requires_grad=False`) are left out. Empty groups are omitted.
    """
    if isinstance(named_params, nn.Module):
        named_params = named_params.named_parameters()
    decay, no_decay = [], []
    for item in named_params:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(
                f"build_optimizer got {type(item).__name__} items; pass model.named_parameters() "
                "(or the model) so biases and norm parameters can be kept out of weight decay"
            )
        _, param = item
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    if not decay and not no_decay:
        raise ConfigError("build_optimizer: the model has no trainable parameters (all frozen?)")
    groups = []
    if decay:
        groups.append({"name": "decay", "params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"name": "no_decay", "params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(
    params: nn.Module | Iterable[tuple[str, nn.Parameter]],
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """An optimizer over `params` (a module or `module.named_parameters()`).

    `name`: "adamw" (decoupled weight decay), "adam" (weight decay added to the gradient, L2),
    or "sgd" (with `momentum`, optionally `nesterov`). `momentum` and `nesterov` only apply to
    SGD; `betas` and `eps` only to Adam/AdamW. Weight decay applies to >= 2-D parameters
    only (see `split_decay_groups`).
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"optimizer lr must be a positive number, got {lr!r}")
    if weight_decay < 0:
        raise ConfigError(f"optimizer weight_decay must be >= 0, got {weight_decay!r}")
    groups = split_decay_groups(params, weight_decay)
    # torch's fused Adam/AdamW kernel: one pass over each tensor instead of a Python loop of
    # ~10 ops per parameter; on the CPU torch would otherwise take that loop. Measured on the
    # `small` preset's 18.5 M parameters, one thread: 3.4x less CPU time per step (0.025 s
    # against 0.086 s), weights within 1e-8 of the loop's after 3 steps (bench/RESULTS.md).
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = {"fused": True} if devices <= {"cpu", "cuda"} else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps, **fused)
    if nesterov and momentum <= 0:
        raise ConfigError("sgd with nesterov=True needs momentum > 0 (optim.momentum)")
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def _cosine(start: float, end: float, pct: float) -> float:
    """Half-cosine from `start` (pct=0) to `end` (pct=1), as torch's OneCycleLR."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _onecycle(step: int, total_steps: int, pct_start: float, div: float, final_div: float):
    """Factor of max_lr, exactly torch.optim.lr_scheduler.OneCycleLR (cos, two phases).

    Phase 1 goes from 1/div (step 0) to 1 at step `pct_start*total_steps - 1`; phase 2 from
    there to 1/(div*final_div) at step `total_steps - 1`. Later steps stay at the end value
    (torch raises there instead; LambdaLR evaluates one step past the last).
    """
    step = min(step, total_steps - 1)
    initial, low = 1.0 / div, 1.0 / (div * final_div)
    peak_step = float(pct_start * total_steps) - 1
    if step <= peak_step:  # peak_step == 0 would divide by zero in torch; we start at the peak
        return _cosine(initial, 1.0, step / peak_step if peak_step > 0 else 1.0)
    return _cosine(1.0, low, (step - peak_step) / (total_steps - 1 - peak_step))


def _check_schedule_args(
    name, total_steps, warmup_steps, steps_per_epoch, anneal_factor, pct_start
):
    if name not in SCHEDULES:
        raise ConfigError(f"unknown LR schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if name == "warmup" and warmup_steps == 0:
        raise ConfigError("schedule 'warmup' needs optim.warmup_steps > 0 (or use 'constant')")
    if name in ("cosine", "onecycle") and total_steps <= 0:
        raise ConfigError(f"schedule {name!r} needs total_steps > 0, got {total_steps}")
    if name == "onecycle" and total_steps < 2:
        raise ConfigError("schedule 'onecycle' needs total_steps >= 2")
    if name == "onecycle" and not 0.0 <= pct_start <= 1.0:
        raise ConfigError(f"schedule 'onecycle' needs 0 <= pct_start <= 1, got {pct_start}")
    if name == "anneal" and (steps_per_epoch <= 0 or anneal_factor <= 0):
        raise ConfigError(
            f"schedule 'anneal' needs steps_per_epoch > 0 and anneal_factor > 0, "
            f"got {steps_per_epoch} and {anneal_factor}"
        )


def lr_factor(
    step: int,
    *,
    name: str,
    total_steps: int = 0,
    warmup_steps: int = 0,
    steps_per_epoch: int = 0,
    anneal_factor: float = 1.1,
    min_factor: float = 0.0,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based).

    - "constant": 1 (after the optional warmup).
    - "warmup": linear warmup, then 1. Warmup (any schedule but onecycle) is
      `(step + 1) / warmup_steps` for `step < warmup_steps`, so no step runs at LR 0.
    - "cosine": warmup, then half-cosine from 1 down to `min_factor`, reached at step
      `total_steps` (as CosineAnnealingLR with T_max = total_steps - warmup_steps); stays
      there after.
    - "onecycle": torch OneCycleLR (anneal_strategy="cos", three_phase=False): the base LR is
      max_lr; starts at 1/div_factor, peaks at 1 after `pct_start` of `total_steps`, ends at
      1/(div_factor*final_div_factor). Ignores warmup_steps and min_factor. (Momentum is not
      cycled: that is OneCycleLR(cycle_momentum=False).)
    - "anneal": deepspeech.pytorch's learning_anneal: divide by `anneal_factor` at each epoch
      boundary, i.e. `anneal_factor ** -(step // steps_per_epoch)` after warmup, never below
      `min_factor`.
    """
    _check_schedule_args(name, total_steps, warmup_steps, steps_per_epoch, anneal_factor, pct_start)
    if name == "onecycle":
        return _onecycle(step, total_steps, pct_start, div_factor, final_div_factor)
    warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    if name in ("constant", "warmup"):
        return warm
    if name == "cosine":
        if step < warmup_steps:
            return warm
        span = max(1, total_steps - warmup_steps)
        pct = min(1.0, (step - warmup_steps) / span)
        return _cosine(1.0, min_factor, pct)
    # anneal
    return warm * max(min_factor, anneal_factor ** -(step // steps_per_epoch))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    time_budget_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    **schedule,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `lr_factor(step, **schedule)` to every param group.

    The schedule's shape comes from the arguments, not from the state dict: `state_dict()`
    holds only the step count (`last_epoch`) and last LRs, so a resumed run continues at
    the saved step on the schedule built from its (possibly edited) config.

    `time_budget_s` > 0 with a schedule that has an end ("onecycle", "cosine"): the run
    may stop on time before `total_steps`, so the schedule runs on whichever comes first,
    steps or time (`budget_step`): "train for 12 minutes" anneals within 12 minutes on a
    slow machine and still follows the step schedule on a fast one.
    """
    lr_factor(0, **schedule)  # validate now, not at the first step
    if time_budget_s > 0 and schedule.get("name") in ("onecycle", "cosine"):
        return BudgetedLR(optimizer, time_budget_s, clock, schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, **schedule))


def budget_step(step: int, lead: int, elapsed_s: float, budget_s: float, total_steps: int) -> int:
    """Position on a `total_steps` schedule at optimizer step `step` after `elapsed_s` of a
    `budget_s` time budget: the further of the step count (plus the `lead` the schedule had
    already taken over it) and the budget's elapsed fraction of the schedule.

    budget_step(10, 0, 30, 60, 100) == 50 (half the time gone, schedule half done);
    budget_step(80, 0, 30, 60, 100) == 80 (the steps are ahead of the clock).
    """
    by_time = int(total_steps * min(1.0, max(0.0, elapsed_s) / budget_s))
    return max(step + lead, by_time)


class BudgetedLR(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR on `budget_step`: schedule position = max(steps, elapsed share of the budget).

    The clock starts when the scheduler is built (with the run); a resumed run sets it to
    the wall time its run had already spent (`resume_clock`), as the loop's time budget
    counts it. `lead` (how far the schedule runs ahead of the step count) is kept in the
    state dict, so a resumed run continues from the position it had reached.
    """

    def __init__(self, optimizer, budget_s: float, clock: Callable[[], float], schedule: dict):
        self._budget_s = budget_s
        self._clock = clock
        self._started = clock()
        self._schedule = schedule
        self.lead = 0
        super().__init__(optimizer, self._factor)

    def resume_clock(self, elapsed_s: float) -> None:
        """Count `elapsed_s` of the budget as already spent."""
        self._started = self._clock() - elapsed_s

    def _factor(self, step: int) -> float:
        elapsed = self._clock() - self._started
        position = budget_step(
            step, self.lead, elapsed, self._budget_s, self._schedule["total_steps"]
        )
        self.lead = position - step
        return lr_factor(position, **self._schedule)

    def state_dict(self) -> dict:
        # Plain values only: checkpoints load weights-only (no functions, no config objects).
        return {
            k: v for k, v in super().state_dict().items() if not k.startswith("_") or k in _LR_STATE
        }


_LR_STATE = ("_last_lr", "_step_count", "_get_lr_called_within_step", "_is_initial")


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer `cfg.optim` describes, over `model`'s trainable parameters."""
    o = cfg.optim
    return build_optimizer(
        model.named_parameters(),
        name=o.name,
        lr=o.lr,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        nesterov=o.nesterov,
        betas=o.betas,
    )


def make_scheduler(
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    time_budget_s: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule `cfg.optim` describes, for a run of `total_steps`; with
    `time_budget_s`, an ending schedule also ends when the budget does (`build_scheduler`)."""
    o = cfg.optim
    return build_scheduler(
        optimizer,
        time_budget_s=time_budget_s,
        name=o.schedule,
        total_steps=total_steps,
        warmup_steps=o.warmup_steps,
        steps_per_epoch=steps_per_epoch,
        anneal_factor=o.anneal_factor,
        min_factor=o.min_factor,
        pct_start=o.pct_start,
    )


def per_rank_accumulate(accumulate: int, world_size: int) -> int:
    """Micro-batches each rank accumulates per optimizer step, so that `optim.accumulate`
    means the same global batch at any world size (as nanoGPT does): accumulate=8 is 8
    micro-batches on one process, 4 on each of 2 ranks. accumulate=1 with W ranks cannot be
    divided: each rank steps after every batch (a global batch W times larger)."""
    if accumulate < 1:
        raise ConfigError(f"optim.accumulate must be >= 1, got {accumulate}")
    if accumulate == 1:
        return 1
    if accumulate % world_size:
        raise ConfigError(
            f"optim.accumulate={accumulate} is not divisible by the {world_size} processes: "
            f"use a multiple of {world_size} (it counts micro-batches across all of them)"
        )
    return accumulate // world_size
