"""One agent's exchange logic on the in-memory transport: step() at a loop's sync point,
rejection accounting, locally kept tensors.

    .venv/bin/python -m pytest tests/p2p/test_p2p_sync.py -q
"""

from __future__ import annotations

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
