"""A P2P output folder as one JSON-ready snapshot: what the dashboard page draws.

    snap = snapshot("runs/p2p-tiny", now=time.time(), open_logs=open_logs(...))

Reads only files, never writes. Two layouts:
- a simulation (`speechswarm p2p`): `config.yaml`, `agents.json`, `p2p.log`, and per run
  `<run>/metrics.jsonl` (one row per agent per round, p2p/report.py), `<run>/topology.json`
  (the graph's adjacency: row i = whom agent i pulls from) and, once finished,
  `<run>/summary.json`;
- a swarm (`speechswarm swarm`): `swarm/peerK/` with `rounds.jsonl` (one row per averaging
  attempt), `metrics.jsonl` (the training loop's log), `address.txt`, `peer.log` and, once
  finished, `summary.json` (own WER/CER).

Files may be half written: a last line without its newline is not read yet, a line that is
not JSON is skipped and counted (`skipped_lines`). `open_logs` says which log files a live
process holds open (`dashboard/processes.py`; None: unknown), which tells a stopped run or a
dead peer from a slow one; without it, `stale_s` seconds without a change decide.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
from pathlib import Path

import yaml

STALE_S = 60.0  # without process information: silent this long = stopped / gone
# A log nobody holds open but written this recently still counts as alive: the process list
# is read before the folder, so a peer started in between would otherwise show as gone.
GRACE_S = 5.0


class RowCache:
    """JSONL rows by path, re-read only when the file's size or mtime changed."""

    def __init__(self) -> None:
        self._rows: dict[Path, tuple[tuple[int, int], list[dict], int]] = {}

    def read(self, path: Path) -> tuple[list[dict], int]:
        """(rows, lines skipped); no file: ([], 0)."""
        try:
            st = path.stat()
        except OSError:
            return [], 0
        key = (st.st_size, st.st_mtime_ns)
        hit = self._rows.get(path)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        rows, skipped = read_jsonl(path)
        self._rows[path] = (key, rows, skipped)
        return rows, skipped


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Complete JSON-object lines of a file that may be being appended to: the part after the
    last newline is still being written and is left for later."""
    try:
        data = path.read_bytes()
    except OSError:
        return [], 0
    rows, skipped = [], 0
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


def _json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _mtime(*paths: Path) -> float | None:
    times = []
    for p in paths:
        with contextlib.suppress(OSError):
            times.append(p.stat().st_mtime)
    return max(times) if times else None


def _num(value) -> float | None:
    """A JSON-safe number: None for missing, NaN and infinite values."""
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _config(run_dir: Path) -> dict:
    data = None
    with contextlib.suppress(OSError, yaml.YAMLError):
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def snapshot(
    run_dir: str | os.PathLike,
    *,
    now: float,
    open_logs: set[Path] | None = None,
    cache: RowCache | None = None,
    stale_s: float = STALE_S,
) -> dict:
    """{"kind": "simulation" | "swarm" | "empty", "dir", "time", "runs": [run...],
    "skipped_lines"}; each run: {"name", "state", "round", "rounds", "graph", "agents"}.
    `open_logs`: resolved paths of log files some live process holds open (None: unknown)."""
    run_dir = Path(run_dir)
    ctx = _Context(cache or RowCache(), now, open_logs, stale_s)
    p2p = _config(run_dir).get("p2p") or {}
    if sorted(run_dir.glob("swarm/peer*/")):
        kind, runs = "swarm", [_swarm(run_dir, p2p, ctx)]
    elif (run_dir / "agents.json").is_file() or sorted(run_dir.glob("*/metrics.jsonl")):
        kind, runs = "simulation", _simulation(run_dir, p2p, ctx)
    else:
        kind, runs = "empty", []
    return {
        "kind": kind,
        "dir": str(run_dir),
        "time": now,
        "runs": runs,
        "skipped_lines": ctx.skipped,
    }


class _Context:
    def __init__(self, cache: RowCache, now: float, open_logs, stale_s: float) -> None:
        self.cache, self.now, self.open_logs, self.stale_s = cache, now, open_logs, stale_s
        self.skipped = 0

    def rows(self, path: Path) -> list[dict]:
        rows, skipped = self.cache.read(path)
        self.skipped += skipped
        return rows

    def alive(self, log: Path, changed: float | None) -> bool:
        """A live process holds `log` open (or it changed within GRACE_S) or, without
        process information, the files changed within stale_s."""
        silent = math.inf if changed is None else self.now - changed
        if self.open_logs is not None:
            return log.resolve() in self.open_logs or silent < GRACE_S
        return silent < self.stale_s


# ---------------------------------------------------------------------- simulation


def _run_names(run_dir: Path, p2p: dict) -> list[str]:
    """Runs in the order the experiment runs them: config.yaml's p2p.runs, then any other
    folder with a metrics.jsonl."""
    from speechswarm.config.p2p import parse_run, run_name

    names = []
    specs = p2p.get("runs") or ([p2p["algorithm"]] if p2p.get("algorithm") else [])
    for spec in specs:
        # a spec this version cannot read is left out: its folder still shows below
        with contextlib.suppress(Exception):
            names.append(run_name(*parse_run(str(spec), str(p2p.get("topology", "ring")))))
    found = sorted(p.parent.name for p in run_dir.glob("*/metrics.jsonl"))
    return names + [n for n in found if n not in names]


def _simulation(run_dir: Path, p2p: dict, ctx: _Context) -> list[dict]:
    agents = _json(run_dir / "agents.json")
    names = [a.get("name", f"agent{k}") for k, a in enumerate(agents or [])]
    logs = [run_dir / "p2p.log", *run_dir.glob("*/metrics.jsonl")]
    live = ctx.alive(run_dir / "p2p.log", _mtime(*logs))
    runs = []
    for name in _run_names(run_dir, p2p):
        folder = run_dir / name
        rows = ctx.rows(folder / "metrics.jsonl")
        summary = _json(folder / "summary.json")
        if isinstance(summary, dict):
            state = "stopped" if summary.get("stop_reason") == "interrupted" else "done"
        elif not folder.is_dir():
            state = "pending"
        else:
            state = "stopped"
        runs.append(_sim_run(name, folder, rows, state, names, p2p))
    # the run being written: the first without a summary, while the experiment is alive
    first_open = next((r for r in runs if r["state"] in ("stopped", "pending")), None)
    if first_open is not None and live:
        first_open["state"] = "running"
    for run in runs:
        agent_state = {"running": "training", "pending": "waiting"}.get(run["state"], run["state"])
        for a in run["agents"]:
            a["state"] = agent_state
    return runs


def _sim_run(name: str, folder: Path, rows: list[dict], state: str, names, p2p) -> dict:
    rows = [r for r in rows if _index(r.get("agent")) and _index(r.get("round"))]
    count = max([len(names)] + [r["agent"] + 1 for r in rows])
    by_agent: list[list[dict]] = [[] for _ in range(count)]
    for r in rows:
        by_agent[r["agent"]].append(r)
    agents = []
    for k, own in enumerate(by_agent):
        last = own[-1] if own else {}
        scored = [r for r in own if _num(r.get("own_cer")) is not None]
        agents.append(
            {
                "id": k,
                "name": names[k] if k < len(names) else f"agent{k}",
                "state": "",
                "cer": _num(scored[-1]["own_cer"]) if scored else None,
                "wer": _num(scored[-1].get("own_wer")) if scored else None,
                "round": last.get("round", 0),
                "steps": _num(last.get("steps")) or 0,
                "bytes_sent": _num(last.get("bytes_sent")) or 0,
                "bytes_recv": _num(last.get("bytes_recv")) or 0,
                "rejected": _num(last.get("rejected")) or 0,
                "train_loss": _num(last.get("train_loss")),
                "series": _series(own),
            }
        )
    return {
        "name": name,
        "state": state,
        "round": max((r["round"] for r in rows), default=0),
        "rounds": p2p.get("rounds"),
        "graph": _graph(folder / "topology.json"),
        "agents": agents,
    }


def _index(value) -> bool:
    """An agent number or a round: a non-negative int (rows with anything else are ignored)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _series(rows: list[dict]) -> dict:
    """Per-round columns of one agent (null where a round was not scored)."""
    return {
        "round": [r.get("round") for r in rows],
        "steps": [_num(r.get("steps")) for r in rows],
        "bytes_sent": [_num(r.get("bytes_sent")) for r in rows],
        "bytes_recv": [_num(r.get("bytes_recv")) for r in rows],
        "cer": [_num(r.get("own_cer")) for r in rows],
        "train_loss": [_num(r.get("train_loss")) for r in rows],
    }


