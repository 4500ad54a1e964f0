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
    """Read a manifest and drop, with a report, what cannot be trained on.

    Ids, durations (`data.max_duration`, NaN, negative) and transcripts are always checked;
    audio too with `data.validate` (otherwise a file that fails to load is skipped by the
    dataset, counted and listed in `skipped_<name>.jsonl`). Every dropped utterance is named,
    with its reason, in `<run_dir>/data_report_<name>.json`.

    Under DDP rank 0 validates and writes the report; the others keep the utterances it kept
    (every rank must hold the same list for the sampler's deal to be one partition)."""
    utts = read_manifest(manifest)
    name = Path(manifest).stem
    if env is not None and env.is_distributed and not env.is_main:
        return [utts[i] for i in ddp.broadcast_from_main(None)]
    report = validate_utterances(
        utts,
        tokenizer,
        sample_rate=cfg.data.sample_rate,
        frames_per_second=1000.0 / cfg.features.hop_ms,
        time_reduction=model.time_reduction,
        check_audio=cfg.data.validate,
        max_duration=cfg.data.max_duration,
        workers=max(1, os.cpu_count() or 1),
        progress=progress and cfg.data.validate,
    )
    report_path = run_dir / f"data_report_{name}.json"
    report.write(report_path)
    checked = "" if cfg.data.validate else " (audio not checked: data.validate=false)"
    log.info(f"{name}: {report.summary()}{checked} — report: {report_path.name}")
    if env is not None and env.is_distributed:  # positions, not ids: ids may repeat
        position = {id(u): i for i, u in enumerate(utts)}
        ddp.broadcast_from_main([position[id(u)] for u in report.ok])  # before raising
    utts = report.ok
    if not utts:
        raise DataError(f"{manifest}: no usable utterances left (see {report_path})")
    return utts
