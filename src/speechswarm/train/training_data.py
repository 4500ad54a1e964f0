"""A run's training and dev utterances: read, checked, dealt to processes.

speechswarm validate data/synth/train.jsonl    # the same checks, as a report
"""

from __future__ import annotations

import os
from pathlib import Path

from speechswarm.config import Config
from speechswarm.data.manifest import Utterance, read_manifest
from speechswarm.data.sampler import BucketBatchSampler
from speechswarm.data.validate import validate_utterances
from speechswarm.errors import DataError
from speechswarm.train import ddp


def make_sampler(
    cfg: Config, durations: list[float], rank: int = 0, world_size: int = 1
) -> BucketBatchSampler:
    """The training sampler for process `rank` of `world_size` (DDP ranks, Hogwild workers)."""
    return BucketBatchSampler(
        durations,
        cfg.data.max_batch_seconds,
        max_batch_size=cfg.data.max_batch_size,
        sortagrad=cfg.data.sortagrad,
        seed=cfg.train.seed,  # the same in every process: one deal of one batch order
        # batches form on the perturbed lengths SpeechDataset(seed=cfg.train.seed) delivers
        speed_factors=cfg.data.speed_factors,
        rank=rank,
        world_size=world_size,
    )


def load_training_utterances(
    cfg,
    manifest: str,
    tokenizer,
    model,
    run_dir: Path,
    log,
    progress: bool,
    env: ddp.DistEnv | None = None,
) -> list[Utterance]:
    """Read a manifest, drop over-long utterances and (if configured) invalid ones, with a report.

    Under DDP rank 0 validates and writes the report; the others keep the utterances it kept
    (every rank must hold the same list for the sampler's deal to be one partition)."""
    utts = read_manifest(manifest)
    too_long = [u for u in utts if u.duration > cfg.data.max_duration]
    utts = [u for u in utts if u.duration <= cfg.data.max_duration]
    name = Path(manifest).stem
    if env is not None and env.is_distributed and not env.is_main:
        kept = set(ddp.broadcast_from_main(None))
        return [u for u in utts if u.id in kept]
    if cfg.data.validate:
        report = validate_utterances(
            utts,
            tokenizer,
            sample_rate=cfg.data.sample_rate,
            frames_per_second=1000.0 / cfg.features.hop_ms,
            time_reduction=model.time_reduction,
            workers=max(1, os.cpu_count() or 1),
            progress=progress,
        )
        report.write(run_dir / f"data_report_{name}.json")
        log.info(f"{name}: {report.summary()}")
        utts = report.ok
    if too_long:
        log.info(
            f"{name}: skipped {len(too_long)} utterances longer than data.max_duration={cfg.data.max_duration} s"
        )
    if env is not None and env.is_distributed:
        ddp.broadcast_from_main([u.id for u in utts])  # before raising: no rank left waiting
    if not utts:
        raise DataError(
            f"{manifest}: no usable utterances left (see {run_dir}/data_report_{name}.json)"
        )
    return utts