def _graph(path: Path) -> dict | None:
    """{"adjacency", "directed", "description"} from a run's topology.json (None: the run's
    algorithm has no graph: central, local, fedavg)."""
    info = _json(path)
    if not isinstance(info, dict) or not isinstance(info.get("adjacency"), list):
        return None
    adj = info["adjacency"]
    if not all(isinstance(row, list) and len(row) == len(adj) for row in adj):
        return None  # not a square matrix: no graph rather than a wrong one
    adj = [[int(bool(v)) for v in row] for row in adj]
    directed = any(adj[i][j] != adj[j][i] for i in range(len(adj)) for j in range(len(adj)))
    return {
        "adjacency": adj,
        "directed": directed,
        "description": str(info.get("description", info.get("topology", ""))),
    }


# ---------------------------------------------------------------------- swarm


def _swarm(run_dir: Path, p2p: dict, ctx: _Context) -> dict:
    peer_dirs = sorted(run_dir.glob("swarm/peer*/"), key=lambda p: _peer_number(p.name))
    agents = [_peer(k, d, p2p, ctx) for k, d in enumerate(peer_dirs)]
    states = {a["state"] for a in agents}
    if states <= {"done", "gone"}:
        state = "done" if (run_dir / "report.md").is_file() else "stopped"
    else:
        state = "running"
    n = len(agents)
    return {
        "name": "swarm",
        "state": state,
        "round": max((a["round"] for a in agents), default=0),
        "rounds": p2p.get("rounds"),
        # any peer may average with any other: groups form on the fly, so all pairs
        "graph": {
            "adjacency": [[int(i != j) for j in range(n)] for i in range(n)],
            "directed": False,
            "description": "groups form on the fly among live peers",
        },
        "agents": agents,
    }


