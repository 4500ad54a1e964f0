"""Median and trimmed mean inside the butterfly all-reduce (`p2p.net.robust_reduce`): the
reducer of one share of the vector, driven without a network, against hand-computed answers.

    .venv/bin/python -m pytest tests/p2p/net/test_net_robust.py -q
"""

from __future__ import annotations

import asyncio

import pytest
import torch

pytest.importorskip("hivemind")

from speechswarm.p2p.mixing import robust_rule  # noqa: E402
from speechswarm.p2p.net.robust_reduce import RobustPartReducer  # noqa: E402


def test_the_rule_a_group_allows():
    assert robust_rule("median", 0.2, 3) == "median"
    assert robust_rule("median", 0.2, 2) == "mean"  # of 2 values a median is their mean
    assert robust_rule("trimmed_mean", 0.25, 4) == "trimmed_mean"  # cuts 1 at each end
    assert robust_rule("trimmed_mean", 0.2, 4) == "mean"  # floor(0.8) = 0: cuts nothing
    assert robust_rule("mean", 0.2, 9) == "mean"


def _reduce(method, trim, parts, weights, banned=()):
    """Each sender's parts fed as hivemind's runner does (all at once, in any order); returns
    the result every sender got for each part, and the rule of each part."""
    rules = []

    async def run():
        shapes = tuple(p.shape for p in parts[0])
        reducer = RobustPartReducer(shapes, len(parts), method=method, trim=trim, on_reduce=rules.append)  # fmt: skip
        for sender in banned:
            reducer.on_sender_failed(sender)

        async def send(sender):
            return [await reducer.accumulate_part(sender, i, p, weight=weights[sender])
                    for i, p in enumerate(parts[sender])]  # fmt: skip

        live = [k for k in range(len(parts)) if k not in banned]
        return await asyncio.gather(*(send(k) for k in reversed(live)))

    return asyncio.run(run()), rules


def _parts(*rows):
    """One sender per row, two parts each: [a, b] and [c]."""
    return [(torch.tensor(r[:2]), torch.tensor(r[2:])) for r in rows]


def test_median_and_trimmed_mean_leave_a_liar_out_of_every_part():
    parts = _parts([0.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [1e3, -1e3, float("nan")])
    weights = [1.0, 1.0, 1.0, 5.0]  # unweighted: a heavy liar counts once
    got, rules = _reduce("median", 0.2, parts, weights)
    # per coordinate, the sorted values' middle two averaged (NaN sorts last)
    expected = [torch.tensor([1.5, 1.5]), torch.tensor([2.0])]
    for result in got:  # every sender gets the same result
        for part, want in zip(result, expected, strict=True):
            torch.testing.assert_close(part, want)
    assert rules == ["median", "median"]
    got, rules = _reduce("trimmed_mean", 0.25, parts[:3] + _parts([1e3, -1e3, 2.0]), weights)
    # cut the lowest and highest of 4: [1, 2] -> 1.5, [1, 2] -> 1.5, [2, 2] -> 2
    torch.testing.assert_close(got[0][0], torch.tensor([1.5, 1.5]))
    torch.testing.assert_close(got[0][1], torch.tensor([2.0]))
    assert rules == ["trimmed_mean", "trimmed_mean"]


def test_fewer_than_three_senders_fall_back_to_the_weighted_mean_and_say_so():
    parts = _parts([0.0, 1.0, 2.0], [3.0, 4.0, 5.0])
    got, rules = _reduce("median", 0.2, parts, [1.0, 3.0])
    torch.testing.assert_close(got[0][0], torch.tensor([2.25, 3.25]))  # (1x0 + 3x3) / 4
    assert rules == ["mean", "mean"]
    # a group of 3 whose third sender was dropped before sending: 2 values, the mean
    three = _parts([0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [9.0, 9.0, 9.0])
    got, rules = _reduce("median", 0.2, three, [1.0, 1.0, 1.0], banned=(2,))
    torch.testing.assert_close(got[0][1], torch.tensor([3.5]))
    assert rules == ["mean", "mean"]
