"""The seam between the training loop and distribution: one small Synchronizer protocol.

    speechswarm train --config tiny                 # LocalSync: one process
    torchrun --nproc_per_node=2 -m speechswarm train --config tiny   # DDPSync (ddp.py)
    speechswarm train --hogwild 2 --config tiny     # HogwildWorkerSync (hogwild.py)

`train_one_epoch()` calls `after_step(model, state)` at its marked sync point, right after
each optimizer step, and asks `agree(flag)` wherever every process must take the same branch
(skip a non-finite batch, stop the run). Only the process whose `is_main` is true evaluates
and saves; `gather()` brings per-process numbers to it (training-loss logs, RNG states for a
checkpoint). A peer-to-peer synchronizer averages with its neighbours in `after_step` and
answers the other three as `LocalSync` does.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

# Flags `agree` can raise, least to most severe: when processes disagree, all of them get the
# most severe one any process raised ("" means: nothing, go on).
# "empty": a batch with no usable utterance, "nonfinite": a non-finite loss (every process
# then skips the batch: under DDP a rank that skipped backward alone would hang the others),
# "oom": a forward pass that ran out of memory (skipped everywhere likewise).
FLAGS = ("", "empty", "nonfinite", "oom", "round_end", "epochs", "max_steps", "time_budget", "interrupted",
         "target_wer", "early_stop")  # fmt: skip


class Synchronizer(Protocol):
    """What distribution changes in the loop (see the module docstring)."""

    is_main: bool  # this process evaluates, saves checkpoints and writes the run folder

    def after_step(self, model: torch.nn.Module, state: Any) -> None:
        """Called after every optimizer step (state.step already counts it)."""

    def agree(self, flag: str) -> str:
        """Every process passes its own flag (one of FLAGS); all get the most severe one."""

    def gather(self, obj: Any) -> list[Any] | None:
        """On the main process: every process' `obj`, by rank; elsewhere None (or [obj] where
        the process logs for itself, as Hogwild workers do)."""


class LocalSync:
    """One process: nothing to synchronise."""

    is_main = True

    def after_step(self, model: torch.nn.Module, state: Any) -> None:
        return None

    def agree(self, flag: str) -> str:
        check_flag(flag)
        return flag

    def gather(self, obj: Any) -> list[Any]:
        return [obj]


def check_flag(flag: str) -> int:
    """The severity of `flag` (its index in FLAGS); ValueError for an unknown flag."""
    try:
        return FLAGS.index(flag)
    except ValueError:
        raise ValueError(f"unknown synchronizer flag {flag!r}; known: {FLAGS}") from None


def most_severe(flags: list[str]) -> str:
    """The flag of FLAGS that ranks highest among `flags` ("" when empty)."""
    return FLAGS[max((check_flag(f) for f in flags), default=0)]
