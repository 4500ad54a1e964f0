"""`speechswarm swarm --dashboard`: the dashboard served from the swarm's own process shows
3 real peers (hivemind on loopback) training, their rounds growing, and all done at the end.

    .venv/bin/python -m pytest tests/dashboard/test_dashboard_swarm.py -q
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest

from speechswarm.config import dump_yaml
from speechswarm.dashboard.processes import open_logs
from speechswarm.dashboard.snapshot import snapshot
from speechswarm.data.manifest import read_manifest, write_manifest

pytest.importorskip("hivemind")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


class Poller(threading.Thread):
    """GETs /api/snapshot every 0.3 s until stopped; keeps what it saw."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.snaps, self.stop = url, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.3):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.snaps.append(json.loads(r.read()))
            except OSError:  # not listening yet, or already closed
                pass


def test_the_swarm_serves_its_dashboard_while_it_runs(tiny_config, tone_corpus, tmp_path):
    from speechswarm.p2p.net.cli import main

    base = read_manifest(tone_corpus)
    speakers = tmp_path / "tones3.jsonl"
    write_manifest(speakers, [u.with_(id=f"s{s}-{u.id}", speaker=f"s{s}") for s in range(3) for u in base])  # fmt: skip
    cfg = tiny_config(
        tmp_path / "unused", speakers, f"data.test_manifest={speakers}", "data.validate=false",
        "data.max_batch_size=2", "optim.name=adam", "optim.schedule=constant", "optim.lr=3e-3",
        "p2p.agents=3", "p2p.partition=speaker", "p2p.local_steps=2", "p2p.rounds=6",
        "p2p.global_test_max=4",
    )  # fmt: skip
    config = tmp_path / "swarm.yaml"
    config.write_text(dump_yaml(cfg))
    out, port = tmp_path / "swarm-out", free_port()
    poller = Poller(f"http://127.0.0.1:{port}/api/snapshot")
    poller.start()
    try:
        code = main(["swarm", "--config", str(config), "--out", str(out), "--group-size", "3",
                     "--matchmaking-s", "0.5", "--timeout-s", "4", "--dashboard-port", str(port)])  # fmt: skip
    finally:
        poller.stop.set()
        poller.join()
    assert code == 0, (out / "swarm" / "peer0" / "peer.log").read_text()[-3000:]
    swarms = [s for s in poller.snaps if s["kind"] == "swarm"]
    assert swarms, f"{len(poller.snaps)} snapshots, none of a swarm"
    assert max(len(s["runs"][0]["agents"]) for s in swarms) == 3
    seen = {a["state"] for s in swarms for a in s["runs"][0]["agents"]}
    assert seen & {"training", "averaging"}, seen
    assert "gone" not in seen  # live peers are never taken for dead ones
    rounds = sorted({s["runs"][0]["round"] for s in swarms})
    assert len(rounds) >= 2, rounds  # the numbers moved while the swarm ran
    with pytest.raises(OSError):  # the dashboard stopped with the swarm
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshot", timeout=2)
    (run,) = snapshot(out, now=time.time(), open_logs=open_logs(out))["runs"]
    assert run["state"] == "done"
    assert [a["state"] for a in run["agents"]] == ["done"] * 3
    assert all(a["cer"] is not None and a["round"] == 6 for a in run["agents"])