def _peer_number(name: str) -> int:
    digits = name.removeprefix("peer")
    return int(digits) if digits.isdigit() else 10**9


def _peer(k: int, folder: Path, p2p: dict, ctx: _Context) -> dict:
    rounds = _clean_rounds(ctx.rows(folder / "rounds.jsonl"))
    log = _clean_log(ctx.rows(folder / "metrics.jsonl"))
    summary = _json(folder / "summary.json")
    summary = summary if isinstance(summary, dict) else {}
    changed = _mtime(folder / "rounds.jsonl", folder / "metrics.jsonl")
    files = ("peer.log", "address.txt", "rounds.jsonl", "metrics.jsonl")
    alive = ctx.alive(folder / "peer.log", _mtime(*(folder / f for f in files)))
    state = peer_state(
        done=bool(summary),
        alive=alive,
        started=bool(rounds or log) or _says(folder / "peer.log", "training starts"),
        rounds=rounds,
        log=log,
        rounds_total=p2p["rounds"] if _index(p2p.get("rounds")) else None,
        silent_s=None if changed is None else ctx.now - changed,
        stale_s=ctx.stale_s,
    )
    sent = recv = 0
    keys = ("round", "steps", "bytes_sent", "bytes_recv", "averaged", "partial")
    series: dict[str, list] = {k: [] for k in keys}
    for r in rounds:
        sent += r["bytes_sent"]
        recv += r["bytes_recv"]
        series["round"].append(r["round"])
        series["steps"].append(r["step"])
        series["bytes_sent"].append(sent)
        series["bytes_recv"].append(recv)
        series["averaged"].append(r["ok"])
        series["partial"].append(r["partial"])
    series["train_loss"] = _round_losses(rounds, log)
    series["cer"] = [None] * len(rounds)
    if rounds and _num(summary.get("own_cer")) is not None:
        series["cer"][-1] = _num(summary["own_cer"])  # peers score themselves at the end
    joined = [r for r in rounds if r["ok"]]
    return {
        "id": k,
        "name": folder.name,
        "state": state,
        "cer": _num(summary.get("own_cer")),
        "wer": _num(summary.get("own_wer")),
        "round": len(rounds),
        "steps": max([r["step"] for r in log + rounds] + [0]),
        "bytes_sent": sent,
        "bytes_recv": recv,
        "rounds_joined": len(joined),
        "partial_rounds": sum(r["partial"] for r in rounds),
        "mean_group": (sum(r["group_size"] for r in joined) / len(joined)) if joined else None,
        "train_loss": log[-1]["train_loss"] if log else None,
        "series": series,
    }


