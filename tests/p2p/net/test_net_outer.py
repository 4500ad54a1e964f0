"""A networked peer's outer optimizer (p2p.outer_lr, p2p.outer_momentum) on HivemindSync,
with a stand-in averager whose group average is known: the loaded weights are the anchor
moved by the outer step, BatchNorm statistics are the group's.

    .venv/bin/python -m pytest tests/p2p/net/test_net_outer.py -q
"""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from speechswarm.config import P2PConfig
from speechswarm.p2p.net.hivemind_sync import HivemindSync, averaged_names
from speechswarm.p2p.net.settings import NetSettings
from speechswarm.p2p.workspace import batchnorm_stat_names


class KnownAverage:
    """An averager whose every round "averages" the buffers to `self.average`."""

    def __init__(self, tensors):
        self.buffers = [t.detach().clone() for t in tensors]
        self.average: list[torch.Tensor] = []
        self.shared = None

    @contextlib.contextmanager
    def get_tensors(self):
        yield self.buffers

    def counter(self, _name):
        return 0

    def gather_info(self, step=0):
        return None

    def step(self, **_kw):
        averager = self

        class Control:
            def result(self, timeout=None):
                for buf, avg in zip(averager.buffers, averager.average, strict=True):
                    buf.copy_(avg)
                return {"me": 1, "peer": 1}

            def cancel(self):
                pass

        return Control()

    def share_state(self, metadata, tensors):
        self.shared = (metadata, tensors)


def make_sync(model, tmp_path, **p2p):
    names = averaged_names(model, "average")
    averager = KnownAverage([model.state_dict()[n] for n in names])
    sync = HivemindSync(
        averager, names, every=1, weight=1.0, settings=NetSettings(), p2p=P2PConfig(**p2p),
        rounds_path=tmp_path / "rounds.jsonl", log=logging.getLogger("test"),
        bn_names=batchnorm_stat_names(model),
    )  # fmt: skip
    return sync, averager, names


@pytest.mark.parametrize("outer", [{}, {"outer_lr": 1.5, "outer_momentum": 0.5}])
def test_a_peer_applies_the_outer_step_to_its_groups_average(tmp_path, outer):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sync, averager, names = make_sync(model, tmp_path, **outer)
    sync.set_anchor(model)
    x0 = {k: v.clone() for k, v in model.state_dict().items()}
    delta = {n: torch.full_like(x0[n], 0.1) for n in names}
    averager.average = [x0[n] + delta[n] for n in names]
    row = sync.average(model, 1)
    assert row["ok"]
    c = 1.5 * (1 + 0.5) if outer else 1.0  # Nesterov, first round: lr * (g + beta * g)
    after = model.state_dict()
    for n in names:
        expected = x0[n] + (0.1 if "running" in n else c * 0.1)
        torch.testing.assert_close(after[n], expected, rtol=0, atol=1e-6)
    if outer:
        assert set(sync.outer["momentum"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
        assert torch.equal(sync.outer["anchor"]["0.weight"], after["0.weight"])
    else:
        assert sync.outer == {"anchor": {}, "momentum": {}}


def test_a_rejected_average_moves_nothing(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sync, averager, names = make_sync(model, tmp_path, outer_lr=0.7, outer_momentum=0.9)
    sync.set_anchor(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    averager.average = [torch.full_like(before[n], float("nan")) for n in names]
    row = sync.average(model, 1)
    assert row["reason"] == "nonfinite"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert sync.outer["momentum"] == {}


def test_a_rounds_row_names_its_group_and_the_average_it_received(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sync, averager, names = make_sync(model, tmp_path)
    averager.average = [torch.full_like(model.state_dict()[n], -0.5) for n in names]
    row = sync.average(model, 1)
    values = sum(model.state_dict()[n].numel() for n in names)  # 3*2 + 2 + 4 x 2 = 16
    assert row["ok"] and values == 16
    assert row["avg_sum"] == -8.0 and row["avg_abs"] == 8.0
    assert row["members"] == ["me", "peer"] and len(row["group"]) == 16
    averager.average = [torch.full_like(model.state_dict()[n], float("nan")) for n in names]
    row = sync.average(model, 2)
    assert row["reason"] == "nonfinite" and row["avg_sum"] is None and row["avg_abs"] is None


def test_every_member_of_a_group_names_it_alike():
    from speechswarm.p2p.net.hivemind_sync import group_fields

    a = group_fields({"x": {"step": 4}, "y": {"step": 6}})
    b = group_fields({"y": {"step": 6, "tag": b"t"}, "x": {"step": 4}})
    assert a == b and a["members"] == ["x", "y"]
    assert group_fields({"x": {"step": 4}, "y": {"step": 8}})["group"] != a["group"]
    assert group_fields({}) == {"group": "", "members": []}
