"""Run (or resume) one algorithm of a P2P simulation: rounds, scores, rows, checkpoints.

    result = simulate_run(cfg, "gossip", "ring", agents, global_test, "runs/p2p/gossip-ring")

`simulate_run` drives a `p2p.simulate.Simulation` round by round: it scores the agents every
`p2p.eval_every` rounds (and after the last), appends one row per agent and round to
`metrics.jsonl`, checkpoints the whole simulation every `p2p.checkpoint_every` rounds and
resumes from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from speechswarm.config import GRAPH_ALGORITHMS, Config, run_name
from speechswarm.data.manifest import Utterance
from speechswarm.errors import UsageError
from speechswarm.p2p import mixing
from speechswarm.p2p.partition import Agent
from speechswarm.p2p.report import MetricsFile, draw_topology
from speechswarm.p2p.simulate import CENTRAL, Simulation
from speechswarm.p2p.topology import describe
from speechswarm.p2p.workspace import agent_steps

log = logging.getLogger("speechswarm.p2p")


# ---------------------------------------------------------------------- driver


def simulate_run(
    cfg: Config,
    algorithm: str,
    topology: str,
    agents: list[Agent],
    global_test: list[Utterance],
    run_dir: str | Path,
    *,
    resume: bool = False,
    should_stop: Callable[[int], bool] | None = None,
    on_round: Callable[[str, int, list[dict]], None] | None = None,
    name: str = "",
) -> dict:
    """Run (or resume) one algorithm; returns {"name", "stop_reason", "round", "rows"}.

    `should_stop(rounds_done)` is asked after each round: True saves a checkpoint and
    returns (stop_reason "interrupted"). `on_round(name, round, rows)` sees each round's rows.
    """
    run_dir = Path(run_dir)
    name = name or run_name(algorithm, topology)
    ckpt_path = run_dir / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise UsageError(
            f"{run_dir} already holds a simulation (checkpoint.pt); pass --resume to continue "
            "it or choose another train.out_dir"
        )
    sim = Simulation(cfg, algorithm, topology, agents, run_dir)
    try:
        sim.open(global_test)
        if resume and ckpt_path.exists():
            sim.load(ckpt_path)
            log.info(f"{name}: resumed after round {sim.round}")
            if sim.round >= cfg.p2p.rounds:
                log.info(f"{name}: already finished ({cfg.p2p.rounds} rounds): nothing to train")
        metrics = MetricsFile(run_dir / "metrics.jsonl", keep_rounds=sim.round)
        if sim.algorithm in GRAPH_ALGORITHMS:
            _write_topology(sim, run_dir)
        stop_reason = "rounds"
        while sim.round < cfg.p2p.rounds:
            start = time.perf_counter()
            stats = sim.run_round()
            sim.round += 1
            last = sim.round == cfg.p2p.rounds
            scores = sim.evaluate() if last or sim.round % cfg.p2p.eval_every == 0 else {}
            sim.wall_time += time.perf_counter() - start
            rows = _rows(sim, name, stats, scores)
            metrics.write(rows)
            if on_round is not None:
                on_round(name, sim.round, rows)
            stopping = should_stop is not None and should_stop(sim.round)
            if last or stopping or sim.round % cfg.p2p.checkpoint_every == 0:
                sim.save(ckpt_path)
            if stopping and not last:
                stop_reason = "interrupted"
                break
        return {"name": name, "stop_reason": stop_reason, "round": sim.round, "dir": run_dir}
    finally:
        sim.close()


def _rows(sim: Simulation, name: str, stats: dict[int, dict], scores: dict[int, dict]) -> list:
    rows = []
    for k in range(sim.n):
        st = stats.get(CENTRAL if sim.algorithm == "central" else k, {})
        c = sim.counters[k]
        state = sim.states[CENTRAL if sim.algorithm == "central" else k]
        row = {
            "run": name,
            "round": sim.round,
            "agent": k,
            "train_loss": st.get("loss", math.nan),
            "local_steps": st.get("steps", 0),
            "diverged": bool(st.get("diverged", False)),
            "bn_only": bool(sim.bn_stage.get(k, {}).get("bn_only", False)),
            "steps": agent_steps(state),
            "train_seconds": round(st.get("seconds", 0.0), 3),
            "msgs_sent": c.msgs_sent,
            "msgs_recv": c.msgs_recv,
            "bytes_sent": c.bytes_sent,
            "bytes_recv": c.bytes_recv,
            "bytes_from_server": c.bytes_from_server,
            "rejected": c.rejected,
            "rejected_by_peers": c.rejected_by_peers,
            "wall_time": round(sim.wall_time, 3),
        }
        if sim.p.faulty_agents:  # what became of the planted faulty agents' messages
            row.update(poisoned_recv=c.poisoned_recv, poisoned_refused=c.poisoned_refused,
                       poisoned_outvoted=c.poisoned_outvoted, poison_shift=c.poison_shift)  # fmt: skip
        row.update(scores.get(k, {}))
        rows.append(row)
    return rows


def _write_topology(sim: Simulation, run_dir: Path) -> None:
    adj = sim.adjacency()
    w = mixing.pull_matrix(adj, sim.sizes)
    info = {
        "topology": sim.topology,
        "description": describe(adj),
        "second_eigenvalue": mixing.second_eigenvalue(w),
        "adjacency": adj.astype(int).tolist(),
        "redraw_every": sim.p.redraw_every,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "topology.json").write_text(json.dumps(info, indent=1) + "\n")
    draw_topology(adj, run_dir / "topology.png", title=f"{sim.topology}: {info['description']}")
