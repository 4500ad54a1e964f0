"""N peers as separate processes on 127.0.0.1: the simulation's experiment over a real network.

    speechswarm swarm --config p2p-tiny --agents 4 --group-size 4 p2p.local_steps=4

`run_swarm()` splits the data exactly as `speechswarm p2p` does (`p2p.experiment.make_agents`,
manifests in `<out>/agents/`), writes the resolved config to `<out>/config.yaml`, starts peer
0, then the others with peer 0's address as `--initial-peers`, each its own process (and
process group) running `speechswarm peer`, with a fresh run secret in their environment
unless one is given. When all have finished it turns their `rounds.jsonl` and
`summary.json` into the simulation's per-agent rows (`<out>/swarm/metrics.jsonl`), plots and
`<out>/report.md` (the simulation's runs table, plus a per-peer table).

`PeerProcess` is the handle the fault tests use: start, address, pause (SIGSTOP), resume,
kill (SIGKILL to the whole process group: the p2pd daemons die with their peer).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from speechswarm.config import Config, dump_yaml
from speechswarm.p2p.report import plot_agents, plot_comparison, read_rows, report_markdown
from speechswarm.report import pct

RUN_NAME = "swarm"
PEER_MODULE = "speechswarm.p2p.net.cli"


class PeerProcess:
    """One `speechswarm peer` child process; its output goes to `<out>/peer.log`. `module`:
    what runs it (`python -m MODULE peer ARGS`; the fault campaign's misbehaving peer)."""

    def __init__(self, args: list[str], out: Path, env: dict[str, str], module: str = PEER_MODULE):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "peer.log"
        log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "peer", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: p2pd daemons included
        )
        log.close()

    def address(self, timeout: float = 120.0) -> str:
        """The peer's first listening address, once it has joined the DHT."""
        path = self.out / "address.txt"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and path.read_text().strip():
                return path.read_text().split()[0]
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited with {self.proc.returncode}: see {self.log_path}")
            time.sleep(0.2)
        raise TimeoutError(f"peer printed no address in {timeout:.0f} s: see {self.log_path}")

    def rounds(self) -> list[dict]:
        return read_rows(self.out / "rounds.jsonl")

    def summary(self) -> dict | None:
        path = self.out / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self.reap()

    def reap(self) -> None:
        """SIGKILL what is left of the peer's process group (its p2pd daemons)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.reap()


def peer_args(
    config: Path, agent_dir: Path, out: Path, settings, *, initial=(), global_test="", prefix="",
    index=-1,
) -> list[str]:  # fmt: skip
    """`speechswarm peer` arguments for one agent of a swarm (`index`: its number, for
    --topology)."""
    args = ["--config", str(config), "--data", str(agent_dir / "train.jsonl")]
    args += ["--test", str(agent_dir / "test.jsonl"), "--out", str(out), "--no-progress"]
    if global_test:
        args += ["--global-test", str(global_test)]
    if initial:
        args += ["--initial-peers", *initial]
    args += [
        f"--group-size={settings.group_size}",
        f"--every={settings.every}",
        f"--matchmaking-s={settings.matchmaking_s}",
        f"--timeout-s={settings.timeout_s}",
        f"--chunk-timeout-s={settings.chunk_timeout_s}",
        f"--compression={settings.compression}",
        f"--wait-peers={settings.wait_peers}",
    ]
    if prefix:
        args.append(f"--prefix={prefix}")
    if settings.topology:
        args += ["--topology", f"--index={index}"]
    if settings.background:
        args += ["--background", f"--max-staleness={settings.max_staleness}"]
    return args


def peer_env(secret: str, threads: int = 1) -> dict[str, str]:
    from speechswarm.p2p.net.auth import SECRET_ENV

    env = dict(os.environ)
    env[SECRET_ENV] = secret
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_swarm(
    cfg: Config,
    out: str,
    settings,
    *,
    config_source: str = "",
    overrides=(),
    secret_file: str = "",
    allow: str = "",
    prefix: str = "speechswarm",
    timeout_s: float = 3600.0,
) -> dict:
    """Run `p2p.agents` peers on loopback to the end; returns {"ok", "dir", "report", "peers"}."""
    from speechswarm.config import check_p2p
    from speechswarm.p2p.experiment import make_agents, usable_utterances, write_agents
    from speechswarm.p2p.net.auth import load_secret, new_secret
    from speechswarm.p2p.net.settings import staleness_bound

    check_p2p(cfg.p2p)
    if not settings.wait_peers:  # all peers start training together
        settings = dataclasses.replace(settings, wait_peers=cfg.p2p.agents)
    settings.check()
    if settings.background and (settings.every or cfg.p2p.local_steps):  # else known per peer
        staleness_bound(settings.max_staleness, settings.every or cfg.p2p.local_steps)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "config.yaml"
    config.write_text(dump_yaml(cfg))
    agents = make_agents(cfg, out_dir)
    agent_rows = write_agents(agents, out_dir)
    global_test = ""
    if cfg.data.test_manifest and Path(cfg.data.test_manifest).is_file():
        from speechswarm.data.manifest import write_manifest

        utts = usable_utterances(cfg, cfg.data.test_manifest, out_dir)
        global_test = out_dir / "global_test.jsonl"
        write_manifest(global_test, utts[: cfg.p2p.global_test_max or None])
    secret = load_secret(secret_file).decode() or new_secret()
    env = peer_env(secret, max(1, cfg.train.num_threads or 1))
    extra = ["--allow", allow] if allow else []
    peers_dir = out_dir / RUN_NAME
    print(
        f"swarm: {len(agents)} peers on 127.0.0.1, logs in {peers_dir}/peer*/peer.log", flush=True
    )
    started = time.perf_counter()
    peers: list[PeerProcess] = []
    try:
        for k, agent in enumerate(agents):
            initial = [peers[0].address()] if peers else []
            args = peer_args(
                config, out_dir / "agents" / agent.name, peers_dir / f"peer{k}", settings,
                initial=initial, global_test=global_test, prefix=prefix, index=k,
            )  # fmt: skip
            peers.append(PeerProcess(args + extra, peers_dir / f"peer{k}", env))
        deadline = time.monotonic() + timeout_s
        codes = [p.wait(max(1.0, deadline - time.monotonic())) for p in peers]
    finally:
        for p in peers:
            if p.proc.poll() is None:
                p.kill()
            p.reap()
    wall = time.perf_counter() - started
    rows = gather_rows([p.out for p in peers])
    report = write_report(out_dir, rows, [p.summary() or {} for p in peers], agent_rows, cfg, settings, wall)  # fmt: skip
    ok = all(c == 0 for c in codes)
    if not ok:
        bad = [str(p.log_path) for p, c in zip(peers, codes, strict=True) if c != 0]
        print(f"swarm: {len(bad)} peer(s) failed: see {', '.join(bad)}", file=sys.stderr)
    print(f"report: {report}", flush=True)
    return {"ok": ok, "dir": out_dir, "report": report, "peers": [p.summary() for p in peers]}


def _losses(peer_dir: Path) -> list[tuple[int, float]]:
    return [
        (int(r["step"]), float(r["train_loss"]))
        for r in read_rows(peer_dir / "metrics.jsonl")
        if r.get("train_loss") is not None
    ]


def gather_rows(peer_dirs: list[Path]) -> list[dict]:
    """The simulation's per-agent, per-round rows from each peer's files: round r of agent k
    is its r-th averaging attempt (peers are not in lock-step); scores on the last row."""
    rows = []
    for k, d in enumerate(peer_dirs):
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}  # fmt: skip
        losses = _losses(d)
        sent = recv = msgs = rejected = 0
        loaded = summary.get("loaded_state") or {}
        # a newcomer that took the swarm's position starts counting its steps there
        previous = int(loaded.get("from_step") or 0) if loaded.get("position") else 0
        own = read_rows(d / "rounds.jsonl")
        for i, r in enumerate(own):
            window = [v for s, v in losses if previous < s <= r["step"]]
            sent += r["bytes_sent"]
            recv += r["bytes_recv"]
            msgs += r["group_size"] - 1 if r["ok"] else 0
            rejected += r["reason"] in ("keys", "shape", "dtype", "nonfinite", "norm")
            row = {
                "run": RUN_NAME,
                "round": r["round"],
                "agent": k,
                "train_loss": sum(window) / len(window) if window else math.nan,
                "local_steps": r["step"] - previous,
                "steps": r["step"],
                "group_size": r["group_size"],
                "averaged": r["ok"],
                "msgs_sent": msgs,
                "msgs_recv": msgs,
                "bytes_sent": sent,
                "bytes_recv": recv,
                "rejected": rejected,
                "rejected_by_peers": 0,
                "wall_time": r.get("time", 0.0),
            }
            if i == len(own) - 1:
                row["wall_time"] = summary.get("wall_time", row["wall_time"])
                for key in ("own_wer", "own_cer", "global_wer", "global_cer"):
                    if key in summary:
                        row[key] = summary[key]
            rows.append(row)
            previous = r["step"]
    return rows


def write_report(out_dir: Path, rows, summaries, agent_rows, cfg, settings, wall) -> Path:
    from speechswarm.p2p.report import MetricsFile, summarize

    run_dir = out_dir / RUN_NAME
    metrics = MetricsFile(run_dir / "metrics.jsonl")
    metrics.write(rows)
    plot_agents(rows, run_dir / "agents_wer_cer.png")
    plot_comparison({RUN_NAME: rows}, out_dir / "plots")
    summary = summarize(rows)
    summary["wall_time"] = wall
    p = cfg.p2p
    notes = [
        f"{len(summaries)} peers as separate processes on 127.0.0.1 (hivemind), partition "
        f"`{p.partition}`, {p.rounds} averaging rounds per peer every "
        f"{settings.every or p.local_steps or str(p.local_epochs) + ' epoch(s)'} local steps, "
        f"groups of up to {settings.group_size}"
        f"{f' among graph neighbours (`{p.topology}`)' if settings.topology else ''}, "
        f"{'averaging in the background, ' if settings.background else ''}"
        f"compression `{settings.compression}`, "
        f"weights `{p.weights}`. Wall time: the whole swarm, start-up included."
    ]
    text = report_markdown([summary], agent_rows, notes, out_dir)
    text += "\n" + peers_table(summaries)
    (out_dir / "summary.json").write_text(json.dumps({"run": summary, "peers": summaries}, indent=1, default=str) + "\n")  # fmt: skip
    report = out_dir / "report.md"
    report.write_text(text)
    return report


def peers_table(summaries: list[dict]) -> str:
    lines = [
        "## Peers",
        "",
        "| peer | own WER | own CER | steps | rounds joined | mean group | MB sent | MB received |"
        " averaging s | training s | started from a peer's state |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, s in enumerate(summaries):
        if not s:
            lines.append(f"| {k} | (no summary: the peer failed) |" + " |" * 9)
            continue
        loaded = s.get("loaded_state", {})
        partial = f" ({s['partial_rounds']} partial)" if s.get("partial_rounds") else ""
        lines.append(
            f"| {k} | {pct(s.get('own_wer'))} | {pct(s.get('own_cer'))} | {s['steps']} | "
            f"{s['rounds_joined']}/{s['rounds']}{partial} | {s['mean_group_size']:.1f} | "
            f"{s['bytes_sent'] / 1e6:.2f} | {s['bytes_recv'] / 1e6:.2f} | "
            f"{s['averaging_seconds']:.1f}{_overlapped(s)} | {s['training_seconds']:.1f} | "
            f"{_started_from(loaded)} |"
        )
    return "\n".join(lines) + "\n"


def _overlapped(s: dict) -> str:
    """--background: the seconds of averaging that ran while the peer trained, and waits."""
    if not s.get("background"):
        return ""
    return f" (+{s['overlap_seconds']:.1f} overlapped, {s['background_waits']} waits)"


def _started_from(loaded: dict) -> str:
    """The peers table's last column: what a newcomer took from a donor, and refusals."""
    refused = loaded.get("refused") or []
    note = f"; {len(refused)} refused ({', '.join(refused)})" if refused else ""
    if not loaded.get("loaded"):
        return "no" + note
    what = "weights, optimizer, LR" if loaded.get("position") else "weights"
    return f"yes: {what} at step {loaded.get('from_step')}{note}"
