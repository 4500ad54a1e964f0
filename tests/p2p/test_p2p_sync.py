"""One agent's exchange logic on the in-memory transport: step() at a loop's sync point,
rejection accounting, locally kept tensors, what becomes of a planted faulty agent's message.

    .venv/bin/python -m pytest tests/p2p/test_p2p_sync.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from speechswarm.p2p.sync import Counters, GossipNode, Mailbox, MixSettings


def linear(fill: float) -> torch.nn.Module:
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.fill_(fill)
        m.bias.fill_(fill)
    return m


def test_publish_then_mix_averages_with_what_arrived():
    box = Mailbox()
    counters = {0: Counters(), 1: Counters()}
    nodes = [GossipNode(k, box, MixSettings(), counters) for k in range(2)]
    peer = linear(2.0)
    nodes[1].publish(peer.state_dict(), receivers=[0], round_index=0)
    own = linear(1.0).state_dict()
    nodes[0].publish(own, receivers=[1], round_index=0)
    mixed = nodes[0].mix(own, weights={0: 1.0, 1: 3.0}, round_index=0)
    assert torch.allclose(mixed["weight"], torch.full((1, 2), (1 * 1 + 3 * 2) / 4))
    assert box.receive(1)[0].sender == 0  # node 0's weights (before mixing) wait for node 1
    assert counters[0].msgs_recv == 1 and counters[0].bytes_recv == 3 * 4
    assert counters[0].msgs_sent == counters[1].msgs_sent == 1


def test_rejected_message_drops_out_and_is_charged_to_its_sender():
    box = Mailbox()
    counters = {0: Counters(), 1: Counters(), 2: Counters()}
    liar = GossipNode(1, box, MixSettings(fault="scale", fault_scale=100.0), counters)
    honest = GossipNode(2, box, MixSettings(), counters)
    me = GossipNode(0, box, MixSettings(max_norm_ratio=5.0), counters)
    liar.publish(linear(1.0).state_dict(), [0], 0)
    honest.publish(linear(3.0).state_dict(), [0], 0)
    own = linear(1.0).state_dict()
    mixed = me.mix(own, {0: 1.0, 1: 1.0, 2: 1.0}, 0)
    assert torch.allclose(mixed["bias"], torch.tensor([2.0]))  # (1 + 3) / 2: the liar is out
    assert counters[0].rejected == 1 and counters[0].reasons == {"norm": 1}
    assert counters[1].rejected_by_peers == 1 and counters[2].rejected_by_peers == 0


def test_keep_local_tensors_are_not_averaged():
    box = Mailbox()
    counters = {0: Counters(), 1: Counters()}
    GossipNode(1, box, MixSettings(), counters).publish(linear(3.0).state_dict(), [0], 0)
    me = GossipNode(0, box, MixSettings(keep_local=("bias",)), counters)
    mixed = me.mix(linear(1.0).state_dict(), {0: 1.0, 1: 1.0}, 0)
    assert mixed["bias"].item() == 1.0 and mixed["weight"][0, 0].item() == 2.0
    assert Counters.from_dict(counters[0].to_dict()) == counters[0]


def test_wrong_shapes_are_refused_even_without_value_checks():
    box = Mailbox()
    counters = {0: Counters(), 1: Counters()}
    GossipNode(1, box, MixSettings(fault="wrong_shape"), counters).publish(
        linear(3.0).state_dict(), [0], 0
    )
    me = GossipNode(0, box, MixSettings(validate=False), counters)
    mixed = me.mix(linear(1.0).state_dict(), {0: 1.0, 1: 1.0}, 0)
    assert mixed["bias"].item() == 1.0  # its own weights: nothing could be averaged
    assert counters[0].reasons == {"shape": 1} and counters[1].rejected_by_peers == 1


def poisoned_round(aggregation: str, fault: str, validate: bool = True) -> dict[int, Counters]:
    """Agent 0 mixes its own state (every value 1), honest agents 1-3's (2, 3 and 4) and
    the planted faulty agent 4's corruption of its state (2.5; stale: -9)."""
    box = Mailbox()
    counters = {k: Counters() for k in range(5)}
    settings = MixSettings(aggregation=aggregation, validate=validate, faulty=(4,))
    for k, fill in ((1, 2.0), (2, 3.0), (3, 4.0)):
        GossipNode(k, box, settings, counters).publish(linear(fill).state_dict(), [0], 0)
    liar = MixSettings(fault=fault, fault_scale=1e6, faulty=(4,))
    GossipNode(4, box, liar, counters, earlier=linear(-9.0).state_dict()).publish(
        linear(2.5).state_dict(), [0], 0
    )
    GossipNode(0, box, settings, counters).mix(
        linear(1.0).state_dict(), dict.fromkeys(range(5), 1.0), 0
    )
    return counters


def test_a_poisoned_message_is_counted_refused_outvoted_or_through():
    def counts(c: Counters) -> tuple[int, int, int]:
        return c.poisoned_recv, c.poisoned_refused, c.poisoned_outvoted

    refused = poisoned_round("mean", "scale")[0]  # the norm check
    assert counts(refused) == (1, 1, 0) and refused.poison_shift == 0.0  # nothing accepted
    outvoted = poisoned_round("median", "scale", validate=False)[0]
    assert counts(outvoted) == (1, 0, 1)
    # median of 1, 2, 3, 4, 2.5e6 is 3; without the liar (1, 2, 3, 4) it is 2.5
    assert outvoted.poison_shift == pytest.approx(0.5 / 2.5)
    through = poisoned_round("mean", "scale", validate=False)[0]
    assert counts(through) == (1, 0, 0) and through.poison_shift > 1e4
    nan_mean = poisoned_round("mean", "nan", validate=False)[0]
    assert counts(nan_mean) == (1, 0, 0) and nan_mean.poison_shift == math.inf
    assert counts(poisoned_round("median", "nan", validate=False)[0]) == (1, 0, 1)
    assert counts(poisoned_round("mean", "stale")[0]) == (1, 1, 0)  # |-9| > 5 x |1|: norm
    assert counts(poisoned_round("median", "stale", validate=False)[0]) == (1, 0, 1)
    assert counts(poisoned_round("mean", "stale", validate=False)[0]) == (1, 0, 0)  # 0.2
    for k in (1, 2, 3, 4):  # only the receiver counts
        assert poisoned_round("mean", "scale")[k].poisoned_recv == 0


def test_a_stale_agent_sends_its_earlier_weights():
    # own -7 and the replayed -9 (the sender's earlier weights, not its current 2.5): -8
    box = Mailbox()
    counters = {0: Counters(), 1: Counters()}
    GossipNode(
        1, box, MixSettings(fault="stale"), counters, earlier=linear(-9.0).state_dict()
    ).publish(linear(2.5).state_dict(), [0], 0)
    mixed = GossipNode(0, box, MixSettings(), counters).mix(
        linear(-7.0).state_dict(), {0: 1.0, 1: 1.0}, 0
    )
    assert mixed["bias"].item() == -8.0
