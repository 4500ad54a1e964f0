"""The distributed tests' corpus and command lines: equal-length tones, worker overrides.

Every utterance of `tone_pairs` lasts exactly 0.7 s (two 0.2 s tones with 0.1 s gaps), so
batches carry no padding: one process with batch 2B and two with batch B then feed the
model the same frames, which the DDP equivalence test needs (BatchNorm statistics over
padded frames would differ).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from speechswarm.data.manifest import Utterance, write_manifest

SAMPLE_RATE = 16000
TEXTS = ("ab", "ba", "aa", "bb")

# As tests/conftest.py's QUIET and SMALL_MODEL (seeded, fp32, one thread, no augmentation,
# a ~30k-parameter DeepSpeech2), without dropout and with plain SGD so that equal gradients
# give equal weights; validation off (the tones are valid) to keep worker start-up short.
WORKER_OVERRIDES = (
    "data.num_workers=0",
    "data.speed_factors=[]",
    "data.validate=false",
    "augment.gain_db=null",
    "augment.noise_prob=0",
    "augment.freq_masks=0",
    "augment.time_masks=0",
    "augment.vtlp_alpha=null",
    "model.conv_channels=[4,4]",
    "model.rnn_hidden=32",
    "model.rnn_layers=1",
    "train.inter_ctc_layers=[]",  # one layer: no intermediate CTC
    "model.dropout=0",
    "train.num_threads=1",
    "train.precision=fp32",
    "train.device=cpu",
    "train.log_every=1",
    "train.keep_last=0",
    "optim.name=sgd",
    "optim.momentum=0.9",
    "optim.schedule=constant",
    "optim.lr=0.02",
    "optim.weight_decay=0",
)


def write_tone_pairs(out: Path, count: int) -> Path:
    """`count` utterances of two letters (a = 440 Hz, b = 660 Hz), 0.7 s each; the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.2 * SAMPLE_RATE)) / SAMPLE_RATE
    utts = []
    for i in range(count):
        text = TEXTS[i % len(TEXTS)]
        rng = np.random.default_rng(i)
        gaps = 0.01 * rng.standard_normal((3, int(0.1 * SAMPLE_RATE)))
        parts = [gaps[0]]
        for k, ch in enumerate(text):
            parts += [0.5 * np.sin(2 * math.pi * (440 if ch == "a" else 660) * t), gaps[k + 1]]
        wave = np.concatenate(parts).astype(np.float32)
        path = out / f"pair{i:02d}.flac"
        sf.write(path, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        utts.append(Utterance(f"pair{i:02d}", str(path), len(wave) / SAMPLE_RATE, text, "s"))
    write_manifest(out / "pairs.jsonl", utts)
    return out / "pairs.jsonl"


def overrides_for(manifest: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        *WORKER_OVERRIDES,
        f"data.train_manifest={manifest}",
        f"data.dev_manifest={manifest}",
        f"train.out_dir={out_dir}",
        *extra,
    ]


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m speechswarm ARGS` as a user types it, one OpenMP thread per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "speechswarm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
