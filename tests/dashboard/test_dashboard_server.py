"""The dashboard over HTTP and its command: endpoints, ports that are taken, a bad folder.

.venv/bin/python -m pytest tests/dashboard/test_dashboard_server.py -q
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request

import pytest
from folders import write_simulation

from speechswarm.dashboard import server
from speechswarm.dashboard.server import DashboardThread, bind
from speechswarm.errors import UsageError


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def test_the_page_the_snapshot_and_the_chart_library_are_served(tmp_path):
    root = write_simulation(tmp_path / "sim")
    with DashboardThread(root, port=0) as board:
        status, kind, body = get(board.url)
        assert status == 200 and kind.startswith("text/html")
        assert b"/static/plotly.min.js" in body and b"/api/snapshot" in body
        status, kind, body = get(board.url + "api/snapshot")
        snap = json.loads(body)
        assert snap["kind"] == "simulation"
        assert [r["name"] for r in snap["runs"]] == ["gossip-ring", "local"]
        status, kind, body = get(board.url + "static/plotly.min.js")
        assert status == 200 and "javascript" in kind and len(body) > 1_000_000


@pytest.fixture
def taken():
    """A port some other program listens on."""
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def test_an_explicit_port_that_is_taken_is_refused(taken):
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{taken}: .*choose another"):
        bind("127.0.0.1", taken)


def test_the_default_port_taken_means_another_free_port(taken, monkeypatch, capsys):
    monkeypatch.setattr(server, "DEFAULT_PORT", taken)
    sock = bind("127.0.0.1", None)
    try:
        assert sock.getsockname()[1] not in (taken, 0)
    finally:
        sock.close()
    assert f"port {taken}" in capsys.readouterr().err


def test_the_command_names_the_taken_port_in_one_line(tmp_path, taken):
    root = write_simulation(tmp_path / "sim")
    cmd = [sys.executable, "-m", "speechswarm", "dashboard", str(root), "--port", str(taken)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{taken}" in lines[0], result.stderr


def test_the_command_prints_its_url_and_serves_the_folder(tmp_path):
    root = write_simulation(tmp_path / "sim")
    cmd = [sys.executable, "-m", "speechswarm", "dashboard", str(root), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("dashboard: http://127.0.0.1:") and str(root) in line, line
        url = line.split()[1]
        snap = json.loads(get(url + "api/snapshot")[2])
        assert [a["name"] for a in snap["runs"][0]["agents"]] == ["agent0", "agent1", "agent2"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_missing_extra_is_one_line_naming_the_install():
    from speechswarm.dashboard.cli import missing_dependency
    from speechswarm.errors import UnavailableError

    error = missing_dependency(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"))
    assert isinstance(error, UnavailableError)
    assert str(error) == "the dashboard needs uvicorn: pip install 'speechswarm[dashboard]'"
    other = ModuleNotFoundError("No module named 'numpy'", name="numpy")
    assert missing_dependency(other) is other  # not ours to explain: the traceback stays
