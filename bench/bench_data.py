"""Data pipeline speed: decoding, resampling, features, and whether the loader keeps a step fed.

    .venv/bin/python bench/bench_data.py                 # table; ~4 min on 2 cores
    .venv/bin/python bench/bench_data.py --json          # one JSON object on stdout (table on stderr)

Generated corpus: `--utts` speech-like FLACs (16 kHz, 16-bit mono; harmonics with a syllable
envelope plus noise, so they compress like speech), durations uniform in
[`--min-seconds`, `--max-seconds`] (mean 5 s by default), written to a temp folder, plus
`--resample-utts` of them again at 22.05 kHz.

Measured (x real time = audio seconds per wall second; best of `--repeats` unless noted):
- FLAC decode (soundfile) and `load_audio` at 16 kHz and from 22.05 kHz (soxr HQ), 1 thread;
- feature extraction (spectrogram, log-mel) with 1 and 2 torch threads, via bench_features;
- the loader feeding a step: one shuffled epoch of `make_loader(SpeechDataset(...),
  BucketBatchSampler(...), num_workers=N)` with the tiny preset's data settings (160 s
  batches, at most 48 utterances, speed perturbation 0.9/1.0/1.1) consumed by
  `loader` (nothing: how fast the loader alone delivers), `real` (the tiny model's real
  step: augment, features, forward, CTC, backward, clip, AdamW, all on this CPU) and
  `sleep/k` (a stand-in step that sleeps 1/k of what the real step took per padded second
  at num_workers=0, k from `--speedups`: an accelerator step k times faster than this CPU's,
  leaving the CPU to the loader; where the loader stops keeping up shows as wait).
  wait = wall time the step sat idle in `next(loader)` / epoch wall time, as
  `train_one_epoch` logs it; "steady" leaves out the first batch (worker start-up and the
  empty pipeline), which a long epoch amortises. Padding = padded share of the batches' samples.

Numbers from a shared machine are lower bounds; record the load average (printed) with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from bench_features import best_seconds, speechlike_batch  # noqa: E402

from speechswarm.benchmark.corpus import speechlike_wave  # noqa: E402
from speechswarm.build import build_augment, build_features, build_model  # noqa: E402
from speechswarm.config import load_config  # noqa: E402
from speechswarm.data.audio import load_audio  # noqa: E402
from speechswarm.data.dataset import Batch, SpeechDataset, make_loader  # noqa: E402
from speechswarm.data.manifest import Utterance  # noqa: E402
from speechswarm.data.sampler import BucketBatchSampler, padding_fraction  # noqa: E402
from speechswarm.data.tokenizer import CharTokenizer  # noqa: E402
from speechswarm.features import FeatureExtractor  # noqa: E402
from speechswarm.train.optim import build_optimizer  # noqa: E402

SAMPLE_RATE = 16000
RESAMPLE_FROM = 22050
WORDS = ["the", "cat", "of", "and", "to", "in", "is", "it", "that", "was", "he", "for", "on"]


# ----------------------------------------------------------------------------- corpus


def make_corpus(folder: Path, args) -> tuple[list[Utterance], list[Path]]:
    """(utterances at 16 kHz, paths of the 22.05 kHz copies of the first few)."""
    rng = np.random.default_rng(0)
    utts, resample_paths = [], []
    for i in range(args.utts):
        seconds = round(float(rng.uniform(args.min_seconds, args.max_seconds)), 2)
        wave = speechlike_wave(seconds, SAMPLE_RATE, rng)
        path = folder / f"utt{i:04d}.flac"
        sf.write(path, wave, SAMPLE_RATE, subtype="PCM_16")
        words = rng.choice(WORDS, size=max(1, int(seconds * 2.5)))  # ~2.5 words/s
        utts.append(Utterance(f"utt{i:04d}", str(path), seconds, " ".join(words)))
        if i < args.resample_utts:
            other = folder / f"utt{i:04d}_22k.flac"
            sf.write(
                other, speechlike_wave(seconds, RESAMPLE_FROM, rng), RESAMPLE_FROM, subtype="PCM_16"
            )
            resample_paths.append(other)
    return utts, resample_paths


# ----------------------------------------------------------------------------- decode, features


def timed_xrt(fn: Callable[[], object], audio_seconds: float, repeats: int) -> float:
    """x real time of fn (which processes `audio_seconds` of audio), best of `repeats`."""
    return audio_seconds / best_seconds(fn, repeats, torch.device("cpu"))


def decode_rows(utts: list[Utterance], resample_paths: list[Path], repeats: int) -> dict:
    torch.set_num_threads(1)
    paths = [u.audio for u in utts]
    total = sum(u.duration for u in utts)
    resampled_total = sum(sf.info(str(p)).duration for p in resample_paths)
    return {
        "flac_decode_soundfile": timed_xrt(
            lambda: [sf.read(p, dtype="float32") for p in paths], total, repeats
        ),
        "load_audio_16k": timed_xrt(
            lambda: [load_audio(p, SAMPLE_RATE) for p in paths], total, repeats
        ),
        "load_audio_22k_to_16k": timed_xrt(
            lambda: [load_audio(p, SAMPLE_RATE) for p in resample_paths], resampled_total, repeats
        ),
    }


def feature_rows(repeats: int) -> dict:
    """x real time of feature extraction on bench_features' 60 s batch, 1 and 2 threads."""
    device = torch.device("cpu")
    waves, lens = speechlike_batch(device)
    audio_s = float(lens.sum()) / SAMPLE_RATE
    out = {}
    for kind in ("spectrogram", "logmel"):
        fe = FeatureExtractor(kind=kind, normalize="utterance")
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                out[f"{kind}_{threads}t"] = timed_xrt(
                    lambda fe=fe: fe(waves, lens), audio_s, repeats
                )
    return out


