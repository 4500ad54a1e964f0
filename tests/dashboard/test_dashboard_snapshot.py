"""Reading run folders into the dashboard's snapshot: simulations, swarms, half-written files.

.venv/bin/python -m pytest tests/dashboard/test_dashboard_snapshot.py -q
"""

from __future__ import annotations

import json
import os
import time

from folders import RING3, log_rows, round_row, sim_row, write_jsonl, write_simulation, write_swarm

from speechswarm.dashboard.processes import open_logs
from speechswarm.dashboard.snapshot import RowCache, peer_state, read_jsonl, snapshot


def by_name(snap: dict) -> dict:
    return {r["name"]: r for r in snap["runs"]}


def test_a_finished_simulation_with_two_runs(tmp_path):
    root = write_simulation(tmp_path / "sim")
    snap = snapshot(root, now=time.time(), open_logs=set())
    assert snap["kind"] == "simulation" and snap["skipped_lines"] == 0
    assert [r["name"] for r in snap["runs"]] == ["gossip-ring", "local"]
    runs = by_name(snap)
    gossip, local = runs["gossip-ring"], runs["local"]
    assert gossip["state"] == local["state"] == "done"
    assert gossip["round"] == 2 and gossip["rounds"] == 2
    assert gossip["graph"] == {
        "adjacency": RING3, "directed": False, "description": "3 agents, degree 2"
    }  # fmt: skip
    assert local["graph"] is None  # local agents talk to nobody
    a2 = gossip["agents"][2]
    assert a2["name"] == "agent2" and a2["state"] == "done"
    assert a2["cer"] == 0.5 - 0.2 and a2["steps"] == 8 and a2["bytes_sent"] == 2_000_000
    assert a2["series"]["round"] == [1, 2]
    assert a2["series"]["cer"] == [0.9 - 0.2, 0.5 - 0.2]
    assert a2["series"]["bytes_sent"] == [1_000_000, 2_000_000]
    json.dumps(snap, allow_nan=False)  # what the page gets is plain JSON