def _clean_rounds(rows: list[dict]) -> list[dict]:
    """rounds.jsonl rows with every field the dashboard reads, numbers as numbers (rows
    without a round and step number are ignored)."""
    out = []
    for r in rows:
        if not (_index(r.get("round")) and _index(r.get("step"))):
            continue
        out.append(
            {
                "round": r["round"],
                "step": r["step"],
                "ok": bool(r.get("ok")),
                "partial": bool(r.get("partial")),
                "group_size": int(_num(r.get("group_size")) or 1),
                "bytes_sent": int(_num(r.get("bytes_sent")) or 0),
                "bytes_recv": int(_num(r.get("bytes_recv")) or 0),
                "seconds": _num(r.get("seconds")) or 0.0,
                "time": _num(r.get("time")) or 0.0,
            }
        )
    return out


def _clean_log(rows: list[dict]) -> list[dict]:
    """The training log's rows with a step number: (step, wall_time, train_loss)."""
    return [
        {
            "step": r["step"],
            "wall_time": _num(r.get("wall_time")) or 0.0,
            "train_loss": _num(r.get("train_loss")),
        }  # fmt: skip
        for r in rows
        if _index(r.get("step"))
    ]


def _says(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _round_losses(rounds: list[dict], log: list[dict]) -> list[float | None]:
    """Mean training loss of the steps since the previous round, per round (as the swarm's
    report computes it)."""
    out, previous = [], 0
    for r in rounds:
        step = r["step"]
        window = [x["train_loss"] for x in log if previous < x["step"] <= step]
        window = [v for v in window if v is not None]
        out.append(sum(window) / len(window) if window else None)
        previous = step
    return out


def peer_state(
    *,
    done: bool,
    alive: bool,
    started: bool,
    rounds: list[dict],
    log: list[dict],
    rounds_total: int | None,
    silent_s: float | None,
    stale_s: float = STALE_S,
) -> str:
    """done | gone | waiting | scoring | stalled | averaging | training, from a peer's files.

    A peer averages right after the step that ends a round (`every` steps: a round's `step`
    over its number) and logs that step only afterwards; so it is "averaging" once its
    training log has reached the last logged step before the next round and it has been
    silent for longer than training up to that round takes (1.5x, + 0.5 s)."""
    if done:
        return "done"
    if not alive:
        return "gone"
    if not started:
        return "waiting"
    if rounds_total and len(rounds) >= rounds_total:
        return "scoring"  # all rounds done: scoring its test split(s)
    if silent_s is not None and silent_s > stale_s:
        return "stalled"
    if not rounds or not log or silent_s is None:
        return "training"
    every = max(1, rounds[-1]["step"] // max(1, rounds[-1]["round"]))
    boundary = rounds[-1]["step"] + every
    last = log[-1]["step"]
    gap = last - log[-2]["step"] if len(log) > 1 else 1
    if boundary - last > max(gap, 1):
        return "training"
    expected = (boundary - last) * _step_seconds(rounds, log, every)
    return "averaging" if silent_s > 1.5 * expected + 0.5 else "training"


def _step_seconds(rounds: list[dict], log: list[dict], every: int) -> float:
    """Seconds one training step takes: from log intervals without a round in them, else
    from the rounds' own clocks (time between rounds less the averaging)."""
    clean = []
    for a, b in zip(log, log[1:], strict=False):
        s1, s2 = a["step"], b["step"]
        if s2 > s1 and s2 // every == s1 // every and s2 % every:
            clean.append((float(b["wall_time"]) - float(a["wall_time"])) / (s2 - s1))
    if clean:
        return max(0.0, statistics.median(clean))
    spans = [
        (float(b["time"]) - float(b["seconds"]) - float(a["time"])) / every
        for a, b in zip(rounds, rounds[1:], strict=False)
    ]
    return max(0.0, statistics.median(spans)) if spans else 0.0
