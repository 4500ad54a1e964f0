"""Serving the dashboard: a port that is free, uvicorn in the foreground or in a thread.

    serve_dashboard("runs/p2p-tiny")                       # `speechswarm dashboard`, Ctrl-C stops
    with DashboardThread("runs/swarm") as board: ...       # `speechswarm swarm --dashboard`

A port asked for explicitly is taken or refused with one line; without one the dashboard
tries DEFAULT_PORT and, if something holds it, any free port (and says so).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from pathlib import Path

from speechswarm.errors import UsageError

DEFAULT_PORT = 8050


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=64)


def bind(host: str, port: int | None) -> socket.socket:
    """A listening socket. `port` None: DEFAULT_PORT, else any free one (a line on stderr
    says so); an explicit port that is taken is a UsageError naming it."""
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    try:
        return _listen(host, DEFAULT_PORT if port is None else port)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        if port is not None:
            raise UsageError(
                f"cannot listen on {host}:{port}: {reason}; choose another port "
                "(or leave it out to take a free one)"
            ) from None
        print(f"dashboard: port {DEFAULT_PORT} ({reason}); taking a free one", file=sys.stderr)
    try:
        return _listen(host, 0)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}: {e}") from None


def url_of(sock: socket.socket, host: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{sock.getsockname()[1]}/"


def _uvicorn(run_dir: Path):
    import uvicorn

    from speechswarm.dashboard.app import make_app, plotly_js

    if plotly_js() is None:
        print(
            "dashboard: plotly is not installed, the page will have no charts: "
            "pip install 'speechswarm[dashboard]'",
            file=sys.stderr,
        )
    config = uvicorn.Config(make_app(run_dir), log_level="warning", access_log=False)
    return uvicorn.Server(config)


def serve_dashboard(
    run_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None
) -> None:
    """`speechswarm dashboard`: serve `run_dir`'s dashboard until Ctrl-C."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir} is a file; give the output folder of `speechswarm p2p` or `swarm`")  # fmt: skip
    sock = bind(host, port)
    server = _uvicorn(run_dir)
    waiting = "" if run_dir.is_dir() else f" ({run_dir} does not exist yet: the page waits for it)"
    print(f"dashboard: {url_of(sock, host)} for {run_dir}{waiting}; Ctrl-C stops", flush=True)
    server.run(sockets=[sock])


class DashboardThread:
    """The dashboard served from a background thread (the swarm's own process, tests).

    with DashboardThread(out_dir) as board:   # board.url = "http://127.0.0.1:PORT/"
    """

    def __init__(
        self, run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.sock = bind(host, port)
        self.url = url_of(self.sock, host)
        self._server = _uvicorn(Path(run_dir))
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self.sock]))

    def __enter__(self) -> DashboardThread:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the dashboard thread stopped before it started")
            self._thread.join(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self.sock.close()
