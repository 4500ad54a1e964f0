"""Peers that follow a topology (`p2p.net.neighbour_groups`, `HivemindSync` with a plan): the
per-round groups on hand-checked graphs, and the fall back to whoever is reachable, with a
stand-in averager.

    .venv/bin/python -m pytest tests/p2p/net/test_net_neighbours.py -q
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_net_outer import KnownAverage

from speechswarm.config import P2PConfig
from speechswarm.data.manifest import write_manifest
from speechswarm.errors import UsageError
from speechswarm.p2p.experiment import make_agents
from speechswarm.p2p.net.hivemind_sync import HivemindSync, averaged_names
from speechswarm.p2p.net.neighbour_groups import NeighbourPlan, plan_groups
from speechswarm.p2p.net.peer import draw_as_agent, peer_config
from speechswarm.p2p.net.settings import NetSettings
from speechswarm.p2p.topology import ring, topology_for_round, topology_options
from speechswarm.p2p.workspace import Workspace
from speechswarm.train.assemble import build_run


def test_groups_are_disjoint_neighbourhoods_and_every_peer_plans_alike():
    adj = ring(6)
    for r in range(20):
        groups = plan_groups(adj, 2, seed=0, round_index=r)
        members = [i for g in groups for i in g]
        assert len(members) == len(set(members))  # disjoint
        assert all(len(g) == 2 and adj[g[0], g[1]] for g in groups)  # ring edges only
        assert groups == plan_groups(adj, 2, seed=0, round_index=r)  # the same on every peer
    # over the rounds every edge of the ring gets its turn
    used = {tuple(g) for r in range(40) for g in plan_groups(adj, 2, 0, r)}
    assert used == {(i, i + 1) for i in range(5)} | {(0, 5)}
    # a ring of 4 is always matched in full; on one of 5 someone sits out each round
    assert all(sum(map(len, plan_groups(ring(4), 2, 0, r))) == 4 for r in range(20))
    assert all(sum(map(len, plan_groups(ring(5), 2, 0, r))) == 4 for r in range(20))


def test_larger_groups_are_a_peer_and_its_neighbours_and_directions_do_not_matter():
    adj = np.zeros((5, 5), dtype=bool)
    adj[0, 1:] = True  # a directed star: 0 pulls from everyone
    groups = plan_groups(adj, 3, seed=1, round_index=0)
    assert len(groups) == 1 and 0 in groups[0] and len(groups[0]) == 3  # 1..4 only touch 0


def test_a_plan_needs_the_peers_number():
    p2p = P2PConfig(agents=4, topology="ring")
    with pytest.raises(UsageError, match="--index"):
        NeighbourPlan.from_config(p2p, -1, 2)
    plan = NeighbourPlan.from_config(p2p, 2, 2)
    assert plan.neighbours(0) == {1, 3} and 2 in plan.group(0) and len(plan.group(0)) == 2
    assert plan.key_bits(3, [1, 2]) != plan.key_bits(4, [1, 2]) != plan.key_bits(3, [2, 3])


class Keyed(KnownAverage):
    """A stand-in averager whose round finds a group only under the group keys in `meet`."""

    def __init__(self, tensors, meet):
        super().__init__(tensors)
        self.meet, self.bits, self.searched = meet, "", []

    def set_group_bits(self, bits):
        self.bits = bits

    def gather_info(self, **info):
        return info

    def step(self, **kw):
        self.searched.append(self.bits)
        control = super().step(**kw)
        peers = self.meet.get(self.bits)

        class Control:
            def result(self, timeout=None):
                return control.result() and peers if peers else None

            def cancel(self):
                pass

        return Control()


@pytest.mark.parametrize("neighbour_comes", [True, False])
def test_a_round_waits_for_its_neighbours_then_falls_back_to_anyone(tmp_path, neighbour_comes):
    model = torch.nn.Linear(3, 2)
    names = averaged_names(model, "average")
    plan = NeighbourPlan.from_config(P2PConfig(agents=4, topology="ring"), 0, 2)
    group = plan.group(0)  # step 2 of rounds of 2 steps: round 0, the simulation's first
    neighbours = {plan.key_bits(0, group): {"me": {"index": 0}, "n": {"index": max(group)}}}
    anyone = {"": {"me": {"index": 0}, "far": {"index": 2}}}
    averager = Keyed([model.state_dict()[n] for n in names], {**anyone, **(neighbours if neighbour_comes else {})})  # fmt: skip
    averager.average = [model.state_dict()[n] + 0.01 for n in names]
    sync = HivemindSync(
        averager, names, every=2, weight=1.0, settings=NetSettings(timeout_s=2.0), p2p=P2PConfig(),
        rounds_path=tmp_path / "rounds.jsonl", log=logging.getLogger("test"), plan=plan,
    )  # fmt: skip
    row = sync.average(model, 2)
    assert row["ok"] and row["planned"] == group
    if neighbour_comes:
        assert averager.searched == [plan.key_bits(0, group)]
        assert row["topology"] == "neighbours" and row["indices"] == group
        assert (sync.neighbour_rounds, sync.topology_fallbacks) == (1, 0)
    else:  # its neighbour did not come: it looked for anyone under the common key
        assert averager.searched == [plan.key_bits(0, group), ""]
        assert row["topology"] == "fallback" and row["indices"] == [0, 2]
        assert (sync.neighbour_rounds, sync.topology_fallbacks) == (0, 1)


def test_a_peers_round_is_the_simulations_round_on_redrawn_graphs(tmp_path):
    """The round that ends at step (r + 1) x every plans on the simulation's graph of round r
    and draws its groups as the simulation's `groups` run does in round r (with
    p2p.redraw_every=1 each round has a fresh graph, so an off-by-one shows)."""
    p2p = P2PConfig(agents=6, topology="regular", degree=3, redraw_every=1, seed=3)
    model = torch.nn.Linear(3, 2)
    names = averaged_names(model, "average")
    plan = NeighbourPlan.from_config(p2p, 0, 2)
    averager = Keyed([model.state_dict()[n] for n in names], {})
    sync = HivemindSync(
        averager, names, every=3, weight=1.0, settings=NetSettings(timeout_s=2.0), p2p=p2p,
        rounds_path=tmp_path / "rounds.jsonl", log=logging.getLogger("test"), plan=plan,
    )  # fmt: skip
    for r in range(6):
        graph = topology_for_round("regular", 6, r, redraw_every=1, seed=3, **topology_options(p2p))  # fmt: skip
        simulated = plan_groups(graph, 2, 3, r)
        row = sync.average(model, 3 * (r + 1))
        assert row["planned"] == next((g for g in simulated if 0 in g), [])


def test_a_numbered_peer_deals_its_batches_as_the_simulated_agent(p2p_config, tmp_path):
    """Peer k of a swarm (`--index k`) takes the simulation's agent k's batch order (seed
    train.seed + k), not agent 0's: the same data in the same order in both modes."""
    cfg = p2p_config("deal", "p2p.agents=2")
    agent = make_agents(cfg, tmp_path)[1]
    work = Workspace(cfg, trainers={1: agent.train}, tests={}, work={1: (2, 0)})
    simulated = work.agent_run(1).sampler
    train = tmp_path / "train.jsonl"
    write_manifest(train, agent.train)
    run = build_run(peer_config(cfg, train, train, tmp_path / "peer", 2), progress=False)
    as_rank0 = run.sampler
    peer = draw_as_agent(run, 1).sampler
    for epoch in (1, 2):  # past sortagrad's sorted first epoch
        for s in (simulated, as_rank0, peer):
            s.set_epoch(epoch)
        assert list(peer) == list(simulated)
    assert list(as_rank0) != list(simulated)