# ----------------------------------------------------------------------------- loader + step


class TinyStep:
    """The tiny preset's training step on this CPU, as `_forward_backward` + `optimizer_step`
    do it: wave augment, features, SpecAugment, forward, CTC, backward, clip, AdamW."""

    def __init__(self, vocab_size: int, seed: int = 0):
        cfg = load_config("tiny")
        torch.manual_seed(seed)
        self.extractor = build_features(cfg.features, cfg.data.sample_rate)
        self.model = build_model(cfg.model, self.extractor.num_features, vocab_size)
        self.wave_aug, self.spec_aug = build_augment(cfg.augment, cfg.data.sample_rate)
        self.optimizer = build_optimizer(
            self.model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay
        )
        self.grad_clip = cfg.optim.grad_clip or float("inf")
        self.ctc = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)
        self.generator = torch.Generator().manual_seed(seed)
        self.data_cfg = cfg.data

    def __call__(self, batch: Batch) -> None:
        with torch.no_grad():
            waves = batch.waves  # (N, S) float32
            if self.wave_aug is not None:
                waves = self.wave_aug(waves, batch.wave_lens, self.generator)
            feats, feat_lens = self.extractor(waves, batch.wave_lens)  # (N, T, F), (N,)
            if self.spec_aug is not None:
                feats = self.spec_aug(feats, feat_lens, self.generator)
        log_probs, out_lens = self.model(feats, feat_lens)  # (N, T', V), (N,)
        loss = self.ctc(log_probs.transpose(0, 1), batch.tokens, out_lens, batch.token_lens)
        (loss / len(batch.ids)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run_epoch(dataset, sampler, num_workers: int, step: Callable[[Batch], None]) -> dict:
    """One epoch through a fresh loader; wait = time spent in next(loader), as the loop logs."""
    loader = make_loader(dataset, sampler, num_workers=num_workers, persistent_workers=False)
    wait, first_wait, audio, padded, used = 0.0, None, 0.0, 0, 0
    step_times, padded_seconds = [], []
    start = ready = time.perf_counter()
    for batch in loader:  # iter() starts the workers: counted in the first wait
        t0 = time.perf_counter()
        first_wait = t0 - ready if first_wait is None else first_wait
        wait += t0 - ready
        audio += float(batch.wave_lens.sum()) / SAMPLE_RATE
        used += int(batch.wave_lens.sum())
        padded += batch.waves.numel()
        padded_seconds.append(batch.waves.numel() / SAMPLE_RATE)
        step(batch)
        ready = time.perf_counter()
        step_times.append(ready - t0)
    wall = ready - start
    first_wait = first_wait or 0.0
    return {
        "num_workers": num_workers,
        "batches": len(step_times),
        "wall_s": wall,
        "wait_fraction": wait / wall,
        "steady_wait_fraction": (wait - first_wait) / max(wall - first_wait, 1e-9),
        "first_batch_s": first_wait,
        "audio_xrt": audio / wall,
        "step_s_median": statistics.median(step_times),
        "padding_fraction": 1.0 - used / padded,
        "_step_times": step_times,
        "_padded_seconds": padded_seconds,
    }


def loader_rows(utts: list[Utterance], args, table) -> tuple[list[dict], dict]:
    tok = CharTokenizer()
    tiny = TinyStep(len(tok))
    data = tiny.data_cfg
    dataset = SpeechDataset(utts, tok, SAMPLE_RATE, speed_factors=data.speed_factors, seed=0)
    sampler = BucketBatchSampler(
        [u.duration for u in utts], data.max_batch_seconds, max_batch_size=data.max_batch_size
    )
    dataset.set_epoch(1)
    sampler.set_epoch(1)  # a shuffled epoch (epoch 0 is SortaGrad's ascending order)
    torch.set_num_threads(args.threads)
    nominal = padding_fraction(sampler.durations, sampler.rank_batches())
    print(f"  padding by manifest durations {100 * nominal:.1f} %", file=table)
    runs = [(m, 1.0) for m in args.modes if m != "sleep"]
    runs += [("sleep", k) for k in args.speedups] if "sleep" in args.modes else []
    rows, calibration = [], {}
    for mode, speedup in runs:
        for nw in args.workers:
            if mode == "loader":
                step = _noop
            elif mode == "real":
                step = tiny
            else:
                if not calibration:
                    calibration = _calibrate(tiny, dataset, sampler)
                step = _sleep_step(calibration["step_s_per_padded_s"] / speedup)
            row = run_epoch(dataset, sampler, nw, step)
            if mode == "real" and nw == 0 and not calibration:
                calibration = _calibration_from(row, "real step at num_workers=0")
            row = {k: v for k, v in row.items() if not k.startswith("_")}
            rows.append({"mode": mode, "speedup": speedup, "padding_nominal": nominal, **row})
            print(_loader_line(rows[-1]), file=table, flush=True)
    return rows, calibration


def _noop(batch: Batch) -> None:
    pass


def _sleep_step(seconds_per_padded_second: float) -> Callable[[Batch], None]:
    """A stand-in step that holds no CPU: sleeps as long as the real step takes for the
    batch's padded audio (an accelerator computing while the CPU feeds it)."""

    def step(batch: Batch) -> None:
        time.sleep(seconds_per_padded_second * batch.waves.numel() / SAMPLE_RATE)

    return step


def _calibration_from(row: dict, source: str) -> dict:
    seconds = sum(row["_step_times"])
    return {
        "source": source,
        "step_s_per_padded_s": seconds / sum(row["_padded_seconds"]),
        "step_s_median": row["step_s_median"],
    }


def _calibrate(tiny: TinyStep, dataset, sampler) -> dict:
    """Real step time per padded audio second, timed without a loader running beside it."""
    row = run_epoch(dataset, sampler, 0, tiny)
    return _calibration_from(row, "real step, separate run at num_workers=0")


def _loader_line(r: dict) -> str:
    mode = r["mode"] if r["mode"] != "sleep" else f"sleep/{r['speedup']:g}"
    return (
        f"  {mode:<9} workers={r['num_workers']}  wait {100 * r['wait_fraction']:5.1f} %"
        f"  steady {100 * r['steady_wait_fraction']:5.1f} %  first batch {r['first_batch_s']:5.2f} s"
        f"  step {r['step_s_median']:5.2f} s  {r['audio_xrt']:6.1f} x rt  wall {r['wall_s']:5.1f} s"
    )


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utts", type=int, default=200, help="generated utterances")
    parser.add_argument("--min-seconds", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=8.0)
    parser.add_argument(
        "--resample-utts", type=int, default=40, help="of them also written at 22.05 kHz"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per number (best kept)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=("loader", "real", "sleep"),
        default=["loader", "real", "sleep"],
    )
    parser.add_argument(
        "--speedups",
        type=float,
        nargs="+",
        default=[1.0, 10.0, 50.0],
        help="sleep mode: the stand-in step runs this many times faster than the real one",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch threads of the step (default: torch's, as train.num_threads=0 uses)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    table = sys.stderr if args.json else sys.stdout
    load_start = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        utts, resample_paths = make_corpus(Path(tmp), args)
        hours = sum(u.duration for u in utts) / 3600
        print(
            f"corpus: {len(utts)} FLACs, {hours * 60:.1f} min ({args.min_seconds}-"
            f"{args.max_seconds} s each); {os.cpu_count()} CPUs, load average "
            f"{load_start[0]:.2f} at start",
            file=table,
        )
        decode = decode_rows(utts, resample_paths, args.repeats)
        print(f"{'decode (1 thread)':<36} {'x real time':>12}", file=table)
        for name, xrt in decode.items():
            print(f"  {name:<34} {xrt:>12,.0f}", file=table)
        features = feature_rows(max(args.repeats, 3))
        print(f"{'features (60 s batch)':<36} {'1 thread':>12} {'2 threads':>10}", file=table)
        for kind in ("spectrogram", "logmel"):
            one, two = features[f"{kind}_1t"], features[f"{kind}_2t"]
            print(f"  {kind:<34} {one:>12,.0f} {two:>10,.0f}", file=table)
        print(
            f"loader -> step (tiny preset data settings, torch threads {args.threads}):", file=table
        )
        loader, calibration = loader_rows(utts, args, table)
    load_end = os.getloadavg()
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "corpus": {
            "utts": len(utts),
            "hours": hours,
            "seconds_range": [args.min_seconds, args.max_seconds],
            "resample_utts": len(resample_paths),
        },
        "decode_xrt": decode,
        "features_xrt": features,
        "loader": loader,
        "calibration": calibration,
        "padding_fraction": loader[0]["padding_fraction"] if loader else None,
        "padding_nominal": loader[0]["padding_nominal"] if loader else None,
        "bench_seconds": time.perf_counter() - started,
    }
    print(
        f"padding {100 * result['padding_fraction']:.1f} % of batch samples (after speed "
        f"perturbation; {100 * result['padding_nominal']:.1f} % by manifest durations); "
        f"load average {load_end[0]:.2f} at end; {result['bench_seconds']:.0f} s",
        file=table,
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
