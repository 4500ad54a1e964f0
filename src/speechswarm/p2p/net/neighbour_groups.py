"""Which graph neighbours average together in each round, for peers that follow a topology
(`speechswarm peer --topology --index K`). Pure: numpy and the simulation's graphs.

    plan = NeighbourPlan.from_config(p2p, index=2, group_size=2)
    plan.group(round_index=7)     # [1, 2]: this round, peer 2 averages with peer 1
    plan.key_bits(7)              # the hivemind group-key bits those two look for

Every peer of a run computes the same plan from the same `p2p:` section (topology, degree,
seed, agents): in round r the graph (`topology.topology_for_round`, directions ignored: an
average is mutual) is cut into disjoint groups of up to `group_size` peers, each a peer drawn
at random and up to `group_size - 1` of its free neighbours, also drawn at random (the draw
seeded by p2p.seed and r). Over the rounds every edge gets its turn, as randomized gossip on
the graph. A peer left without a free neighbour is in no group that round.

Each group matchmakes under its own hivemind group key (`key_bits`: the round and the group's
first member), so only its planned members can meet there; where a member does not come, the
others fall back to the run's common key after a share of the round's budget
(`HivemindSync`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speechswarm.errors import UsageError
from speechswarm.p2p.topology import topology_for_round, topology_options


def plan_groups(adj: np.ndarray, group_size: int, seed: int, round_index: int) -> list[list[int]]:
    """Disjoint groups (sorted peer indices, 2 to `group_size` each) of round `round_index`:
    a randomly drawn free peer with up to group_size - 1 of its free neighbours in the
    undirected `adj | adj.T`, until no free peer has a free neighbour. Same arguments, same
    groups."""
    linked = np.asarray(adj, dtype=bool)
    linked = linked | linked.T
    n = len(linked)
    rng = np.random.default_rng([seed, round_index, 4801])
    free = np.ones(n, dtype=bool)
    groups = []
    for first in rng.permutation(n):
        if not free[first]:
            continue
        others = [int(j) for j in rng.permutation(n) if linked[first, j] and free[j]]
        if not others:
            continue
        group = sorted([int(first), *others[: group_size - 1]])
        free[group] = False
        groups.append(group)
    return groups


@dataclass(frozen=True)
class NeighbourPlan:
    """One peer's view of the plan: its `index` among `agents` peers on the run's graph."""

    index: int
    agents: int
    group_size: int
    kind: str
    seed: int
    redraw_every: int
    options: tuple  # topology_options' items

    @classmethod
    def from_config(cls, p2p, index: int, group_size: int) -> NeighbourPlan:
        if not 0 <= index < p2p.agents:
            raise UsageError(f"--topology needs --index, this peer's number 0..{p2p.agents - 1} (p2p.agents), got {index}")  # fmt: skip
        options = tuple(sorted(topology_options(p2p).items()))
        plan = cls(index, p2p.agents, group_size, p2p.topology, p2p.seed, p2p.redraw_every, options)
        plan.graph(0)  # a graph the settings cannot build fails here, with its keys named
        return plan

    def graph(self, round_index: int) -> np.ndarray:
        return topology_for_round(
            self.kind, self.agents, round_index, redraw_every=self.redraw_every, seed=self.seed,
            **dict(self.options),
        )  # fmt: skip

    def group(self, round_index: int) -> list[int]:
        """This peer's planned group in round `round_index` (itself included); [] if none."""
        groups = plan_groups(self.graph(round_index), self.group_size, self.seed, round_index)
        return next((g for g in groups if self.index in g), [])

    def neighbours(self, round_index: int) -> set[int]:
        """Peers linked to this one in the round's graph (either direction)."""
        adj = self.graph(round_index)
        return {int(j) for j in np.flatnonzero(adj[self.index] | adj[:, self.index])}

    @staticmethod
    def key_bits(round_index: int, group: list[int]) -> str:
        """hivemind group-key bits ('0'/'1') naming round `round_index`'s `group`."""
        return format(round_index, "032b") + format(min(group), "016b")
