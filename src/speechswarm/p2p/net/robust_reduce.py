"""Median and trimmed mean inside hivemind's butterfly all-reduce (p2p.aggregation).

    reducer = RobustPartReducer(part_shapes, num_senders, method="median", trim=0.2,
                                on_reduce=lambda rule: ...)

In a butterfly all-reduce each member reduces one share of the vector: every member sends it
its values for that share, part by part, and it returns the result to each. hivemind's
`TensorPartReducer` sums the parts as they come and divides by the summed weights (a weighted
mean). This reducer keeps every sender's values of the current part instead and, once all
that are still in the round have sent theirs, applies `p2p.mixing.aggregate` to them: the
simulation's coordinate-wise median or trimmed mean, unweighted (robustness needs each member
to count once). Every member gets the same result for the part, as with the mean.

A robust rule needs at least 3 values per coordinate: with fewer (a group of 2, or members
dropped mid-round) and for a trimmed mean that would cut nothing (floor(trim x k) = 0), the
part is reduced by the weighted mean, and `on_reduce` is told which rule was applied, so the
peer counts such fallbacks. Each member reduces its own share by its own p2p.aggregation:
peers of one run should share it.
"""

from __future__ import annotations

import asyncio

import torch
from hivemind.averaging.partition import (
    AllreduceException,
    BannedException,
    TensorPartReducer,
)

from speechswarm.p2p import mixing


class RobustPartReducer(TensorPartReducer):
    """hivemind's reducer with `mixing.aggregate(method)` in place of the weighted mean where
    `mixing.robust_rule` allows it. `on_reduce(rule)`: called once per part with the rule
    applied ("median", "trimmed_mean" or "mean")."""

    def __init__(self, part_shapes, num_senders: int, *, method: str, trim: float, on_reduce):
        self.method, self.trim, self.on_reduce = method, trim, on_reduce
        self.parts: list[torch.Tensor] = []  # the current part's values, one per sender
        super().__init__(part_shapes, num_senders)

    def reset_accumulators(self):
        super().reset_accumulators()
        self.parts = []

    async def accumulate_part(
        self, sender_index: int, part_index: int, tensor_part: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        """hivemind's `accumulate_part`, which also keeps the sender's values of the part."""
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        self.num_parts_received[sender_index] += 1
        while part_index > self.current_part_index:  # wait for the previous parts
            await asyncio.wait(
                {self.current_part_future, asyncio.create_task(self.finished.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self}")
        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index
        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self.accumulator.add_(tensor_part, alpha=weight)
            if weight > 0:  # an auxiliary member (weight 0) does not vote
                # a copy: a member's own part is a view of the tensor being averaged
                self.parts.append(tensor_part.detach().clone())
            self.current_part_accumulated_from += 1
            self.denominator += weight
            self.check_current_part_finished()
        return await current_part_future

    def check_current_part_finished(self):
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from == self.num_current_senders:
            self.current_part_future.set_result(self._reduce())
            self.reset_accumulators()

    def _reduce(self) -> torch.Tensor:
        rule = mixing.robust_rule(self.method, self.trim, len(self.parts))
        self.on_reduce(rule)
        if rule == "mean":
            return self.accumulator.div_(self.denominator)
        states = [{"part": p} for p in self.parts]
        return mixing.aggregate(states, None, method=rule, trim=self.trim)["part"]
