"""A time budget squeezes an ending schedule (onecycle, cosine) into the budget."""

from __future__ import annotations

import pytest
import torch

from speechswarm.checkpoint import load_checkpoint, save_checkpoint
from speechswarm.train.optim import BudgetedLR, budget_step, build_scheduler, lr_factor

ONECYCLE = dict(name="onecycle", total_steps=100, pct_start=0.2)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=1.0)


@pytest.mark.parametrize(
    ("step", "lead", "elapsed", "budget", "total", "expected"),
    [
        (10, 0, 30.0, 60.0, 100, 50),  # the clock is ahead: half the time, half the schedule
        (80, 0, 30.0, 60.0, 100, 80),  # the steps are ahead
        (10, 45, 30.0, 60.0, 100, 55),  # an earlier lead is kept
        (10, 0, 600.0, 60.0, 100, 100),  # past the budget: the schedule's end, not beyond
        (0, 0, -1.0, 60.0, 100, 0),  # a clock before the start counts as no time
    ],
)
def test_budget_step(step, lead, elapsed, budget, total, expected):
    assert budget_step(step, lead, elapsed, budget, total) == expected


def test_budgeted_onecycle_follows_the_clock_when_steps_are_slow():
    clock = FakeClock()
    opt = _optimizer()
    sched = build_scheduler(opt, time_budget_s=60.0, clock=clock, **ONECYCLE)
    assert isinstance(sched, BudgetedLR)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor(10, **ONECYCLE))
    clock.now += 30.0  # half the budget gone after 10 of 100 steps
    opt.step()
    sched.step()  # step 11: position 50
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor(50, **ONECYCLE))
    opt.step()
    sched.step()  # step 12 keeps the lead: position 51, never back to 12
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_factor(51, **ONECYCLE))


def test_no_budget_or_an_open_schedule_is_the_plain_step_schedule():
    clock = FakeClock()
    plain = build_scheduler(_optimizer(), clock=clock, **ONECYCLE)
    warm = build_scheduler(
        _optimizer(), time_budget_s=60.0, clock=clock, name="warmup", warmup_steps=5
    )
    assert not isinstance(plain, BudgetedLR)
    assert not isinstance(warm, BudgetedLR)


def test_lead_survives_a_weights_only_checkpoint(tmp_path):
    clock = FakeClock()
    opt = _optimizer()
    sched = build_scheduler(opt, time_budget_s=60.0, clock=clock, **ONECYCLE)
    opt.step()
    clock.now += 45.0
    sched.step()  # step 1, position 75: lead 74
    save_checkpoint(tmp_path / "c.pt", {"scheduler": sched.state_dict()})
    state = load_checkpoint(tmp_path / "c.pt")["scheduler"]  # weights-only load

    clock2 = FakeClock()  # a resumed run: its budget restarts
    opt2 = _optimizer()
    resumed = build_scheduler(opt2, time_budget_s=60.0, clock=clock2, **ONECYCLE)
    resumed.load_state_dict(state)
    assert resumed.lead == 74
    opt2.step()
    resumed.step()  # step 2: position 76, continuing where the first run was
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_factor(76, **ONECYCLE))
