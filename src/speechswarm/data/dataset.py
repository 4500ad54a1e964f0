"""Manifest utterances to padded batches: `SpeechDataset`, `collate`, `Batch`, `make_loader`.

    factors = (0.9, 1.0, 1.1)
    dataset = SpeechDataset(utts, tokenizer, 16000, speed_factors=factors, seed=seed)
    sampler = BucketBatchSampler([u.duration for u in utts], 160.0, speed_factors=factors,
                                 seed=seed)   # batches on the perturbed durations: same draw
    loader = make_loader(dataset, sampler)
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch); dataset.set_epoch(epoch)
        for batch in loader: batch = batch.to(device)   # waves (N, S), tokens (N, L)

A file that fails to load, or holds over 0.1 s less audio than the manifest's duration (a
stale manifest: its transcript may not match), is logged (path and reason), listed in `skip_log` (a JSONL file, one
line per failed load: id, audio, reason, detail, epoch) and becomes `None`; `collate` drops it
and counts it in `Batch.skipped`, so one bad file costs one utterance, not the run. A batch
whose files all failed has no ids (N = 0): the loop skips it. A transcript the tokenizer
cannot encode is a data bug and raises (naming the utterance); `validate_utterances` finds
all of them up front.

Audio is read from `offset` for the manifest's `duration` seconds (rounded to samples), so a
manifest whose durations are rounded to milliseconds loses at most half a millisecond.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from speechswarm.data.audio import AudioError, load_audio, speed_perturb
from speechswarm.data.manifest import Utterance
from speechswarm.data.sampler import epoch_speed_factors
from speechswarm.data.validate import DURATION_TOLERANCE
from speechswarm.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One loaded utterance: wave (S,) float32 at the dataset rate, tokens (L,) int64."""

    id: str
    wave: torch.Tensor
    tokens: torch.Tensor


