"""Small P2P output folders written by hand, as `speechswarm p2p` and `swarm` lay them out.

`write_simulation(root)`: 3 agents, runs `gossip-ring` (ring graph) and `local`, 2 rounds each,
own CER scored in round 2 (and round 1 for gossip). `write_swarm(root)`: 3 peers, peer0
finished (summary.json), peer1 and peer2 part-way. `sim_row` / `round_row` build the rows.
"""

from __future__ import annotations

import json
from pathlib import Path

RING3 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


def write_jsonl(path: Path, rows: list[dict], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode, encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def sim_row(run: str, rnd: int, agent: int, cer: float | None = None, mb: float = 1.0) -> dict:
    row = {
        "run": run, "round": rnd, "agent": agent, "train_loss": 50.0 - rnd - agent,
        "local_steps": 4, "steps": 4 * rnd, "msgs_sent": 2 * rnd,
        "bytes_sent": int(mb * 1e6 * rnd), "bytes_recv": int(mb * 1e6 * rnd),
        "rejected": 0, "rejected_by_peers": 0, "wall_time": 1.5 * rnd,
    }  # fmt: skip
    if cer is not None:
        row.update(own_cer=cer, own_wer=min(1.0, 2 * cer))
    return row


def write_simulation(root: Path, *, finished: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(
        "p2p:\n  runs: [gossip/ring, local]\n  rounds: 2\n  topology: ring\n  agents: 3\n"
    )
    agents = [{"name": f"agent{k}", "train_utts": 8, "test_utts": 3} for k in range(3)]
    (root / "agents.json").write_text(json.dumps(agents))
    (root / "p2p.log").write_text("12:00:00 3 agents\n")
    rows = [sim_row("gossip-ring", 1, k, cer=0.9 - 0.1 * k) for k in range(3)]
    rows += [sim_row("gossip-ring", 2, k, cer=0.5 - 0.1 * k) for k in range(3)]
    write_jsonl(root / "gossip-ring" / "metrics.jsonl", rows)
    topology = {"topology": "ring", "description": "3 agents, degree 2", "adjacency": RING3}
    (root / "gossip-ring" / "topology.json").write_text(json.dumps(topology))
    (root / "gossip-ring" / "summary.json").write_text(json.dumps({"run": "gossip-ring"}))
    rows = [sim_row("local", 1, k, mb=0) for k in range(3)]
    if finished:
        rows += [sim_row("local", 2, k, cer=0.7, mb=0) for k in range(3)]
    write_jsonl(root / "local" / "metrics.jsonl", rows)
    if finished:
        (root / "local" / "summary.json").write_text(json.dumps({"run": "local"}))
    return root


def round_row(rnd: int, every: int = 4, *, time: float = 0.0, ok: bool = True, partial=False):
    return {
        "round": rnd, "step": every * rnd, "ok": ok, "reason": "" if ok else "no group",
        "group_size": 3 if ok else 1, "partial": partial, "seconds": 0.5, "time": time,
        "bytes_sent": 1000, "bytes_recv": 2000, "values_kept_local": 0, "senders_dropped": 0,
    }  # fmt: skip


def log_rows(steps, seconds_per_step: float = 0.1, start: float = 0.0) -> list[dict]:
    return [{"step": s, "wall_time": start + seconds_per_step * s, "train_loss": 90.0 - s} for s in steps]  # fmt: skip


def write_swarm(root: Path) -> Path:
    (root / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("p2p:\n  rounds: 3\n  agents: 3\n  local_steps: 4\n")
    for k in range(3):
        peer = root / "swarm" / f"peer{k}"
        peer.mkdir(parents=True)
        (peer / "address.txt").write_text(f"/ip4/127.0.0.1/tcp/{4000 + k}/p2p/Qm{k}\n")
        (peer / "peer.log").write_text("12:00:00 3 of 3 peers present; training starts\n")
    done = root / "swarm" / "peer0"
    write_jsonl(done / "rounds.jsonl", [round_row(r, time=r) for r in (1, 2, 3)])
    write_jsonl(done / "metrics.jsonl", log_rows(range(1, 13)))
    summary = {"own_cer": 0.42, "own_wer": 0.8, "steps": 12, "rounds": 3}
    (done / "summary.json").write_text(json.dumps(summary))
    for k in (1, 2):
        peer = root / "swarm" / f"peer{k}"
        write_jsonl(peer / "rounds.jsonl", [round_row(1, time=1), round_row(2, time=2, partial=k == 2)])  # fmt: skip
        write_jsonl(peer / "metrics.jsonl", log_rows(range(1, 10)))
    return root
