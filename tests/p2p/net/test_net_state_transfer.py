"""What a newcomer downloads (`p2p.net.state_transfer`): a donor's weights, optimizer state and
schedule position; the checks that refuse a bad download; the next donor asked after one.

    .venv/bin/python -m pytest tests/p2p/net/test_net_state_transfer.py -q
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from speechswarm.p2p.net.hivemind_sync import averaged_names
from speechswarm.p2p.net.state_transfer import (
    adopt,
    check_download,
    load_from_peers,
    optimizer_keys,
    pack_state,
)
from speechswarm.p2p.workspace import batchnorm_stat_names
from speechswarm.train.loop import TrainState
from speechswarm.train.optim import build_optimizer, build_scheduler

CLIP = 5.0
LOG = logging.getLogger("test")


def _trainee(seed: int = 0):
    """(model, optimizer, scheduler, state) as a peer builds them: AdamW, cosine with warmup."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2)
    )
    optimizer = build_optimizer(model.named_parameters(), "adamw", lr=1e-2, weight_decay=0.01)
    scheduler = build_scheduler(optimizer, name="cosine", total_steps=20, warmup_steps=3)
    return model, optimizer, scheduler, TrainState()


def _train(model, optimizer, scheduler, state, steps: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 4, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        state.step += 1


def _names(model):
    return averaged_names(model, "average")


def _check(model, optimizer, metadata, tensors):
    sd = model.state_dict()
    return check_download(
        metadata, tensors, own={n: sd[n] for n in _names(model)},
        params=[p for g in optimizer.param_groups for p in g["params"]],
        keys=optimizer_keys(optimizer), stat_names=batchnorm_stat_names(model), grad_clip=CLIP,
    )  # fmt: skip


def _donor(steps: int = 5):
    donor = _trainee(seed=0)
    _train(*donor, steps)
    model, optimizer, _, state = donor
    offer = pack_state(model, _names(model), optimizer, step=state.step, round=state.step // 2)
    return donor, offer


def test_a_newcomer_continues_exactly_where_the_donor_is():
    (d_model, d_opt, d_sched, d_state), (metadata, tensors) = _donor(steps=5)
    model, optimizer, scheduler, state = _trainee(seed=7)  # another initialisation
    reason, parsed = _check(model, optimizer, metadata, tensors)
    assert reason == "" and parsed["step"] == 5 and parsed["round"] == 2
    assert adopt(parsed, model, optimizer, scheduler, state, max_steps=20, log=LOG)
    assert state.step == 5
    assert optimizer.param_groups[0]["lr"] == d_opt.param_groups[0]["lr"] == parsed["lr"]
    assert optimizer.state_dict()["state"][0]["step"] == 5.0
    # the next steps on the same batches give the same weights, bit for bit: moments, step
    # counts (Adam's bias correction) and schedule all carried over
    _train(d_model, d_opt, d_sched, d_state, 3, seed=9)
    _train(model, optimizer, scheduler, state, 3, seed=9)
    for name, t in d_model.state_dict().items():
        if t.is_floating_point():  # not BatchNorm's batch counter: it is not averaged either
            assert torch.equal(model.state_dict()[name], t), name
    assert scheduler.get_last_lr() == d_sched.get_last_lr()


def test_a_donor_at_step_0_offers_weights_and_no_moments():
    model, optimizer, _, _ = _trainee(seed=0)
    metadata, tensors = pack_state(model, _names(model), optimizer, step=0, round=0)
    assert metadata["optimizer"] == [] and len(tensors) == len(_names(model))
    fresh = _trainee(seed=3)
    reason, parsed = _check(fresh[0], fresh[1], metadata, tensors)
    assert reason == "" and parsed["optimizer"] == {}
    assert adopt(parsed, *fresh, max_steps=20, log=LOG) and fresh[3].step == 0


def test_a_donor_past_the_last_step_gives_weights_only():
    _, (metadata, tensors) = _donor(steps=5)
    model, optimizer, scheduler, state = _trainee(seed=7)
    lr = optimizer.param_groups[0]["lr"]
    reason, parsed = _check(model, optimizer, metadata, tensors)
    assert not adopt(parsed, model, optimizer, scheduler, state, max_steps=5, log=LOG)
    assert state.step == 0 and optimizer.state_dict()["state"] == {}
    assert optimizer.param_groups[0]["lr"] == lr
    assert torch.equal(model.state_dict()["0.weight"], parsed["weights"]["0.weight"])


def _spoil(what: str, metadata: dict, tensors: list, names: list) -> None:
    """Corrupt a donor's offer in place the way `what` says."""
    at = {n: k for k, n in enumerate(names)}
    moment = {tuple(e): len(names) + k for k, e in enumerate(metadata["optimizer"])}
    if what == "nonfinite":
        tensors[at["0.weight"]][0, 0] = math.nan
    elif what == "scale":
        tensors[at["2.weight"]] *= 1e6
    elif what == "shape":
        tensors[at["0.weight"]] = torch.zeros(3, 5)
    elif what == "dtype":
        tensors[at["0.bias"]] = tensors[at["0.bias"]].double()
    elif what == "negative":
        tensors[at["1.running_var"]][0] = -1.0
    elif what == "count":
        tensors.append(torch.zeros(1))
    elif what == "metadata":
        metadata["step"] = -1
    elif what == "optimizer nonfinite":
        tensors[moment[(0, "exp_avg")]][0, 0] = math.inf
    elif what == "optimizer scale":  # a first moment no clipped gradient can give
        tensors[moment[(0, "exp_avg")]].fill_(10 * CLIP)
    elif what == "optimizer shape":
        tensors[moment[(1, "exp_avg_sq")]] = torch.zeros(4)
    elif what == "optimizer step":  # more optimizer steps than training steps
        tensors[moment[(0, "step")]] = torch.tensor(1e9)
    elif what == "optimizer keys":
        metadata["optimizer"][0] = [0, "momentum_buffer"]


@pytest.mark.parametrize(
    "what",
    ["nonfinite", "scale", "shape", "dtype", "negative", "count", "metadata", "optimizer nonfinite",
     "optimizer scale", "optimizer shape", "optimizer step", "optimizer keys"],
)  # fmt: skip
def test_a_bad_download_is_refused_with_its_reason(what):
    (d_model, *_), (metadata, tensors) = _donor(steps=5)
    tensors = [t.clone() for t in tensors]
    _spoil(what, metadata, tensors, _names(d_model))
    model, optimizer, _, _ = _trainee(seed=7)
    assert _check(model, optimizer, metadata, tensors) == (what, {})


class Donors:
    """A stand-in averager whose `download_state` hands out `offers` in turn (skipping the
    donors already tried), as GatedAverager does with the run's members."""

    def __init__(self, offers: dict):
        self.offers = offers

    def download_state(self, timeout, exclude=()):
        for donor, (metadata, tensors) in self.offers.items():
            if donor not in exclude:
                return metadata, tensors, donor
        return None


def test_a_refused_donor_is_counted_and_the_next_one_asked(caplog):
    (d_model, d_opt, *_), good = _donor(steps=5)
    bad = (dict(good[0]), [t.clone() for t in good[1]])
    _spoil("optimizer nonfinite", *bad, _names(d_model))
    model, optimizer, scheduler, state = _trainee(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = dict(grad_clip=CLIP, max_steps=20, timeout=1.0, log=LOG)
    with caplog.at_level(logging.WARNING, logger="test"):
        alone = load_from_peers(Donors({"bad": bad}), model, optimizer, scheduler, state, _names(model), **kwargs)  # fmt: skip
    # refused, logged with its donor and reason; the peer keeps its own state
    assert alone == {"loaded": False, "from_step": None, "reason": "optimizer nonfinite",
                     "refused": ["optimizer nonfinite"]}  # fmt: skip
    assert "bad refused: optimizer nonfinite" in caplog.text
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items()) and state.step == 0
    both = Donors({"bad": bad, "good": good})
    got = load_from_peers(both, model, optimizer, scheduler, state, _names(model), **kwargs)
    assert got["loaded"] and got["position"] and got["refused"] == ["optimizer nonfinite"]
    assert got["from_step"] == state.step == 5 and got["lr"] == got["donor_lr"]
    assert torch.equal(model.state_dict()["2.weight"], d_model.state_dict()["2.weight"])