def test_unscored_rounds_and_nan_losses_are_null(tmp_path):
    root = write_simulation(tmp_path / "sim")
    row = sim_row("gossip-ring", 3, 0)
    row["train_loss"] = float("nan")  # MetricsFile writes null; an older file may hold NaN
    with open(root / "gossip-ring" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    agent = by_name(snapshot(root, now=time.time()))["gossip-ring"]["agents"][0]
    assert agent["series"]["cer"] == [0.9, 0.5, None]
    assert agent["cer"] == 0.5  # the last scored round's
    assert agent["train_loss"] is None
    json.dumps(agent, allow_nan=False)


def test_a_half_written_last_line_waits_and_a_broken_line_is_skipped(tmp_path):
    root = write_simulation(tmp_path / "sim")
    metrics = root / "gossip-ring" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"run": "gossip-ring", "round": 3, "agent": 0, "train_lo')  # still being written
    snap = snapshot(root, now=time.time())
    assert snap["skipped_lines"] == 0
    assert by_name(snap)["gossip-ring"]["round"] == 2
    assert len(by_name(snap)["gossip-ring"]["agents"][0]["series"]["round"]) == 2

    rows, skipped = read_jsonl(metrics)
    assert len(rows) == 6 and skipped == 0
    with open(metrics, "a") as f:  # the writer died mid-line and a new line followed
        f.write("\n" + json.dumps(sim_row("gossip-ring", 3, 0)) + "\n")
    rows, skipped = read_jsonl(metrics)
    assert len(rows) == 7 and skipped == 1
    snap = snapshot(root, now=time.time())
    assert snap["skipped_lines"] == 1 and by_name(snap)["gossip-ring"]["round"] == 3


def test_rows_and_graphs_of_the_wrong_shape_are_ignored(tmp_path):
    root = write_simulation(tmp_path / "sim")
    odd = [{"round": 1}, {"agent": "x", "round": 1}, {"agent": -1, "round": 2}, [1, 2], 7]
    write_jsonl(root / "gossip-ring" / "metrics.jsonl", odd, mode="a")
    (root / "gossip-ring" / "topology.json").write_text('{"adjacency": [[0, 1], [1]]}')
    snap = snapshot(root, now=time.time())
    gossip = by_name(snap)["gossip-ring"]
    assert snap["skipped_lines"] == 2  # the two lines that are not JSON objects
    assert len(gossip["agents"]) == 3 and gossip["round"] == 2
    assert gossip["graph"] is None


def test_the_run_being_written_is_training_while_its_process_lives(tmp_path):
    root = write_simulation(tmp_path / "sim", finished=False)
    log = (root / "p2p.log").resolve()
    live = by_name(snapshot(root, now=time.time(), open_logs={log}))
    assert live["gossip-ring"]["state"] == "done"
    assert live["local"]["state"] == "running"
    assert {a["state"] for a in live["local"]["agents"]} == {"training"}
    assert live["local"]["round"] == 1

    dead = by_name(snapshot(root, now=time.time() + 10, open_logs=set()))  # 10 s later
    assert dead["local"]["state"] == "stopped"  # interrupted: nobody holds p2p.log
    assert {a["state"] for a in dead["local"]["agents"]} == {"stopped"}

    # without process information: recent changes mean running, a long silence stopped
    fresh = by_name(snapshot(root, now=os.path.getmtime(log) + 5, open_logs=None))
    assert fresh["local"]["state"] == "running"
    old = by_name(snapshot(root, now=os.path.getmtime(log) + 600, open_logs=None))
    assert old["local"]["state"] == "stopped"


def test_runs_not_started_yet_are_pending(tmp_path):
    root = write_simulation(tmp_path / "sim")
    (root / "config.yaml").write_text(
        "p2p:\n  runs: [gossip/ring, local, 'fedavg outer_lr=0.7']\n  rounds: 2\n  topology: ring\n"
    )
    runs = by_name(snapshot(root, now=time.time(), open_logs={(root / "p2p.log").resolve()}))
    assert list(runs) == ["gossip-ring", "local", "fedavg-outer_lr0.7"]
    assert runs["fedavg-outer_lr0.7"]["state"] == "running"  # the next to write
    runs = by_name(snapshot(root, now=time.time() + 10, open_logs=set()))
    assert runs["fedavg-outer_lr0.7"]["state"] == "pending"
    assert [a["state"] for a in runs["fedavg-outer_lr0.7"]["agents"]] == ["waiting"] * 3


def backdate(folder, seconds: float) -> None:
    past = time.time() - seconds
    for f in folder.iterdir():
        os.utime(f, (past, past))


def test_a_swarm_with_a_finished_a_live_and_a_dead_peer(tmp_path):
    root = write_swarm(tmp_path / "swarm-out")
    peers = root / "swarm"
    backdate(peers / "peer2", 30)  # it died 30 s ago
    alive = {(peers / "peer1" / "peer.log").resolve()}  # peer2's process is gone
    snap = snapshot(root, now=time.time(), open_logs=alive)
    assert snap["kind"] == "swarm"
    (run,) = snap["runs"]
    assert run["name"] == "swarm" and run["state"] == "running" and run["rounds"] == 3
    assert run["graph"]["adjacency"] == RING3  # 3 peers: all pairs
    p0, p1, p2 = run["agents"]
    assert [p0["state"], p1["state"], p2["state"]] == ["done", "training", "gone"]
    assert p0["cer"] == 0.42 and p0["series"]["cer"] == [None, None, 0.42]
    assert p1["cer"] is None and p1["round"] == 2 and p1["steps"] == 9
    assert p1["bytes_sent"] == 2000 and p1["bytes_recv"] == 4000
    assert p1["series"]["bytes_sent"] == [1000, 2000]
    assert p2["partial_rounds"] == 1 and p2["rounds_joined"] == 2 and p2["mean_group"] == 3
    assert p2["series"]["partial"] == [False, True] and p2["series"]["averaged"] == [True, True]
    # round 1's loss: the mean over steps 1-4 of 90 - step
    assert p0["series"]["train_loss"][0] == 90 - 2.5


def test_a_peer_with_odd_rows_still_reads(tmp_path):
    root = write_swarm(tmp_path / "swarm-out")
    peer = root / "swarm" / "peer1"
    odd = [{"round": 3}, {**round_row(3), "bytes_sent": None, "time": "soon"}]
    write_jsonl(peer / "rounds.jsonl", odd, mode="a")
    write_jsonl(
        peer / "metrics.jsonl", [{"step": "x"}, {"step": 13, "train_loss": "nan"}], mode="a"
    )
    (run,) = snapshot(root, now=time.time())["runs"]
    p1 = run["agents"][1]
    assert p1["round"] == 3 and p1["bytes_sent"] == 2000 and p1["bytes_recv"] == 6000
    assert p1["steps"] == 13 and p1["train_loss"] is None
    json.dumps(run, allow_nan=False)


def test_a_peer_whose_log_stopped_is_gone_without_process_information(tmp_path):
    root = write_swarm(tmp_path / "swarm-out")
    backdate(root / "swarm" / "peer2", 600)  # its files stopped changing ten minutes ago
    (run,) = snapshot(root, now=time.time(), open_logs=None)["runs"]
    assert [a["state"] for a in run["agents"]] == ["done", "training", "gone"]


def test_a_peer_started_after_the_process_list_was_read_is_not_gone(tmp_path):
    root = write_swarm(tmp_path / "swarm-out")
    held = {(root / "swarm" / "peer1" / "peer.log").resolve()}  # read before peer2 existed
    (run,) = snapshot(root, now=time.time(), open_logs=held)["runs"]
    assert run["agents"][2]["state"] == "training"  # its files are seconds old
    (run,) = snapshot(root, now=time.time() + 30, open_logs=held)["runs"]
    assert run["agents"][2]["state"] == "gone"


def test_a_swarm_folder_before_its_peers_have_written(tmp_path):
    assert snapshot(tmp_path / "nothing-yet", now=time.time())["kind"] == "empty"
    peer = tmp_path / "out" / "swarm" / "peer0"
    peer.mkdir(parents=True)
    (peer / "peer.log").write_text("")
    (run,) = snapshot(tmp_path / "out", now=time.time())["runs"]
    assert run["agents"][0]["state"] == "waiting"  # no rows, no "training starts" yet


def test_peer_states_from_its_rounds_and_training_log():
    # every = 4 steps; round 2 ended at step 8; 0.1 s per training step
    rounds = [round_row(1, time=1.0), round_row(2, time=2.0)]
    state = dict(done=False, alive=True, started=True, rounds=rounds, rounds_total=5)
    # logged up to step 10: two steps to go before round 3 (step 12)
    assert peer_state(**state, log=log_rows(range(1, 11)), silent_s=5.0) == "training"
    # logged up to step 11 (the last before round 3), silent for far longer than a step
    assert peer_state(**state, log=log_rows(range(1, 12)), silent_s=2.0) == "averaging"
    assert peer_state(**state, log=log_rows(range(1, 12)), silent_s=0.2) == "training"
    assert peer_state(**state, log=log_rows(range(1, 12)), silent_s=300.0) == "stalled"
    assert peer_state(**{**state, "alive": False}, log=[], silent_s=1.0) == "gone"
    assert peer_state(**{**state, "done": True}, log=[], silent_s=1.0) == "done"
    assert peer_state(**{**state, "rounds_total": 2}, log=[], silent_s=1.0) == "scoring"
    # logging once a round (train.log_every = every): the step time comes from the rounds'
    # clocks: 1.0 s between rounds less 0.5 s averaging = 0.5 s per 4 steps
    sparse = log_rows([4, 8])
    assert peer_state(**state, log=sparse, silent_s=0.5) == "training"
    assert peer_state(**state, log=sparse, silent_s=1.5) == "averaging"


def test_the_row_cache_rereads_a_file_only_when_it_changed(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl(path, [{"a": 1}])
    cache = RowCache()
    first, _ = cache.read(path)
    assert cache.read(path)[0] is first
    write_jsonl(path, [{"a": 2}], mode="a")
    assert [r["a"] for r in cache.read(path)[0]] == [1, 2]
    assert cache.read(tmp_path / "missing.jsonl") == ([], 0)


def test_open_logs_finds_the_log_a_live_process_holds(tmp_path):
    root = write_swarm(tmp_path / "swarm-out")
    held = root / "swarm" / "peer1" / "peer.log"
    with open(held, "a"):
        found = open_logs(root)
    if found is None:  # no /proc here
        return
    assert found == {held.resolve()}
    assert open_logs(root) == set()
