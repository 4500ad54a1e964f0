"""`speechswarm serve` under load: requests per second and latency at 1, 4 and 16 clients.

    PYTHONPATH=src .venv/bin/python bench/bench_serve.py [--checkpoint C] [--threads 1] [--json]

A server (the same app and batching as `speechswarm serve`) runs in this process on an
ephemeral port; each client is a thread that POSTs a speech-like FLAC file (2.5-4.5 s,
`speechswarm.benchmark.corpus`), waits for the answer and sends the next (closed loop). The
baseline is one request alone: the median latency at 1 client. Reported per level: requests
per second, latency p50/p95 (ms), the mean batch size the queue formed, and p95 over the
baseline (the target at 4 clients: <= 1.5x). Without --checkpoint the `tiny` preset's model
is used untrained: its speed does not depend on its weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from speechswarm.benchmark.corpus import write_bench_corpus
from speechswarm.benchmark.measure import environment
from speechswarm.benchmark.transcribe import untrained_checkpoint
from speechswarm.checkpoint import load_checkpoint
from speechswarm.data.audio import load_audio_bytes
from speechswarm.inference import Recognizer
from speechswarm.serve.app import make_app
from speechswarm.serve.batching import MainThreadExecutor
from speechswarm.serve.server import ServerThread


def post(url: str, data: bytes) -> float:
    """Seconds one POST /transcribe took (it must succeed)."""
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=120) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    return time.perf_counter() - start


def run_level(url: str, bodies: list[bytes], clients: int, requests_each: int) -> dict:
    """`clients` closed-loop clients sending `requests_each` requests each."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(requests_each):
            seconds = post(url, bodies[(k + i * clients) % len(bodies)])
            with lock:
                latencies.append(seconds)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def measure(asr, bodies: list[bytes], args) -> tuple[list[dict], list[float]]:
    """(a row per client level, seconds of each file straight through the model)."""
    direct = []
    for body in bodies[:8]:  # the model alone, no HTTP: what a request cannot beat
        start = time.perf_counter()
        asr.recognize_batch([load_audio_bytes(body, asr.sample_rate)])
        direct.append(time.perf_counter() - start)
    # as `speechswarm serve` does: the model in this (the main) thread; or in a worker thread
    executor = MainThreadExecutor() if args.model_thread == "main" else None
    app = make_app(asr, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, executor=executor)
    queue, rows = app.state.queue, []

    def levels(url: str) -> None:
        for body in bodies[:4]:  # warm-up
            post(url, body)
        for clients in args.levels:
            batches, answered, busy = queue.batches, queue.requests, queue.busy_seconds
            row = run_level(url, bodies, clients, max(1, args.requests // clients))
            ran = max(queue.batches - batches, 1)
            row["mean_batch"] = (queue.requests - answered) / ran
            row["batch_ms"] = (queue.busy_seconds - busy) / ran * 1000
            rows.append(row)
            print(f"  {clients:>2} clients: {row}", file=sys.stderr, flush=True)

    with ServerThread(app) as server:
        clients = threading.Thread(target=levels, args=(server.url + "transcribe",))
        clients.start()
        if executor is not None:
            executor.run(until=lambda: not clients.is_alive())
        clients.join()
    return rows, direct


def format_report(result: dict) -> str:
    lines = [
        f"model {result['model']}, {result['threads']} torch thread(s) in the "
        f"{result['model_thread']} thread, {result['precision']}; "
        f"files 2.5-4.5 s; one file straight through the model: {result['direct_ms_p50']:.0f} "
        f"ms; one request alone: {result['single_request_ms']:.0f} ms",
        f"{'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'batch':>6} "
        f"{'batch ms':>9} {'p95/single':>10}",
    ]
    for r in result["levels"]:
        lines.append(
            f"{r['clients']:>7} {r['rps']:>7.2f} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
            f"{r['mean_batch']:>6.1f} {r['batch_ms']:>9.0f} {r['p95_over_single']:>10.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: tiny)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=48, help="requests per level")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--precision", default="auto", help="auto: bf16 where the CPU has it")
    p.add_argument(
        "--model-thread",
        choices=("main", "worker"),
        default="main",
        help="where the model runs: the main thread (as `speechswarm serve`) or a worker thread",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    ckpt = (
        load_checkpoint(Path(args.checkpoint)) if args.checkpoint else untrained_checkpoint("tiny")
    )
    asr = Recognizer(ckpt, device="cpu", precision=args.precision)
    durations = np.random.default_rng(0).uniform(2.5, 4.5, size=16)
    with tempfile.TemporaryDirectory() as folder:
        write_bench_corpus(Path(folder), durations, seed=0)
        bodies = [f.read_bytes() for f in sorted(Path(folder).rglob("*.flac"))]
    rows, direct = measure(asr, bodies, args)
    single = next((r["p50_ms"] for r in rows if r["clients"] == 1), float("nan"))
    for r in rows:
        r["p95_over_single"] = r["p95_ms"] / single
    result = {
        "model": args.checkpoint or "tiny (untrained)",
        "threads": args.threads,
        "model_thread": args.model_thread,
        "precision": asr.precision,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
        "audio_seconds": [round(float(d), 2) for d in durations],
        "direct_ms_p50": float(np.median(direct) * 1000),
        "single_request_ms": single,
        "levels": rows,
        "environment": environment(),
    }
    print(json.dumps(result) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
