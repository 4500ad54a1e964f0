"""Shared fixtures for the training, CLI and inference tests.

    .venv/bin/python -m pytest tests/train/test_loop.py tests/test_cli.py tests/test_inference.py -q

`synth_corpus`: the built-in TTS corpus at its smallest (hours=0.02: 25 train, 40 dev, 40 test
utterances, ~6 s to synthesise on 2 cores), plus `few.jsonl`, its 6 shortest train utterances
(11 s of audio). `tone_corpus`: 4 FLACs of tones computed with numpy, for the golden loss curve
(its numbers must not move when TTS engines or the corpus plan change). `make_config` builds a
`tiny` preset config cut down to a ~30k-parameter model that steps in tens of milliseconds.
`overfit_run`: the tiny model trained to memorise `few.jsonl`; its checkpoint feeds the CLI
and inference tests, which need a model whose transcripts are words, not blanks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechswarm.config import Config, load_config
from speechswarm.data.manifest import Utterance, read_manifest, write_manifest

# The tiny preset with everything random or slow switched off: no augmentation, no speed
# perturbation, main-process loading, fp32 (bf16 autocast is "auto" on CPUs that have it, and
# its rounding would make exact comparisons meaningless), and one thread: the test machine's 2
# cores are shared, and an oversubscribed OpenMP pool runs ~10x slower than one thread.
QUIET = (
    "data.num_workers=0",
    "data.speed_factors=[]",
    "augment.gain_db=null",
    "augment.noise_prob=0",
    "augment.vtlp_alpha=null",
    "augment.freq_masks=0",
    "augment.time_masks=0",
    "train.num_threads=1",
    "train.precision=fp32",
    "train.device=cpu",
    "train.log_every=1",
    "train.keep_last=2",
)
# A small DeepSpeech2 (~30k parameters): same layer types as tiny, a step takes ~30 ms.
SMALL_MODEL = (
    "model.conv_channels=[4,4]",
    "model.rnn_hidden=32",
    "model.rnn_layers=1",
    "train.inter_ctc_layers=[]",
)
# Big enough to memorise 6 utterances in 60 steps (~0.7 M parameters). Pinned to the
# spectrogram front-end and GRU the decoding and LM tests were calibrated on (beam search must
# read a memorised model like greedy), so they do not move when the demo preset's features or
# RNN type do.
OVERFIT_MODEL = (
    "model.rnn_type=gru",
    "model.rnn_layers=2",
    "model.rnn_hidden=128",
    "features.kind=spectrogram",
    "model.conv_kernels=[[41,11],[21,11]]",
    "model.conv_strides=[[2,2],[4,1]]",
    "model.conv_channels=[32,16]",
    "train.inter_ctc_layers=[]",  # the loss it prints is the final layer's alone
)
OVERFIT_STEPS = 60


@pytest.fixture
def one_torch_thread():
    """Inference in this process on one thread (see QUIET), then torch's count as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Corpus:
    dir: Path
    train: Path
    dev: Path
    test: Path
    few: Path  # the 6 shortest train utterances


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Corpus:
    from speechswarm.data.prepare import synthesize_and_prepare

    out = tmp_path_factory.mktemp("corpus")
    manifests = synthesize_and_prepare(out, hours=0.02, workers=2, progress=False)
    shortest = sorted(read_manifest(manifests["train"]), key=lambda u: u.duration)[:6]
    write_manifest(out / "few.jsonl", shortest)
    return Corpus(out, manifests["train"], manifests["dev"], manifests["test"], out / "few.jsonl")


TONE_TEXTS = ("a", "ab", "ba", "abba")


def write_tone_corpus(out: Path, sample_rate: int = 16000) -> Path:
    """Deterministic audio: letter `a` is a 440 Hz tone, `b` a 660 Hz tone (0.2 s each,
    with 0.1 s of seeded noise between), written as 16-bit FLAC; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    utts = []
    for i, text in enumerate(TONE_TEXTS):
        rng = np.random.default_rng(i)
        t = np.arange(int(0.2 * sample_rate)) / sample_rate
        gap = 0.01 * rng.standard_normal(int(0.1 * sample_rate))
        parts = [gap]
        for ch in text:
            parts += [0.5 * np.sin(2 * math.pi * (440 if ch == "a" else 660) * t), gap]
        wave = np.concatenate(parts).astype(np.float32)
        path = out / f"tone{i}.flac"
        sf.write(path, wave, sample_rate, format="FLAC", subtype="PCM_16")
        utts.append(Utterance(f"tone{i}", str(path), len(wave) / sample_rate, text, f"s{i % 2}"))
    write_manifest(out / "tones.jsonl", utts)
    return out / "tones.jsonl"


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory) -> Path:
    return write_tone_corpus(tmp_path_factory.mktemp("tones"))


def build_tiny_config(
    out_dir: Path, manifest: Path, *overrides: str, dev: Path | None = None
) -> Config:
    """The tiny preset with QUIET and SMALL_MODEL, training and evaluating on `manifest` (dev:
    `dev` or the same), writing to `out_dir`. Later overrides win."""
    return load_config(
        "tiny",
        [
            *QUIET,
            *SMALL_MODEL,
            f"data.train_manifest={manifest}",
            f"data.dev_manifest={dev or manifest}",
            f"train.out_dir={out_dir}",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def tiny_overrides() -> tuple[str, ...]:
    """QUIET + SMALL_MODEL as overrides, for code that takes them rather than a Config."""
    return (*QUIET, *SMALL_MODEL)


@pytest.fixture(scope="session")
def tiny_config():
    """`build_tiny_config(out_dir, manifest, *overrides, dev=None)`, for module-scoped fixtures."""
    return build_tiny_config


@pytest.fixture
def make_config(tmp_path):
    """make_config(*overrides, manifest=..., dev=None, name="run"): `build_tiny_config` writing
    to tmp_path/name."""

    def make(*overrides: str, manifest: Path, dev: Path | None = None, name: str = "run") -> Config:
        return build_tiny_config(tmp_path / name, manifest, *overrides, dev=dev)

    return make


@dataclass(frozen=True)
class OverfitRun:
    result: object  # speechswarm.train.loop.TrainResult
    config: Config
    checkpoint: Path  # last.pt: the model after the final step
    manifest: Path  # the utterances it memorised
    steps: int


@pytest.fixture(scope="session")
def overfit_run(synth_corpus, tmp_path_factory) -> OverfitRun:
    """The tiny model (2 GRU layers of 128) trained OVERFIT_STEPS steps on `few.jsonl`, one
    batch per step, Adam at a constant 3e-3: it should learn those 6 utterances by heart."""
    from speechswarm.train.loop import train

    out = tmp_path_factory.mktemp("overfit")
    cfg = load_config(
        "tiny",
        [
            *QUIET,
            *OVERFIT_MODEL,
            f"data.train_manifest={synth_corpus.few}",
            f"data.dev_manifest={synth_corpus.few}",
            "data.max_batch_size=8",
            f"train.out_dir={out}",
            "train.epochs=1000",
            f"train.max_steps={OVERFIT_STEPS}",
            "optim.name=adam",
            "optim.schedule=constant",
            "optim.lr=3e-3",
            "optim.weight_decay=0",
        ],
    )
    threads = torch.get_num_threads()
    try:
        result = train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)  # build_run sets it for the whole process
    return OverfitRun(result, cfg, out / "checkpoints" / "last.pt", synth_corpus.few, OVERFIT_STEPS)
