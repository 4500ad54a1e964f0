"""Background averaging (`--background`): the merge of a late average with the local steps made
meanwhile, hand-computed, and HivemindSync's bound on how late it may land, with a stand-in
averager whose average arrives when the test says.

    .venv/bin/python -m pytest tests/p2p/net/test_net_background.py -q
"""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from test_net_outer import KnownAverage

from speechswarm.config import P2PConfig
from speechswarm.errors import UsageError
from speechswarm.p2p.mixing import merge_late_average
from speechswarm.p2p.net.background import batch_counts, ema_decays
from speechswarm.p2p.net.hivemind_sync import HivemindSync, averaged_names
from speechswarm.p2p.net.settings import NetSettings
from speechswarm.p2p.workspace import batchnorm_stat_names


def test_a_late_average_keeps_the_local_progress_and_running_variances_stay_positive():
    snapshot = {"w": torch.tensor([1.0, 2.0]), "var": torch.tensor([10.0]), "n": torch.tensor(3)}
    current = {"w": torch.tensor([1.5, 1.75]), "var": torch.tensor([8.195]), "n": torch.tensor(5)}
    averaged = {"w": torch.tensor([3.0, 0.0]), "var": torch.tensor([0.1])}
    d = 0.81  # two BatchNorm updates at momentum 0.1: 8.195 = 0.81 * 10 + 0.19 * 0.5
    out = merge_late_average(averaged, snapshot, current, {"var": d})
    # averaged + (current - snapshot): 3 + 0.5, 0 - 0.25
    assert torch.equal(out["w"], torch.tensor([3.5, -0.25]))
    # current + d (averaged - snapshot) = d * 0.1 + 0.19 * 0.5: the batches' share is kept
    torch.testing.assert_close(out["var"], torch.tensor([0.81 * 0.1 + 0.19 * 0.5]))
    assert 0.1 + (8.195 - 10.0) < 0  # the plain rule would give a negative variance
    assert torch.equal(out["n"], current["n"])  # integers: this peer's own count
    # nothing happened since the snapshot: the average itself, bit for bit
    same = merge_late_average(averaged, snapshot, snapshot, {"var": 1.0})
    assert all(torch.equal(same[k], averaged[k]) for k in averaged)


def test_a_statistics_share_of_the_snapshot_decays_with_each_batchnorm_update():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4, momentum=None))  # fmt: skip
    model.train()
    for _ in range(3):
        model(torch.randn(5, 3))
    counts = batch_counts(model)
    assert counts == {"1.": 3, "2.": 3}
    for _ in range(2):
        model(torch.randn(5, 3))
    names = batchnorm_stat_names(model)
    decay = ema_decays(model, counts, names)
    assert decay["1.running_mean"] == decay["1.running_var"] == pytest.approx(0.9**2)
    assert decay["2.running_var"] == pytest.approx(3 / 5)  # a cumulative average of 3, then 5
    assert ema_decays(model, counts, ["1.running_mean"]) == {"1.running_mean": pytest.approx(0.81)}


class Held(KnownAverage):
    """A stand-in averager whose round brings `average` only once `arrive` is set (else it
    times out, as hivemind's step does past its budget)."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.arrive = threading.Event()
        self.rounds = 0

    def step(self, **kw):
        self.rounds += 1
        control, arrive = super().step(**kw), self.arrive

        class Control:
            def result(self, timeout=None):
                if not arrive.wait(timeout):
                    raise TimeoutError
                return control.result()

            def cancel(self):
                pass

        return Control()


def make(tmp_path, every=2, max_staleness=0, last_step=100, timeout_s=15.0, **p2p):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():  # values whose sums below are exact in float32
        for k, p in enumerate(model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) * 0.5 + k)
    names = averaged_names(model, "average")
    averager = Held([model.state_dict()[n] for n in names])
    sync = HivemindSync(
        averager, names, every=every, weight=1.0,
        settings=NetSettings(matchmaking_s=0.2, timeout_s=timeout_s), p2p=P2PConfig(**p2p),
        rounds_path=tmp_path / "rounds.jsonl", log=logging.getLogger("test"),
        bn_names=batchnorm_stat_names(model), background=True, max_staleness=max_staleness,
        last_step=last_step,
    )  # fmt: skip
    sync.set_anchor(model)
    return model, sync, averager, names


def local_step(model):
    """A stand-in for a training step: +0.25 on every parameter, one BatchNorm update."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)
    model.train()
    model(torch.randn(4, 3))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("outer", [{}, {"outer_lr": 1.5, "outer_momentum": 0.5}])
