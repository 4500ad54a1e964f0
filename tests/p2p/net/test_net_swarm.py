"""Peers as real processes on loopback: the swarm command, and faults (a peer killed, a peer
joining late, a peer frozen), each with 3 tiny peers and bounded in time.

    .venv/bin/python -m pytest tests/p2p/net/test_net_swarm.py -q
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("hivemind")

from speechswarm.config import dump_yaml  # noqa: E402
from speechswarm.p2p.experiment import make_agents, write_agents  # noqa: E402
from speechswarm.p2p.net.peer import NetSettings  # noqa: E402
from speechswarm.p2p.net.swarm import PeerProcess, peer_args, peer_env  # noqa: E402
from speechswarm.p2p.report import read_rows  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts 3 Python processes with torch and p2pd

# Loopback timings: a frozen peer costs the others at most ~TIMEOUT seconds per round.
FAST = NetSettings(group_size=3, matchmaking_s=0.5, timeout_s=4.0, chunk_timeout_s=2.0)
SECRET = "0123456789abcdef0123"


@pytest.fixture
def swarm_setup(p2p_config, tmp_path):
    """(config file, agent folders) for 3 agents of the tone corpus, `rounds` rounds of 2 steps
    (and config `overrides`)."""

    def make(rounds: int, *overrides: str):
        cfg = p2p_config("swarm", "p2p.agents=3", f"p2p.rounds={rounds}", "p2p.local_steps=2", *overrides)  # fmt: skip
        out = Path(cfg.train.out_dir)
        agents = make_agents(cfg, out)
        write_agents(agents, out)
        config = out / "config.yaml"
        config.write_text(dump_yaml(cfg))
        return config, [out / "agents" / a.name for a in agents]

    return make


def _start(config, agent_dir, out, settings, initial=(), index=-1):
    args = peer_args(config, agent_dir, out, settings, initial=initial, index=index)
    return PeerProcess(args, out, peer_env(SECRET))


def _wait_rounds(peer: PeerProcess, count: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while len(peer.rounds()) < count:
        assert peer.proc.poll() is None, peer.log_path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {count} rounds in {timeout} s"
        time.sleep(0.2)


def _finish(peers, timeout=120.0) -> list[int]:
    try:
        return [p.wait(timeout) for p in peers]
    finally:
        for p in peers:
            if p.proc.poll() is None:
                p.kill()


def _weights(peer_dir: Path) -> dict:
    ckpt = torch.load(peer_dir / "checkpoints" / "last.pt", weights_only=True)
    return ckpt["model"]


def test_swarm_command_trains_averages_and_reports(p2p_config, tmp_path):
    """As a user types it, with the median (groups of 3 allow it; smaller ones fall back) and
    averaging in the background (rounds 1 and 2 overlap training, the last one does not)."""
    from speechswarm.p2p.net.cli import main

    cfg = p2p_config("cli", "p2p.agents=3", "p2p.rounds=3", "p2p.local_steps=2", "p2p.aggregation=median")  # fmt: skip
    config = tmp_path / "cli.yaml"
    config.write_text(dump_yaml(cfg))
    out = tmp_path / "swarm-out"
    started = time.monotonic()
    code = main(["swarm", "--config", str(config), "--out", str(out), "--group-size", "3",
                 "--matchmaking-s", "0.5", "--timeout-s", "4", "--background"])  # fmt: skip
    assert code == 0, (out / "swarm" / "peer0" / "peer.log").read_text()[-3000:]
    assert time.monotonic() - started < 150
    report = (out / "report.md").read_text()
    assert "| swarm |" in report and "## Peers" in report
    rows = [json.loads(x) for x in (out / "swarm" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["agent"] for r in rows} == {0, 1, 2}
    assert all(r["steps"] == 2 * r["round"] for r in rows)
    last = [r for r in rows if r["round"] == 3]
    assert all(r["own_cer"] >= 0.0 and r["global_cer"] is not None for r in last)
    peers = json.loads((out / "summary.json").read_text())["peers"]
    assert all(p["steps"] == 6 and p["rounds"] == 3 and p["rounds_joined"] >= 1 for p in peers)
    assert all(p["bytes_sent"] > 0 and p["bytes_recv"] > 0 for p in peers)
    # each averaged round says which rule its group allowed; those that fell back are counted
    for k, p in enumerate(peers):
        done = [r for r in read_rows(out / "swarm" / f"peer{k}" / "rounds.jsonl") if r["ok"]]
        assert all(r["aggregation"] == ("median" if r["group_size"] >= 3 else "mean") for r in done)
        assert p["aggregation"] == "median"
        assert p["aggregation_fallbacks"] == sum(r["group_size"] < 3 for r in done)
    # background rounds landed within one round's steps (the bound); each is counted
    for k, p in enumerate(peers):
        rows = read_rows(out / "swarm" / f"peer{k}" / "rounds.jsonl")
        late = [r for r in rows if r.get("background")]
        assert [r["round"] for r in late] == [1, 2] and "background" not in rows[-1]
        assert all(r["applied_step"] - r["step"] == r["staleness"] for r in late)
        assert all(1 <= r["staleness"] <= 2 and r["overlap_s"] >= 0 for r in late)
        assert all(r["seconds"] <= 4.0 + 1.5 for r in late)  # within the round's budget
        assert p["background"] and p["max_staleness"] == 2 and p["background_rounds"] == 2
        assert p["staleness_max"] == max((r["staleness"] for r in late if r["ok"]), default=0)
        assert p["background_waits"] == sum(r["waited"] for r in late)
        assert p["averaging_seconds"] == pytest.approx(sum(r.get("blocked_s", r["seconds"]) for r in rows), abs=0.01)  # fmt: skip
        log = (out / "swarm" / f"peer{k}" / "peer.log").read_text()
        assert "; background: 2 rounds overlapped" in log and "given up" in log
    assert report.count(" overlapped, ") == 3  # the peers table: seconds overlapped, waits
    # a round of 3 reduces each part (a tensor, or 512 KiB of one) by the median
    if any(p["aggregation_fallbacks"] < p["rounds_joined"] for p in peers):
        assert sum(p["robust_parts"] + p["fallback_parts"] for p in peers) >= 1
    # peers whose last round averaged in full in one group end with the same weights (the
    # last round runs in the foreground; hivemind may finish a round without a member that
    # stalls: its row says "partial")
    finals = [read_rows(out / "swarm" / f"peer{k}" / "rounds.jsonl")[-1] for k in range(3)]
    together = {}
    for k, f in enumerate(finals):
        if f["ok"] and not f["partial"]:
            together.setdefault(f["group"], []).append(k)
    for ks in together.values():
        w = [_weights(out / "swarm" / f"peer{k}") for k in ks]
        for name, t in w[0].items():
            if t.is_floating_point():
                assert all(torch.allclose(t, other[name], atol=1e-5) for other in w[1:]), name


def test_peers_with_an_outer_optimizer_checkpoint_its_anchor_and_momentum(p2p_config, tmp_path):
    from speechswarm.p2p.net.cli import main

    cfg = p2p_config("outer", "p2p.agents=2", "p2p.rounds=2", "p2p.local_steps=2",
                     "p2p.outer_lr=0.7", "p2p.outer_momentum=0.9")  # fmt: skip
    config = tmp_path / "outer.yaml"
    config.write_text(dump_yaml(cfg))
    out = tmp_path / "swarm-outer"
    code = main(["swarm", "--config", str(config), "--out", str(out), "--group-size", "2",
                 "--matchmaking-s", "0.5", "--timeout-s", "4"])  # fmt: skip
    assert code == 0, (out / "swarm" / "peer0" / "peer.log").read_text()[-3000:]
    for k in range(2):
        peer = out / "swarm" / f"peer{k}"
        ckpt = torch.load(peer / "checkpoints" / "last.pt", weights_only=True)
        anchor, momentum = ckpt["outer"]["anchor"], ckpt["outer"]["momentum"]
        assert anchor and all(not n.endswith("running_mean") for n in momentum)
        if read_rows(peer / "rounds.jsonl")[-1]["ok"]:  # the last step averaged: model = anchor
            assert all(torch.equal(ckpt["model"][n], t) for n, t in anchor.items())


def _three_peers(config, agents, tmp_path):
    """Peer 0 first, then peers 1 and 2 joining through its address; all wait for 3."""
    settings = dataclasses.replace(FAST, wait_peers=3)
    p0 = _start(config, agents[0], tmp_path / "p0", settings)
    addr = p0.address()
    return p0, [_start(config, agents[k], tmp_path / f"p{k}", settings, [addr]) for k in (1, 2)]


def test_a_killed_peer_leaves_the_others_averaging_in_pairs(swarm_setup, tmp_path):
    config, agents = swarm_setup(rounds=12)
    p0, rest = _three_peers(config, agents, tmp_path)
    peers = [p0, *rest]
    try:
        _wait_rounds(rest[1], 2)
        killed_after = len(p0.rounds())
        rest[1].kill()
        codes = _finish(peers[:2])
    finally:
        for p in peers:
            p.kill()
    assert codes == [0, 0]
    for p in peers[:2]:
        rounds = p.rounds()
        assert len(rounds) == 12 and p.summary()["steps"] == 24  # all rounds, all steps
        later = rounds[killed_after + 1 :]
        assert any(r["ok"] and r["group_size"] == 2 for r in later), later
        assert all(r["group_size"] <= 2 for r in later[2:])  # the dead peer is gone


def test_a_late_peer_takes_the_swarms_weights_optimizer_state_and_position(swarm_setup, tmp_path):
    # a cosine schedule over the run's 60 steps: the LR says where on it a peer is
    config, agents = swarm_setup(30, "optim.schedule=cosine", "optim.warmup_steps=4")
    settings = dataclasses.replace(FAST, wait_peers=2)
    p0 = _start(config, agents[0], tmp_path / "p0", settings)
    p1 = _start(config, agents[1], tmp_path / "p1", settings, [p0.address()])
    peers = [p0, p1]
    try:
        _wait_rounds(p0, 2)
        p2 = _start(config, agents[2], tmp_path / "p2", FAST, [p0.address()])
        peers.append(p2)
        codes = _finish(peers)
    finally:
        for p in peers:
            p.kill()
    assert codes == [0, 0, 0], p2.log_path.read_text()[-2000:]
    summary = p2.summary()
    loaded = summary["loaded_state"]
    assert loaded["loaded"] and loaded["position"] and loaded["from_step"] >= 4, loaded
    start = loaded["from_step"]
    # the weights it loaded are exactly a donor's shared weights at that step
    shared = {(r["step"], r["state_sum"]) for p in (p0, p1) for r in p.rounds()}
    assert (start, loaded["state_sum"]) in shared
    # it went on from the donor's step and round to the run's end, as the others did
    assert summary["start_step"] == start and summary["steps"] == 60 and loaded["refused"] == []
    assert p2.rounds()[0]["round"] == start // 2 + 1 and p2.rounds()[0]["step"] == start + 2
    assert summary["rounds_joined"] >= 1  # and it averaged with them
    # on the swarm's schedule: the LR at every step it logged is the donors' LR at that step
    lr = {p: {r["step"]: r["lr"] for r in read_rows(p.out / "metrics.jsonl") if "lr" in r} for p in peers}  # fmt: skip
    assert lr[p2] and min(lr[p2]) > start and loaded["lr"] == loaded["donor_lr"]
    assert all(lr[p2][step] == lr[p0][step] for step in lr[p2] if step in lr[p0])
    # with Adam's step count: one optimizer step per training step, from the donor's count on
    adam = {p: torch.load(p.out / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["state"][0]["step"] for p in (p0, p2)}  # fmt: skip
    assert float(adam[p2]) == float(adam[p0]) == 60.0


@pytest.mark.parametrize("fault", ["never_started", "killed_and_stalled"])
def test_peers_on_a_ring_average_with_their_neighbours_or_fall_back(swarm_setup, tmp_path, fault):
    """4 peers planned on a ring. never_started: peer 3 never comes. killed_and_stalled: all 4
    start, and once peers 2 and 3 have averaged, peer 3 is SIGKILLed and peer 2 SIGSTOPped (its
    p2pd too). Each round pairs ring neighbours; a peer paired with a missing one waits for it,
    then looks for anyone (counted); the survivors finish every round on edges or fallbacks."""
    started = 3 if fault == "never_started" else 4
    # with p2p.seed 0, rounds 2 and 8 pair 0-3 and 1-2
    rounds = 6 if fault == "never_started" else 8
    config, agents = swarm_setup(rounds, "p2p.agents=4", "p2p.topology=ring")
    settings = dataclasses.replace(FAST, group_size=2, wait_peers=started, topology=True)
    p0 = _start(config, agents[0], tmp_path / "p0", settings, index=0)
    peers = [p0] + [_start(config, agents[k], tmp_path / f"p{k}", settings, [p0.address()], k) for k in range(1, started)]  # fmt: skip
    gone, after = {3}, [0, 0, 0]  # missing peers; a survivor's rows from after[k] on are without
    try:
        if fault == "killed_and_stalled":
            for p in peers[2:]:
                _wait_rounds(p, 1)
            gone = {2, 3}
            after = [len(p.rounds()) + 1 for p in peers[:2]]  # + the round in flight now
            peers[3].kill()
            peers[2].pause()  # SIGSTOP to its process group: Python and its p2pd daemon
        survivors = [k for k in range(started) if k not in gone]
        codes = _finish([peers[k] for k in survivors])
    finally:
        for p in peers:
            p.kill()
    assert codes == [0] * len(survivors), peers[0].log_path.read_text()[-2000:]
    ring_edges = {(0, 1), (1, 2), (2, 3), (0, 3)}
    neighbour_rounds = 0
    for k in survivors:
        p = peers[k]
        rows, summary = p.rounds(), p.summary()
        assert len(rows) == rounds and summary["steps"] == 2 * rounds  # all rounds, all steps
        assert all(torch.isfinite(t).all() for t in _weights(p.out).values() if t.is_floating_point())  # fmt: skip
        assert all(k in r["planned"] and tuple(r["planned"]) in ring_edges for r in rows)
        for r in rows[after[k] :]:
            if gone & set(r["planned"]):  # its neighbour is dead, stalled or never came
                assert r["topology"] == "fallback", r
            if r["ok"]:  # the missing peers are in no group
                assert set(r["indices"]) <= set(survivors), r
        for r in rows:
            if r["ok"] and r["topology"] == "neighbours":
                assert r["indices"] == r["planned"]
                neighbour_rounds += 1
            elif r["ok"]:  # whoever was reachable
                assert r["topology"] == "fallback"
        assert summary["topology"] == "ring" and summary["neighbour_rounds"] == sum(
            r["ok"] and r["topology"] == "neighbours" for r in rows
        )
        assert summary["topology_fallbacks"] == sum(r["topology"] == "fallback" for r in rows)
    assert neighbour_rounds >= 2  # a pair of live neighbours averaged at least once
    if fault == "never_started":
        assert peers[0].summary()["topology_fallbacks"] + peers[2].summary()["topology_fallbacks"] >= 1  # fmt: skip
    else:  # both survivors neighbour a missing peer: each fell back, and trained on averaging
        for k in survivors:
            later = peers[k].rounds()[after[k] :]
            assert any(r["topology"] == "fallback" for r in later), later
            assert any(r["ok"] for r in later), later


def test_background_peers_on_a_ring_give_up_or_fall_back_when_a_neighbour_is_gone(
    swarm_setup, tmp_path
):
    """4 peers on a ring with --background: once peers 2 and 3 have averaged, 3 is SIGKILLed
    and 2 SIGSTOPped. With p2p.seed 0 the rounds of index 7 and 8 (rows 8 and 9, averaged in
    the background; row 10 is the foreground last round) pair the survivors 0 and 1 with
    them. The survivors finish every round and step with finite weights; each background
    round that lost its planned partner ended as a counted fallback or was given up, and the
    summary's background counters are the rows'."""
    rounds = 10
    config, agents = swarm_setup(rounds, "p2p.agents=4", "p2p.topology=ring")
    settings = dataclasses.replace(FAST, group_size=2, wait_peers=4, topology=True, background=True)  # fmt: skip
    p0 = _start(config, agents[0], tmp_path / "p0", settings, index=0)
    peers = [p0] + [_start(config, agents[k], tmp_path / f"p{k}", settings, [p0.address()], k) for k in range(1, 4)]  # fmt: skip
    try:
        for p in peers[2:]:
            _wait_rounds(p, 1)
        after = [len(p.rounds()) + 2 for p in peers[:2]]  # + rounds in flight (background)
        peers[3].kill()
        peers[2].pause()  # SIGSTOP to its process group: Python and its p2pd daemon
        codes = _finish(peers[:2])
    finally:
        for p in peers:
            p.kill()
    assert codes == [0, 0], peers[0].log_path.read_text()[-2000:]
    for k in (0, 1):
        rows, summary = peers[k].rounds(), peers[k].summary()
        assert len(rows) == rounds and summary["steps"] == 2 * rounds  # all rounds, all steps
        assert all(torch.isfinite(t).all() for t in _weights(peers[k].out).values() if t.is_floating_point())  # fmt: skip
        assert [bool(r.get("background")) for r in rows] == [True] * (rounds - 1) + [False]
        lost = [r for r in rows[after[k] : -1] if {2, 3} & set(r["planned"])]
        assert len(lost) >= 1, rows  # background rounds whose partner was gone
        for r in lost:
            assert r["topology"] == "fallback", r
            if r["ok"]:  # averaged with whoever was reachable: a survivor
                assert set(r["indices"]) <= {0, 1}, r
            else:  # given up (the budget ran out) or no group: the model kept its weights
                assert r["reason"] in ("timeout", "no group", "failed"), r
                assert r["staleness"] >= 0 and r["seconds"] <= FAST.timeout_s + 1.5, r
        background = [r for r in rows if r.get("background")]
        assert summary["background_rounds"] == len(background)
        assert summary["background_gave_up"] == sum(r["reason"] == "timeout" for r in background)
        assert summary["background_waits"] == sum(r["waited"] for r in background)
        assert summary["topology_fallbacks"] == sum(r["topology"] == "fallback" for r in rows)
        assert summary["round_outcomes"] == _outcomes(rows)
    assert any(r["ok"] and r["topology"] == "neighbours" for r in peers[0].rounds())


def _outcomes(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["reason"] or "ok"] = counts.get(r["reason"] or "ok", 0) + 1
    return counts


def test_a_frozen_peer_times_out_and_the_others_train_on(swarm_setup, tmp_path):
    config, agents = swarm_setup(rounds=10)
    p0, rest = _three_peers(config, agents, tmp_path)
    peers = [p0, *rest]
    try:
        _wait_rounds(rest[1], 2)
        frozen_at = time.monotonic()
        rest[1].pause()  # SIGSTOP to its process group: Python and its p2pd daemon
        codes = _finish(peers[:2], timeout=100.0)
        healthy_seconds = time.monotonic() - frozen_at
    finally:
        for p in peers:
            p.kill()
    assert codes == [0, 0]
    assert healthy_seconds < 100
    for p in peers[:2]:
        rounds = p.rounds()
        assert len(rounds) == 10 and p.summary()["steps"] == 20
        # bounded waits: the round's budget from its start, and 0.5 s for hivemind to answer
        assert all(r["seconds"] <= FAST.timeout_s + 1.5 for r in rounds[3:]), rounds
        assert any(r["ok"] and r["group_size"] == 2 for r in rounds[3:])


def test_resuming_a_finished_peer_trains_nothing(swarm_setup, tmp_path):
    """A peer restarted with --resume auto after its last round (a restart script, a
    requeue) takes no step, writes no checkpoint and joins no swarm; it prints its summary."""
    config, agents = swarm_setup(rounds=2)
    alone = dataclasses.replace(FAST, group_size=2, timeout_s=1.0)
    out = tmp_path / "alone"
    args = peer_args(config, agents[0], out, alone)
    assert _finish([PeerProcess(args, out, peer_env(SECRET))]) == [0]
    last = out / "checkpoints" / "last.pt"
    stamp, weights, summary = (
        last.stat().st_mtime_ns,
        _weights(out),
        json.loads((out / "summary.json").read_text()),
    )
    assert summary["steps"] == 4
    for attempt in (1, 2):
        again = PeerProcess([*args, "--resume", "auto"], out, peer_env(SECRET))
        assert _finish([again]) == [0], again.log_path.read_text()[-3000:]
        assert last.stat().st_mtime_ns == stamp
        assert all(torch.equal(_weights(out)[k], v) for k, v in weights.items())
        assert (out / "train.log").read_text().count("run already finished (max_steps)") == attempt
        assert "listening" not in again.log_path.read_text()  # no DHT joined
        assert json.loads((out / "summary.json").read_text()) == summary
    # stopped after its last checkpoint, before its summary: scored now, rounds from its rows
    (out / "summary.json").unlink()
    again = PeerProcess([*args, "--resume", "auto"], out, peer_env(SECRET))
    assert _finish([again]) == [0], again.log_path.read_text()[-3000:]
    rebuilt = json.loads((out / "summary.json").read_text())
    assert rebuilt["steps"] == 4 and rebuilt["rounds"] == summary["rounds"]
    assert rebuilt["own_cer"] == pytest.approx(summary["own_cer"])
