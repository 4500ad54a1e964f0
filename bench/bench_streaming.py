"""Streaming recognition on one core: real-time factor and latency, simulated in real time.

    PYTHONPATH=src .venv/bin/python bench/bench_streaming.py --checkpoint C \
        --manifest data/synth-v2/test.jsonl [--utterances 40] [--chunk-ms 160] [--json]

Each utterance is fed to a `StreamingRecognizer` in chunks; the compute time of every
`feed` and of `finish` is measured (one torch thread). Latency is then replayed on a clock
where chunk k arrives when its last sample would have been spoken (as from a microphone) and
is processed when it has arrived and the previous chunk is done:

  first partial  from the end of the output frame that emits the first letter (frame j
                 covers j * 20 ms .. (j + 1) * 20 ms for `stream`) to the `feed` that
                 returns it: right context + waiting for the chunk to fill + compute.
  final          from the last sample (the end of the file) to `finish` returning.
                 The end of the file stands for the end of speech: no endpointer runs.

The real-time factor is given in wall-clock time and in this process's CPU time (on a
shared, loaded machine the first includes waiting for a core; the second does not).
Also checks that each final text equals the whole-clip transcript (fp32, same model).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from speechswarm.data.audio import load_audio
from speechswarm.data.manifest import read_manifest
from speechswarm.inference import load
from speechswarm.streaming import StreamingRecognizer


def replay(stream: StreamingRecognizer, wave: np.ndarray, chunk: int) -> dict:
    """Feed `wave` in `chunk`-sample pieces; returns compute seconds and simulated latencies."""
    sr, clock, first, compute = stream.sample_rate, 0.0, None, 0.0
    cpu0 = time.process_time()
    for start in range(0, len(wave), chunk):
        arrives = min(start + chunk, len(wave)) / sr
        t0 = time.perf_counter()
        partial = stream.feed(wave[start : start + chunk])
        took = time.perf_counter() - t0
        compute += took
        clock = max(clock, arrives) + took
        if first is None and partial:
            j = next(i for i, c in enumerate(stream.path) if c != 0)  # first non-blank frame
            frame_end = (j + 1) * stream.asr.frame_seconds
            first = clock - frame_end
    t0 = time.perf_counter()
    text = stream.finish()
    took = time.perf_counter() - t0
    compute += took
    clock = max(clock, len(wave) / sr) + took
    return {
        "text": text,
        "compute_s": compute,
        "cpu_s": time.process_time() - cpu0,
        "first_partial_s": first,
        "final_s": clock - len(wave) / sr,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--utterances", type=int, default=40)
    ap.add_argument("--chunk-ms", type=float, default=160.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stream = StreamingRecognizer.load(args.checkpoint)
    whole = load(args.checkpoint, device="cpu", precision="fp32")
    chunk = round(stream.sample_rate * args.chunk_ms / 1000)
    utts = read_manifest(Path(args.manifest))[: args.utterances]
    rows, same = [], 0
    for u in utts:
        wave = load_audio(u.audio, stream.sample_rate)
        stream.feed(wave[:chunk])  # warm-up: first calls allocate
        stream.reset()
        row = replay(stream, wave, chunk)
        same += row["text"] == whole.transcribe(wave)
        rows.append({**row, "audio_s": len(wave) / stream.sample_rate})
    audio = sum(r["audio_s"] for r in rows)
    compute = sum(r["compute_s"] for r in rows)
    cpu = sum(r["cpu_s"] for r in rows)
    firsts = [r["first_partial_s"] for r in rows if r["first_partial_s"] is not None]
    finals = [r["final_s"] for r in rows]
    report = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "chunk_ms": args.chunk_ms,
        "utterances": len(rows),
        "audio_s": round(audio, 1),
        "x_real_time": round(audio / compute, 1),  # wall clock: waits for a busy core count
        "x_real_time_cpu_time": round(audio / cpu, 1),  # this process's CPU seconds only
        "first_partial_ms_p50": round(1000 * float(np.median(firsts)), 1) if firsts else None,
        "first_partial_ms_max": round(1000 * max(firsts), 1) if firsts else None,
        "final_ms_p50": round(1000 * float(np.median(finals)), 1),
        "final_ms_max": round(1000 * max(finals), 1),
        "final_equals_whole_clip": f"{same}/{len(rows)}",
        "right_context_frames": stream.right_context,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
