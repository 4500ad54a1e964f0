"""What Hogwild's parent and its forked workers share: the control block in shared memory,
the workers' synchronizer (global step, global-step LR, pausing for snapshots), and the pipe
that carries a worker's log records to the parent. See `distributed.hogwild`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from speechswarm.train.sync import check_flag

RUNNING, DONE = 0, 1


@dataclasses.dataclass
class Control:
    """Shared between the parent and the forked workers (multiprocessing shared memory)."""

    step: Any  # Value('q'): optimizer steps taken by all workers together
    positions: Any  # Array('q', 2N): worker i's (epoch, batches consumed in it)
    status: Any  # Array('b', N): RUNNING or DONE
    pause_gen: Any  # Value('q'): the parent's latest pause request
    paused_gen: Any  # Array('q', N): the request worker i is paused for
    resume_gen: Any  # Value('q'): the latest request the parent has released
    stop: Any  # Value('b'): the parent asks the workers to finish their step and stop

    @classmethod
    def create(cls, ctx, workers: int, step: int, positions: list[list[int]]) -> Control:
        flat = [int(v) for pos in positions for v in pos]
        return cls(
            step=ctx.Value("q", step),
            positions=ctx.Array("q", flat),
            status=ctx.Array("b", [RUNNING] * workers),
            pause_gen=ctx.Value("q", 0),
            paused_gen=ctx.Array("q", [0] * workers),
            resume_gen=ctx.Value("q", 0),
            stop=ctx.Value("b", 0),
        )


class HogwildWorkerSync:
    """Worker i's synchronizer: global step count, global-step learning rate, pausing."""

    is_main = False

    def __init__(self, index: int, control: Control, scheduler, snapshot_every: tuple) -> None:
        self.index, self.control, self.scheduler = index, control, scheduler
        # (eval_every, checkpoint_every) in global steps: a worker that completes such a step
        # asks for the snapshot itself, so it is taken there and not a poll interval later.
        self.snapshot_every = [k for k in snapshot_every if k]

    def after_step(self, model: torch.nn.Module, state) -> None:
        c = self.control
        with c.step.get_lock():
            c.step.value += 1
            state.step = int(c.step.value)
        # The schedule follows the global step (every worker's steps move the shared model).
        for group, base, factor in zip(
            self.scheduler.optimizer.param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base * factor(state.step)
        c.positions[2 * self.index] = state.epoch
        c.positions[2 * self.index + 1] = state.batch_in_epoch
        if any(state.step % k == 0 for k in self.snapshot_every):
            with c.pause_gen.get_lock():
                if c.pause_gen.value <= c.resume_gen.value:
                    c.pause_gen.value += 1
        request = c.pause_gen.value
        if request > c.resume_gen.value:  # a consistent snapshot is wanted
            c.paused_gen[self.index] = request
            while c.resume_gen.value < request:
                time.sleep(0.0005)

    def agree(self, flag: str) -> str:
        check_flag(flag)
        return flag

    def gather(self, obj: Any) -> list[Any]:
        return [obj]  # each worker logs its own windows (through the parent's pipe)


class PipeSink:
    """A worker's metric sink: records go to the parent, which writes metrics.jsonl."""

    def __init__(self, conn, index: int) -> None:
        self.conn, self.index = conn, index

    def log(self, step: int, *, epoch: float | None = None, **scalars: float) -> dict:
        record = {"step": step, "epoch": epoch, **scalars}
        self.conn.send(("log", record))
        return record

    def close(self) -> None:
        self.conn.close()
