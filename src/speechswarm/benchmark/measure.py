"""What a benchmark reports beside its speeds: peak memory while a block runs, and the
machine, commit and date the numbers belong to; and a training run built for one measurement
and torn down after it.

    from speechswarm.benchmark.measure import PeakMemory, environment
    with PeakMemory(torch.device("cpu")) as mem:
        work()
    print(mem.rss / 2**30, "GiB;", environment())
"""

from __future__ import annotations

import datetime
import gc
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from speechswarm import host
from speechswarm.train.assemble import build_run, close_log

T = TypeVar("T")


class PeakMemory:
    """Context manager: peak resident set size of this process (bytes), sampled every 20 ms
    from /proc/self/statm (falls back to getrusage's lifetime peak elsewhere), and on CUDA
    `torch.cuda.max_memory_allocated` over the block."""

    def __init__(self, device: torch.device):
        self.device, self.rss, self.cuda = device, 0, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.rss = max(self.rss, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.rss = max(self.rss, rss_bytes())
        if self.device.type == "cuda":
            self.cuda = int(torch.cuda.max_memory_allocated(self.device))


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def environment() -> dict:
    """Date, commit, machine: what a results table needs beside the numbers."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    cpu = host.cpu_model()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "machine": f"{os.cpu_count()} cores, {cpu}" + (f", {gpu}" if gpu else ""),
        "torch": torch.__version__,
    }


def measure_in_run(cfg: Any, measure: Callable[[Any], T]) -> T:
    """`measure(run)` on a training run built from `cfg` (no progress bars), then the run torn
    down whatever happened: its log files closed, its loader workers shut down and torch's
    thread count put back. The run lives only in here, so a caller may delete the folder it
    wrote to as soon as this returns (a `with` block's variable would keep it alive)."""
    threads_before = torch.get_num_threads()
    run = build_run(cfg, progress=False)
    try:
        return measure(run)
    finally:
        close_log(run.log)
        del run
        gc.collect()  # shuts the persistent loader workers down before the folder goes
        torch.set_num_threads(threads_before)
