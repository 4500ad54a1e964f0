"""Optimizer param groups and LR schedules against hand-computed values and torch's OneCycleLR."""

import io

import pytest
import torch
from torch import nn

from speechswarm.train.optim import build_optimizer, build_scheduler, lr_factor


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.LayerNorm(4), nn.Linear(4, 2))


def test_weight_decay_skips_biases_and_norms():
    model = _model()
    opt = build_optimizer(model.named_parameters(), name="adamw", lr=0.1, weight_decay=0.5)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 0.5
    assert groups["no_decay"]["weight_decay"] == 0.0
    decay_ids = {id(p) for p in groups["decay"]["params"]}
    assert decay_ids == {id(model[0].weight), id(model[3].weight)}
    assert len(groups["no_decay"]["params"]) == 6  # 2 linear biases, BN w/b, LN w/b


def test_adamw_step_with_zero_grad_only_decays_matrices():
    # Zero gradient: Adam's update m/(sqrt(v)+eps) is 0, so only decoupled decay acts:
    # p <- p * (1 - lr * wd) = p * 0.95 for matrices; biases and norms stay put.
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model, name="adamw", lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * 0.95 if p.ndim >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_runs_fused_and_matches_the_per_parameter_loop(name):
    model = _model()
    twin = _model()
    opt = build_optimizer(model, name=name, lr=0.01, weight_decay=0.1)
    assert opt.defaults["fused"] is True  # torch would take its Python loop on the CPU
    groups = [{**g, "params": [dict(twin.named_parameters())[n] for n in names]}
              for g, names in _group_names(model, opt)]  # fmt: skip
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    loop = cls(groups, lr=0.01, foreach=False)
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        for p, q in zip(model.parameters(), twin.parameters(), strict=True):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt.step()
        loop.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)


def _group_names(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    for g in opt.param_groups:
        yield (
            {k: v for k, v in g.items() if k in ("weight_decay",)},
            [names[id(p)] for p in g["params"]],
        )


def test_frozen_parameters_are_left_out_and_sgd_options_pass_through():
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, name="sgd", lr=0.01, momentum=0.8, nesterov=True)
    assert isinstance(opt, torch.optim.SGD)
    all_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model[0].weight) not in all_ids and len(all_ids) == 7
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["nesterov"] is True


def test_optimizer_errors_are_clear():
    model = _model()
    with pytest.raises(TypeError, match="named_parameters"):
        build_optimizer(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        build_optimizer(model, name="lamb", lr=0.1)
    assert isinstance(build_optimizer(model, name="adam", lr=0.1), torch.optim.Adam)


@pytest.mark.parametrize(
    ("step", "kwargs", "expected"),
    [
        (0, {"name": "constant"}, 1.0),
        (999, {"name": "constant"}, 1.0),
        (0, {"name": "warmup", "warmup_steps": 4}, 0.25),
        (2, {"name": "warmup", "warmup_steps": 4}, 0.75),
        (3, {"name": "warmup", "warmup_steps": 4}, 1.0),
        (100, {"name": "warmup", "warmup_steps": 4}, 1.0),
        # cosine: total 10, warmup 2, floor 0.1 -> pct = (step - 2) / 8
        (0, {"name": "cosine", "total_steps": 10, "warmup_steps": 2, "min_factor": 0.1}, 0.5),
        (2, {"name": "cosine", "total_steps": 10, "warmup_steps": 2, "min_factor": 0.1}, 1.0),
        # pct 0.25: 0.1 + 0.45 * (1 + cos(pi/4)) = 0.86819805
        (
            4,
            {"name": "cosine", "total_steps": 10, "warmup_steps": 2, "min_factor": 0.1},
            0.868198052,
        ),
        (6, {"name": "cosine", "total_steps": 10, "warmup_steps": 2, "min_factor": 0.1}, 0.55),
        (10, {"name": "cosine", "total_steps": 10, "warmup_steps": 2, "min_factor": 0.1}, 0.1),
        (50, {"name": "cosine", "total_steps": 10, "warmup_steps": 2, "min_factor": 0.1}, 0.1),
        # onecycle: total 10, pct_start 0.3 -> peak at step 2; 1/25 start, 1/(25e4) end
        (0, {"name": "onecycle", "total_steps": 10}, 0.04),
        (1, {"name": "onecycle", "total_steps": 10}, 0.52),
        (2, {"name": "onecycle", "total_steps": 10}, 1.0),
        (9, {"name": "onecycle", "total_steps": 10}, 4e-6),
        (10, {"name": "onecycle", "total_steps": 10}, 4e-6),
        # anneal: lr /= 1.1 at each epoch boundary of 5 steps
        (4, {"name": "anneal", "steps_per_epoch": 5}, 1.0),
        (5, {"name": "anneal", "steps_per_epoch": 5}, 1 / 1.1),
        (12, {"name": "anneal", "steps_per_epoch": 5}, 1 / 1.21),
        (
            10,
            {"name": "anneal", "steps_per_epoch": 5, "anneal_factor": 2.0, "min_factor": 0.3},
            0.3,
        ),
    ],
)
def test_lr_factor_hand_computed(step, kwargs, expected):
    assert lr_factor(step, **kwargs) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("total", "pct"), [(10, 0.3), (13, 0.25), (100, 0.3), (7, 0.0)])
def test_onecycle_matches_torch(total, pct):
    lr = 3e-3
    ours_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    ours = build_scheduler(ours_opt, name="onecycle", total_steps=total, pct_start=pct)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        ref_opt, max_lr=lr, total_steps=total, pct_start=pct, cycle_momentum=False
    )
    for _ in range(total):
        assert abs(ours_opt.param_groups[0]["lr"] - ref_opt.param_groups[0]["lr"]) < 1e-9
        for opt, sched in ((ours_opt, ours), (ref_opt, ref)):
            opt.step()
            sched.step()


def test_scheduler_state_dict_round_trips_through_weights_only_load():
    kwargs = {"name": "cosine", "total_steps": 20, "warmup_steps": 3, "min_factor": 0.05}
    opt = build_optimizer(_model(), lr=0.2)
    sched = build_scheduler(opt, **kwargs)
    for _ in range(7):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    opt2 = build_optimizer(_model(), lr=0.2)
    sched2 = build_scheduler(opt2, **kwargs)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 7
    assert sched2.get_last_lr() == pytest.approx([0.2 * lr_factor(7, **kwargs)] * 2)
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor(8, **kwargs), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "linear"}, "unknown LR schedule 'linear'"),
        ({"name": "warmup"}, "warmup_steps > 0"),
        ({"name": "cosine"}, "total_steps > 0"),
        ({"name": "anneal"}, "steps_per_epoch > 0"),
        ({"name": "onecycle", "total_steps": 10, "pct_start": 1.5}, "pct_start"),
    ],
)
def test_schedule_errors_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lr_factor(0, **kwargs)
