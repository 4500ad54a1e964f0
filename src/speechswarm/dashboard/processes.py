"""Which of a run folder's log files a live process holds open: a running experiment.

    open_logs(Path("runs/swarm"))   # {Path(".../swarm/peer0/peer.log"), ...} or None

A simulation's process keeps `<out>/p2p.log` open for its whole run (a logging handler) and a
swarm peer keeps `peer.log` open as its stdout, so "someone holds the log" means "still
running", however long its files stay silent, and "nobody does" means it exited or was
killed. Read from Linux's /proc; elsewhere (or without permission) the answer is None and the
dashboard falls back to how long the files have been silent.
"""

from __future__ import annotations

import os
from pathlib import Path

LOG_NAMES = ("p2p.log", "peer.log")


def log_files(run_dir: Path) -> set[Path]:
    """The log files of a P2P output folder that a live process would hold open."""
    found = {run_dir / "p2p.log", *run_dir.glob("swarm/peer*/peer.log")}
    return {p.resolve() for p in found if p.is_file()}


def open_logs(run_dir: str | os.PathLike, proc: str = "/proc") -> set[Path] | None:
    """The subset of `log_files(run_dir)` some process has open; None where /proc is not
    readable (not Linux)."""
    wanted = log_files(Path(run_dir))
    root = Path(proc)
    if not (root / "self" / "fd").is_dir():
        return None
    held: set[Path] = set()
    if not wanted:
        return held
    targets = {str(p) for p in wanted}
    for pid in os.listdir(root):
        if not pid.isdigit():
            continue
        fd_dir = root / pid / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target in targets:
                held.add(Path(target))
        if len(held) == len(wanted):
            break
    return held
