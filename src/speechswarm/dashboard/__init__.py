"""A live web page of a peer-to-peer run: `speechswarm dashboard RUN_DIR` (docs/dashboard.md).

snapshot.py reads a run folder into JSON (pure), processes.py tells live runs from dead
ones, app.py and server.py serve the page (page.html) with Starlette and uvicorn.
"""
