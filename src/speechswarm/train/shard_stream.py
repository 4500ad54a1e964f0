"""Training from TAR shards (`data.shards`, written by `speechswarm shard`) instead of a manifest.

    speechswarm train --config tiny data.shards=data/shards

`shard_source()` builds what `train.assemble.build_run` needs for it: the shard batches (the
dataset whose epoch sets the shard order) and a `ShardStream`, which stands in the sampler's
place for the loop: epochs, resume point and a batch count.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from speechswarm.config import Config
from speechswarm.data.dataset import make_loader
from speechswarm.data.shards import ShardBatches, ShardDataset, read_index
from speechswarm.data.tokenizer import Tokenizer
from speechswarm.errors import DataError, InputNotFoundError
from speechswarm.train import ddp


class ShardStream:
    """Streaming from TAR shards, in the sampler's role for the loop: epochs, resume point,
    length. The batch count is an estimate (the stream batches what it reads); a resumed
    epoch skips the batches already consumed, which repeats the same order because shard
    shuffling is seeded by (seed, epoch)."""

    def __init__(self, loader, estimated_batches: int) -> None:
        self.loader, self.estimated_batches = loader, estimated_batches
        self.epoch, self.start_batch = 0, 0
        # Under DDP, the synchronizer's agree(): ranks' streams hold different batch counts,
        # and a rank that stopped early would leave the others waiting in all-reduce.
        self.agree = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch  # shard order: Run.dataset_set_epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def __len__(self) -> int:
        return max(1, self.estimated_batches - self.start_batch)

    def __iter__(self):
        batches = itertools.islice(iter(self.loader), self.start_batch, None)
        return batches if self.agree is None else self._while_all_have_data(batches)

    def _while_all_have_data(self, batches):
        """Yield until any rank runs out: ranks stay in step (a few batches of the others'
        shards skip this epoch; equal-sized shards keep that to the last partial batch)."""
        for batch in batches:
            if self.agree("") != "":
                return
            yield batch
        self.agree("epochs")


def shard_source(cfg: Config, tokenizer: Tokenizer, log, env: ddp.DistEnv) -> tuple:
    """(dataset, stream, hours, utterances) for data.shards (written by `speechswarm shard`)."""
    if cfg.features.normalize == "global":
        raise DataError(
            "features.normalize=global needs a manifest; with data.shards use 'utterance'"
        )
    index_path = Path(cfg.data.shards) / "shards.json"
    if not index_path.is_file():
        raise InputNotFoundError(
            f"data.shards: {index_path} not found; write shards with `speechswarm shard`"
        )
    index = read_index(cfg.data.shards)
    samples = ShardDataset(
        cfg.data.shards,
        tokenizer,
        cfg.data.sample_rate,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.train.seed,
    )
    batches = ShardBatches(
        samples, cfg.data.max_batch_seconds, max_batch_size=cfg.data.max_batch_size
    )
    loader = make_loader(
        batches, None, num_workers=cfg.data.num_workers, prefetch_factor=cfg.data.prefetch_factor
    )
    # Padded batches hold a little less than max_batch_seconds of audio: ~5 % slack.
    estimate = max(
        math.ceil(index["total_duration"] * 1.05 / cfg.data.max_batch_seconds),
        math.ceil(index["num_utts"] / cfg.data.max_batch_size),
    )
    estimate = max(1, estimate // env.world_size)
    log.info(
        f"streaming {len(samples.shards)} shards from {cfg.data.shards} (~{estimate} batches/epoch)"
    )
    return (
        batches,
        ShardStream(loader, estimate),
        index["total_duration"] / 3600,
        index["num_utts"],
    )
