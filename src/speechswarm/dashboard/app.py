"""The dashboard's web application: one page, one JSON snapshot, the chart library.

    app = make_app("runs/p2p-tiny")     # GET /, /api/snapshot, /static/plotly.min.js

The page (page.html) polls /api/snapshot every 1.5 s and redraws with plotly.js, served
from the `plotly` Python package's own copy, so the page works offline.
"""

from __future__ import annotations

import os
import threading
import time
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from speechswarm.dashboard.processes import open_logs
from speechswarm.dashboard.snapshot import RowCache, snapshot


def plotly_js() -> Path | None:
    """plotly.min.js inside the installed plotly package (None: plotly not installed)."""
    try:
        path = resources.files("plotly") / "package_data" / "plotly.min.js"
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def make_app(run_dir: str | os.PathLike) -> Starlette:
    run_dir = Path(run_dir)
    cache = RowCache()
    lock = threading.Lock()  # one reader of the cache at a time (endpoints run in threads)
    page = (resources.files("speechswarm.dashboard") / "page.html").read_text(encoding="utf-8")
    js = plotly_js()

    def index(request) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    def api_snapshot(request) -> JSONResponse:
        with lock:
            snap = snapshot(run_dir, now=time.time(), open_logs=open_logs(run_dir), cache=cache)
        return JSONResponse(snap, headers={"Cache-Control": "no-store"})

    def chart_library(request) -> Response:
        if js is None:
            return Response(
                "plotly is not installed: pip install 'speechswarm[dashboard]'",
                status_code=404,
                media_type="text/plain",
            )
        return FileResponse(js, headers={"Cache-Control": "max-age=86400"})

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/snapshot", api_snapshot),
            Route("/static/plotly.min.js", chart_library),
        ]
    )
