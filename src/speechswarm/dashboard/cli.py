"""`speechswarm dashboard`: a live web page of a peer-to-peer run (simulation or swarm).

speechswarm dashboard runs/p2p-tiny                    # http://127.0.0.1:8050/ (or a free port)
speechswarm dashboard runs/swarm --port 9000 --host 0.0.0.0
"""

from __future__ import annotations

DEPENDENCIES = ("starlette", "uvicorn")


def add_parser(sub) -> None:
    s = sub.add_parser(
        "dashboard", help="live web page of a p2p or swarm run: graph, CER, bytes, states"
    )
    s.add_argument("run_dir", help="output folder of `speechswarm p2p` or `speechswarm swarm`")
    s.add_argument(
        "--port", type=int, default=None, help="TCP port (default 8050, else any free one)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    s.set_defaults(func=_dashboard)


def missing_dependency(e: ModuleNotFoundError) -> Exception:
    """The one-line error for a dashboard without its extra installed."""
    from speechswarm.errors import UnavailableError

    if e.name not in DEPENDENCIES:
        return e
    return UnavailableError(f"the dashboard needs {e.name}: pip install 'speechswarm[dashboard]'")


def _dashboard(args) -> int:
    try:
        from speechswarm.dashboard.server import serve_dashboard

        serve_dashboard(args.run_dir, host=args.host, port=args.port)
    except ModuleNotFoundError as e:
        raise missing_dependency(e) from None
    return 0