def test_an_average_that_lands_later_keeps_the_steps_made_meanwhile(tmp_path, outer):
    model, sync, averager, names = make(tmp_path, **outer)
    snapshot = _state(model)
    averager.average = [snapshot[n] + 1.0 for n in names]  # the group's average: +1
    sync.after_step(model, SimpleNamespace(step=2))  # round end: launched, training goes on
    assert sync.flight is not None and not (tmp_path / "rounds.jsonl").read_text()
    local_step(model)
    sync.after_step(model, SimpleNamespace(step=3))  # not in yet, within the bound: no wait
    assert sync.flight is not None
    local_step(model)
    current = _state(model)
    averager.arrive.set()
    sync.flight.future.result(timeout=5)
    sync.after_step(model, SimpleNamespace(step=4))  # in: applied, then the next round starts
    after = model.state_dict()
    # the average, moved by the outer step (Nesterov, first round: 1.5 * (1 + 0.5) = 2.25 x
    # the pseudo-gradient), plus the two local steps: +0.5
    moved = 2.25 if outer else 1.0
    for n in names:
        if "running" in n:  # current + 0.9^2 x (average - snapshot): the snapshot's share
            expected = (current[n].double() + 0.81 * 1.0).float()
            torch.testing.assert_close(after[n], expected, rtol=0, atol=1e-6)
        else:
            assert torch.equal(after[n], snapshot[n] + moved + 0.5), n
    if outer:  # the next pseudo-gradient starts from the outer step's result, not the merge
        assert torch.equal(sync.outer["anchor"]["0.weight"], snapshot["0.weight"] + 2.25)
    assert torch.equal(after["1.num_batches_tracked"], current["1.num_batches_tracked"])
    row = _rows(tmp_path)[0]
    assert row["ok"] and row["background"] and row["step"] == 2 and row["applied_step"] == 4
    assert row["staleness"] == 2 and not row["waited"] and row["wait_s"] == 0.0
    assert row["overlap_s"] > 0 and row["blocked_s"] < row["seconds"] + 1.0
    assert sync.staleness == [2] and sync.waits == 0 and sync.overlapped == 1
    assert sync.flight is not None and sync.flight.step == 4  # the next round is on its way


def _rows(tmp_path):
    import json

    return [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]


def test_the_staleness_bound_makes_the_loop_wait_for_the_average(tmp_path):
    model, sync, averager, names = make(tmp_path, every=4, max_staleness=1)
    snapshot = _state(model)
    averager.average = [snapshot[n] - 1.0 for n in names]
    sync.after_step(model, SimpleNamespace(step=4))
    local_step(model)
    threading.Timer(0.3, averager.arrive.set).start()
    started = time.perf_counter()
    sync.after_step(model, SimpleNamespace(step=5))  # one step late: the bound; it waits
    waited = time.perf_counter() - started
    (row,) = _rows(tmp_path)
    assert row["ok"] and row["waited"] and row["staleness"] == 1 and waited >= 0.25
    assert row["wait_s"] == pytest.approx(waited, abs=0.05) and row["blocked_s"] >= row["wait_s"]
    assert torch.equal(model.state_dict()["0.weight"], snapshot["0.weight"] - 1.0 + 0.25)
    assert (sync.waits, sync.gave_up) == (1, 0) and sync.wait_seconds == row["wait_s"]


def test_an_average_that_never_comes_is_given_up_at_the_timeout(tmp_path):
    model, sync, averager, names = make(tmp_path, every=2, max_staleness=1, timeout_s=1.0)
    averager.average = [torch.zeros_like(model.state_dict()[n]) for n in names]
    sync.after_step(model, SimpleNamespace(step=2))
    local_step(model)
    current = _state(model)
    started = time.perf_counter()
    sync.after_step(model, SimpleNamespace(step=3))  # waits, at most the round's budget
    assert time.perf_counter() - started < 1.0 + 0.5 + 0.5
    (row,) = _rows(tmp_path)
    assert row["reason"] == "timeout" and row["waited"] and sync.gave_up == 1
    assert all(torch.equal(v, current[k]) for k, v in model.state_dict().items())


def test_a_late_average_that_fails_validation_moves_nothing(tmp_path):
    model, sync, averager, names = make(tmp_path)
    averager.average = [torch.full_like(model.state_dict()[n], float("nan")) for n in names]
    averager.arrive.set()
    sync.after_step(model, SimpleNamespace(step=2))
    local_step(model)
    current = _state(model)
    sync.finish(model, SimpleNamespace(step=3))  # the run stopped: the round is waited for
    (row,) = _rows(tmp_path)
    assert row["reason"] == "nonfinite" and row["avg_sum"] is None and sync.flight is None
    assert all(torch.equal(v, current[k]) for k, v in model.state_dict().items())


def test_the_last_round_is_averaged_in_the_foreground(tmp_path):
    model, sync, averager, names = make(tmp_path, last_step=4)
    averager.average = [model.state_dict()[n] + 1.0 for n in names]
    averager.arrive.set()
    sync.after_step(model, SimpleNamespace(step=2))
    local_step(model)
    sync.after_step(model, SimpleNamespace(step=3))
    local_step(model)
    sync.after_step(model, SimpleNamespace(step=4))
    rows = _rows(tmp_path)
    assert [r["round"] for r in rows] == [1, 2] and rows[0]["background"]
    assert "background" not in rows[1] and sync.flight is None and averager.rounds == 2
    # the last average is the model: the run ends on it, as without --background
    assert torch.equal(model.state_dict()["0.weight"], averager.average[0])


def test_a_staleness_bound_beyond_a_round_is_refused_in_one_line(tmp_path):
    with pytest.raises(UsageError, match="--max-staleness 3 must be within 1..--every"):
        make(tmp_path, every=2, max_staleness=3)
    with pytest.raises(UsageError, match="--background"):
        NetSettings(max_staleness=2).check()


def test_bad_background_flags_are_one_line_errors_before_anything_starts(capsys, tmp_path):
    from speechswarm.p2p.net.cli import main

    args = ["--config", "p2p-tiny", "--max-staleness", "3"]
    assert main(["peer", *args, "--data", "none.jsonl", "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "speechswarm peer: error: --max-staleness applies to --background averaging only"  # fmt: skip
    assert main(["swarm", *args, "--background", "--every", "2", "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["speechswarm swarm: error: --max-staleness 3 must be within 1..--every (2): one background round is in flight at a time"]  # fmt: skip
    assert not (tmp_path / "s").exists() and not (tmp_path / "p").exists()
