"""Background averaging (`--background`): what a round in flight holds, and how late its
average may land.

    round = InFlight(step=40, snapshot=own, counts=batch_counts(model), ...)
    round.future = run_in_background(lambda: exchange(...))     # training goes on
    ...
    decay = ema_decays(model, round.counts, names)              # when the average is in
    new = mixing.merge_late_average(average, round.snapshot, model.state_dict(), decay)

`HivemindSync` snapshots the averaged tensors at a round end, runs hivemind's step in a
thread and keeps training; the average is applied at the first step it is in, and at the
latest `max_staleness` steps after the snapshot (the loop waits for it there, at most until
the round's --timeout-s ends). The merge keeps the local progress made meanwhile
(`p2p.mixing.merge_late_average`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import torch


@dataclasses.dataclass
class InFlight:
    """A background round: its snapshot and bookkeeping until its average is applied."""

    round: int  # its number in rounds.jsonl
    step: int  # the step whose weights it averages (the same on every member)
    snapshot: dict[str, torch.Tensor]  # the averaged tensors at `step`
    counts: dict[str, int]  # BatchNorm layers' num_batches_tracked at `step`
    before: dict[str, float]  # the averager's counters at `step`
    where: dict  # --topology: planned group and neighbours/fallback
    started: float  # perf_counter at the snapshot
    snapshot_s: float  # seconds the snapshot took the training loop
    future: Future = dataclasses.field(default_factory=Future)  # (reason, peers)
    done_at: float | None = None  # perf_counter when the exchange ended


def run_in_background(fn: Callable[[], tuple], flight: InFlight) -> None:
    """Run `fn` on a daemon thread; its result (or exception) goes to `flight.future`, the
    time it ended to `flight.done_at`. A daemon: a peer that stops never waits for it."""

    def target():
        try:
            result = fn()
        except BaseException as e:  # handed to whoever asks for the result
            flight.done_at = time.perf_counter()
            flight.future.set_exception(e)
            return
        flight.done_at = time.perf_counter()
        flight.future.set_result(result)

    threading.Thread(target=target, name="background-averaging", daemon=True).start()


def _batchnorms(model: torch.nn.Module):
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:  # fmt: skip
            yield (f"{prefix}." if prefix else ""), module


def batch_counts(model: torch.nn.Module) -> dict[str, int]:
    """Each BatchNorm layer's updates so far (num_batches_tracked), by state-dict prefix."""
    return {p: int(m.num_batches_tracked) for p, m in _batchnorms(model)}


def ema_decays(model: torch.nn.Module, counts: dict[str, int], names) -> dict[str, float]:
    """For each averaged BatchNorm running statistic in `names`: the weight its value at the
    snapshot (when the layers had done `counts` updates) still has in its value now.
    momentum m: (1 - m)^n after n more updates; momentum None (a cumulative average of N0
    batches, then n more): N0 / (N0 + n)."""
    names = set(names)
    out = {}
    for prefix, module in _batchnorms(model):
        before = counts.get(prefix, 0)
        n = max(0, int(module.num_batches_tracked) - before)
        if module.momentum is None:
            d = before / (before + n) if before + n else 1.0
        else:
            d = (1.0 - module.momentum) ** n
        for stat in ("running_mean", "running_var"):
            if prefix + stat in names:
                out[prefix + stat] = d
    return out