@dataclass
class Batch:
    """A padded batch. waves (N, S) float32 zero-padded; wave_lens (N,) int64 samples;
    tokens (N, L) int64 padded with 0 (the blank); token_lens (N,) int64;
    skipped: utterances of this batch dropped because their audio failed to load."""

    ids: list[str]
    waves: torch.Tensor
    wave_lens: torch.Tensor
    tokens: torch.Tensor
    token_lens: torch.Tensor
    skipped: int = 0

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """A copy on `device`; non_blocking overlaps the copy with compute from pinned memory."""
        return Batch(
            self.ids,
            self.waves.to(device, non_blocking=non_blocking),
            self.wave_lens.to(device, non_blocking=non_blocking),
            self.tokens.to(device, non_blocking=non_blocking),
            self.token_lens.to(device, non_blocking=non_blocking),
            self.skipped,
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy; DataLoader(pin_memory=True) calls this on custom batch types."""
        return Batch(
            self.ids,
            self.waves.pin_memory(),
            self.wave_lens.pin_memory(),
            self.tokens.pin_memory(),
            self.token_lens.pin_memory(),
            self.skipped,
        )


def collate(samples: Sequence[Sample | None]) -> Batch:
    """Zero-pad samples into a Batch; `None` entries (failed loads) are counted as skipped."""
    good = [s for s in samples if s is not None]
    n = len(good)
    wave_lens = torch.tensor([len(s.wave) for s in good], dtype=torch.int64)  # (N,) samples
    token_lens = torch.tensor([len(s.tokens) for s in good], dtype=torch.int64)  # (N,)
    waves = torch.zeros(n, int(wave_lens.max()) if n else 0, dtype=torch.float32)  # (N, S)
    tokens = torch.zeros(n, int(token_lens.max()) if n else 0, dtype=torch.int64)  # (N, L)
    for i, s in enumerate(good):
        waves[i, : len(s.wave)] = s.wave
        tokens[i, : len(s.tokens)] = s.tokens
    return Batch([s.id for s in good], waves, wave_lens, tokens, token_lens, len(samples) - n)


class SpeechDataset(Dataset):
    """Map-style dataset over manifest utterances; `ds[i] -> Sample | None`.

    speed_factors: e.g. (0.9, 1.0, 1.1); utterance i in epoch e gets factor i of
    `sampler.epoch_speed_factors(len(utts), speed_factors, seed, e)`, so results do not
    depend on which loader worker loads it, and a `BucketBatchSampler` given the same factors
    and seed batches on exactly the durations this dataset delivers. The wave is resampled
    by `data.audio.speed_perturb` (soxr; tempo and pitch change together).
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        tokenizer,
        sample_rate: int = 16000,
        speed_factors: Sequence[float] = (),
        seed: int = 0,
        skip_log: str | os.PathLike | None = None,
    ):
        if any(f <= 0 for f in speed_factors):
            raise ConfigError(f"speed_factors must be > 0, got {tuple(speed_factors)}")
        self.utts = list(utts)
        self.tokenizer = tokenizer
        self.sample_rate = int(sample_rate)
        self.speed_factors = tuple(float(f) for f in speed_factors)
        self.seed = int(seed)
        self.skip_log = None if skip_log is None else Path(skip_log)
        # In shared memory so persistent DataLoader workers (copies of this object made
        # at the first epoch) still see set_epoch() calls made in the main process.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._factors: tuple[int, np.ndarray] | None = None  # (epoch, factors), per process

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self.utts)

    def speed_factor(self, index: int) -> float:
        """The speed factor of utterance `index` in the current epoch (1.0 without factors)."""
        if not self.speed_factors:
            return 1.0
        epoch = self.epoch
        if self._factors is None or self._factors[0] != epoch:
            draw = epoch_speed_factors(len(self.utts), self.speed_factors, self.seed, epoch)
            self._factors = (epoch, draw)
        return float(self._factors[1][index])

    def __getitem__(self, index: int) -> Sample | None:
        utt = self.utts[index]
        try:
            wave = load_audio(utt.audio, self.sample_rate, utt.offset, utt.duration)
        except AudioError as e:
            log.warning("skipping utterance %s: %s", utt.id, e)
            self._record_skip(utt, e.reason, e.detail)
            return None
        seconds = len(wave) / self.sample_rate
        if seconds < utt.duration - DURATION_TOLERANCE:  # stale manifest or wrong file
            detail = f"manifest says {utt.duration:.2f} s, the file holds {seconds:.2f} s"
            log.warning("skipping utterance %s: duration_mismatch (%s)", utt.id, detail)
            self._record_skip(utt, "duration_mismatch", detail)
            return None
        wave = speed_perturb(wave, self.speed_factor(index), self.sample_rate)
        try:
            ids = self.tokenizer.encode(utt.text)
        except ValueError as e:  # a transcript the vocabulary cannot express: a data bug
            raise DataError(
                f"utterance {utt.id}: {e}; find all such utterances with `speechswarm validate`"
            ) from e
        return Sample(utt.id, torch.from_numpy(wave), torch.tensor(ids, dtype=torch.int64))

    def _record_skip(self, utt: Utterance, reason: str, detail: str) -> None:
        """One line in `skip_log`; loader workers append to the same file (O_APPEND keeps
        each line whole)."""
        if self.skip_log is None:
            return
        record = {"id": utt.id, "audio": utt.audio, "reason": reason, "detail": detail,
                  "epoch": self.epoch}  # fmt: skip
        self.skip_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.skip_log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def make_loader(
    dataset: Dataset,
    batch_sampler,
    num_workers: int = 2,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader of `Batch`es over `dataset` in `batch_sampler`'s order.

    batch_sampler=None: `dataset` is iterable and yields finished Batches (shards.py).
    persistent_workers (default: when num_workers > 0) keeps workers alive across epochs:
    no restart cost per epoch. Each worker runs torch with one thread (`_worker_init`):
    decoding and resampling are single-file work, and N workers x all-core torch pools
    would oversubscribe the cores the training step needs. pin_memory: set when training
    on CUDA so `batch.to(device)` can copy asynchronously.
    """
    workers = max(0, int(num_workers))
    if persistent_workers is None:
        persistent_workers = workers > 0
    iterable = batch_sampler is None
    return DataLoader(
        dataset,
        batch_size=None if iterable else 1,
        batch_sampler=batch_sampler,
        collate_fn=_pass_through if iterable else collate,
        num_workers=workers,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and workers > 0,
        worker_init_fn=_worker_init,
        generator=torch.Generator().manual_seed(seed),
    )


def _pass_through(batch: Batch) -> Batch:
    return batch


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32  # distinct per worker, derived from the loader seed
    np.random.seed(seed)
    random.seed(seed)
