"""The dashboard in a real browser: headless Chromium (tests/browser.py) loads the page of a
simulation and of a swarm whose files a thread keeps appending to, and shows every agent,
their states, and numbers that move as rows arrive.

    .venv/bin/python -m pytest tests/dashboard/test_dashboard_page.py -q

Screenshots land in the test's tmp folder (dashboard-simulation.png, dashboard-swarm.png).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from folders import log_rows, round_row, sim_row, write_jsonl

from browser import CHROMIUM, DevTools
from speechswarm.dashboard.server import DashboardThread

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh)"),
]
AGENTS = 5
RING5 = [[int((j - i) % AGENTS in (1, AGENTS - 1)) for j in range(AGENTS)] for i in range(AGENTS)]


class Appender(threading.Thread):
    """Appends one round of rows every `period` s, each round's first row written in two
    pieces (a half-written line the page must not trip on)."""

    def __init__(self, write_round, rounds: int, period: float = 0.8) -> None:
        super().__init__(daemon=True)
        self.write_round, self.rounds, self.period = write_round, rounds, period
        self.stop = threading.Event()

    def run(self) -> None:
        for r in range(2, self.rounds + 1):
            if self.stop.wait(self.period):
                return
            self.write_round(r)


def sim_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(
        f"p2p:\n  runs: [gossip/ring, local]\n  rounds: 12\n  topology: ring\n  agents: {AGENTS}\n"
    )
    agents = [{"name": f"agent{k}", "train_utts": 8, "test_utts": 3} for k in range(AGENTS)]
    (root / "agents.json").write_text(json.dumps(agents))
    (root / "gossip-ring").mkdir()
    topology = {"topology": "ring", "description": "ring of 5 agents", "adjacency": RING5}
    (root / "gossip-ring" / "topology.json").write_text(json.dumps(topology))
    append_sim_round(root, 1)
    return root


def append_sim_round(root: Path, r: int) -> None:
    rows = [sim_row("gossip-ring", r, k, cer=0.95 * 0.85**r - 0.03 * k) for k in range(AGENTS)]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path = root / "gossip-ring" / "metrics.jsonl"
    with open(path, "a") as f:
        f.write(text[:40])
        f.flush()
        time.sleep(0.2)
        f.write(text[40:])


def open_page(browser: DevTools, url: str) -> None:
    browser.call("Page.navigate", url=url)
    browser.wait_for(
        "document.readyState === 'complete' && Number(document.body.dataset.updates) > 0"
    )


def table(browser: DevTools) -> list[dict]:
    return browser.evaluate(
        "[...document.querySelectorAll('#agents tbody tr')].map(tr => ({agent: tr.dataset.agent, "
        "state: tr.dataset.state, cer: tr.querySelector('.cer').textContent, "
        "round: Number(tr.querySelector('.round').textContent), "
        "sent: tr.querySelector('.sent').textContent}))"
    )


def wait_round(browser: DevTools, at_least: int, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = table(browser)
        if rows and min(r["round"] for r in rows) >= at_least:
            return rows
        time.sleep(0.2)
    raise TimeoutError(f"the page never showed round {at_least}: {table(browser)}")


def graph(browser: DevTools) -> dict:
    return browser.evaluate(
        "(() => { const d = document.getElementById('graph').data; return {nodes: d[1].x.length, "
        "edges: d[0].x.filter(v => v !== null).length / 2, colors: d[1].marker.color}; })()"
    )


@pytest.fixture
def browser(tmp_path):
    devtools = DevTools(tmp_path / "profile", size=(1400, 1000))
    yield devtools
    devtools.close()


def test_a_running_simulation_updates_live(tmp_path, browser):
    root = sim_folder(tmp_path / "sim")
    with open(root / "p2p.log", "a") as log:  # this process plays the live experiment
        log.write("started\n")
        log.flush()
        writer = Appender(lambda r: append_sim_round(root, r), rounds=12)
        with DashboardThread(root, port=0) as board:
            open_page(browser, board.url)
            first = wait_round(browser, 1)
            assert [r["agent"] for r in first] == [str(k) for k in range(AGENTS)]
            assert {r["state"] for r in first} == {"training"}
            assert graph(browser) == {
                "nodes": AGENTS,
                "edges": AGENTS,
                "colors": ["#2a9d8f"] * AGENTS,
            }
            writer.start()
            later = wait_round(browser, first[0]["round"] + 2)
            assert [r["cer"] for r in later] != [r["cer"] for r in first]
            assert later[0]["sent"] != first[0]["sent"]
            assert browser.evaluate("document.getElementById('run').value") == "gossip-ring"
            curve = browser.evaluate("document.getElementById('cer-rounds').data[0].y.length")
            assert curve >= 3
            time.sleep(1.0)  # a redraw after the latest rows, for the picture
            browser.screenshot(tmp_path / "dashboard-simulation.png", full_page=True)
            status = browser.evaluate("document.getElementById('status').textContent")
            assert status.startswith("updated ") and "skipped" not in status, status
            writer.stop.set()
            writer.join()


def swarm_folder(root: Path) -> Path:
    (root / "swarm").mkdir(parents=True)
    (root / "config.yaml").write_text("p2p:\n  rounds: 20\n  agents: 3\n  local_steps: 4\n")
    for k in range(3):
        peer = root / "swarm" / f"peer{k}"
        peer.mkdir()
        (peer / "address.txt").write_text(f"/ip4/127.0.0.1/tcp/{4000 + k}/p2p/Qm{k}\n")
        (peer / "peer.log").write_text("3 of 3 peers present; training starts\n")
    append_swarm_round(root, 1, peers=(0, 1, 2))
    past = time.time() - 30  # peer2 died 30 s ago
    for f in (root / "swarm" / "peer2").iterdir():
        os.utime(f, (past, past))
    return root


def append_swarm_round(root: Path, r: int, peers=(0, 1)) -> None:
    for k in peers:
        peer = root / "swarm" / f"peer{k}"
        write_jsonl(peer / "metrics.jsonl", log_rows(range(4 * r - 3, 4 * r + 1)), mode="a")
        write_jsonl(peer / "rounds.jsonl", [round_row(r, time=float(r), partial=r % 3 == 0)], mode="a")  # fmt: skip


def test_a_swarm_shows_live_peers_and_one_that_is_gone(tmp_path, browser):
    root = swarm_folder(tmp_path / "swarm-out")
    # peers 0 and 1 live (this process holds their logs open, as their own would); peer2 died
    logs = [open(root / "swarm" / f"peer{k}" / "peer.log", "a") for k in (0, 1)]  # noqa: SIM115
    writer = Appender(lambda r: append_swarm_round(root, r), rounds=20, period=0.6)
    try:
        with DashboardThread(root, port=0) as board:
            open_page(browser, board.url)
            first = wait_round(browser, 1)
            assert [r["state"] for r in first][2] == "gone"
            assert {r["state"] for r in first[:2]} <= {"training", "averaging"}
            assert graph(browser)["nodes"] == 3
            writer.start()
            deadline = time.monotonic() + 30
            while table(browser)[0]["round"] < 4 and time.monotonic() < deadline:
                time.sleep(0.2)
            later = table(browser)
            assert later[0]["round"] >= 4 and later[2]["round"] == 1
            assert later[0]["sent"] != first[0]["sent"]
            head = browser.evaluate("document.getElementById('extra-head').textContent")
            assert head == "rounds joined (partial)"
            time.sleep(1.0)
            browser.screenshot(tmp_path / "dashboard-swarm.png", full_page=True)
    finally:
        writer.stop.set()
        for f in logs:
            f.close()


def test_a_folder_that_does_not_exist_yet_is_waited_for(tmp_path, browser):
    root = tmp_path / "later"
    shown = "getComputedStyle(document.getElementById('{}')).display !== 'none'"
    with DashboardThread(root, port=0) as board:
        open_page(browser, board.url)
        assert browser.evaluate(shown.format("empty")) and not browser.evaluate(
            shown.format("main")
        )
        sim_folder(root)
        browser.wait_for(shown.format("main"), timeout=20)
        assert not browser.evaluate(shown.format("empty"))
        assert len(wait_round(browser, 1)) == AGENTS
