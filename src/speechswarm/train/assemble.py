"""Build a training run from a Config: data, model, optimizer, outputs, distribution.

    run = build_run(cfg)                       # one process
    run = build_run(cfg, env=ddp.dist_env())   # a torchrun worker, after ddp.init_distributed

Under DDP it gives each rank its share of the data, its seed offset, the DDP-wrapped model
and the synchronizer; only rank 0 writes logs and reports.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from speechswarm.build import build_augment, resolve_device, resolve_precision
from speechswarm.checkpoint import CheckpointManager
from speechswarm.config import Config
from speechswarm.data.dataset import SpeechDataset, make_loader
from speechswarm.data.manifest import spread_subset, total_hours
from speechswarm.train import ddp
from speechswarm.train.model_stack import build_model_stack, with_global_stats
from speechswarm.train.optim import make_optimizer, make_scheduler, per_rank_accumulate
from speechswarm.train.rng import seed_everything
from speechswarm.train.run import RANK_SEED_STRIDE, Run
from speechswarm.train.shard_stream import shard_source
from speechswarm.train.sync import LocalSync
from speechswarm.train.syncbn import convert_sync_batchnorm
from speechswarm.train.training_data import load_training_utterances, make_sampler


def build_run(cfg: Config, *, progress: bool = True, env: ddp.DistEnv | None = None) -> Run:
    """Build a run. `env`: this process' place in a torchrun job (None: one process); under
    DDP the process group must already be initialised (`ddp.init_distributed`)."""
    env = env or ddp.DistEnv()
    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _logger(run_dir, env)
    _set_threads(cfg.train.num_threads, env)
    seed_everything(cfg.train.seed, env.rank)
    device = ddp.worker_device(cfg.train.device, env) if env.is_distributed else None
    device = device or resolve_device(cfg.train.device)
    if env.is_distributed and not torch.distributed.is_initialized():
        raise RuntimeError("build_run under DDP: call ddp.init_distributed(env, device) first")
    if cfg.train.sync_batchnorm and not env.is_distributed:
        log.info("train.sync_batchnorm has no effect in a single process")
    sync = ddp.DDPSync(env, device) if env.is_distributed else LocalSync()
    amp_dtype = resolve_precision(cfg.train.precision, device)
    tokenizer, extractor, model, rnn_kernel = build_model_stack(cfg, device, log)
    if cfg.train.sync_batchnorm and env.is_distributed:
        convert_sync_batchnorm(model, device)
    accumulate = per_rank_accumulate(cfg.optim.accumulate, env.world_size)

    dev_utts = load_training_utterances(
        cfg, cfg.data.dev_manifest, tokenizer, model, run_dir, log, progress, env
    )
    dev_utts = spread_subset(dev_utts, cfg.train.dev_max_utterances)
    if cfg.data.shards:
        dataset, sampler, hours, num_utts = shard_source(cfg, tokenizer, log, env)
        if env.is_distributed:
            sampler.agree = sync.agree  # every rank stops its epoch when the first runs dry
        loader = sampler
    else:
        train_utts = load_training_utterances(
            cfg, cfg.data.train_manifest, tokenizer, model, run_dir, log, progress, env
        )
        if cfg.features.normalize == "global" and extractor.mean is None:
            extractor = with_global_stats(extractor, train_utts, cfg, device, log)
        dataset = SpeechDataset(
            train_utts,
            tokenizer,
            cfg.data.sample_rate,
            speed_factors=cfg.data.speed_factors,
            seed=cfg.train.seed,
            skip_log=run_dir / f"skipped_{Path(cfg.data.train_manifest).stem}.jsonl",
        )
        sampler = make_sampler(cfg, [u.duration for u in train_utts], env.rank, env.world_size)
        loader = make_loader(
            dataset,
            sampler,
            num_workers=cfg.data.num_workers,
            prefetch_factor=cfg.data.prefetch_factor,
            pin_memory=device.type == "cuda",
        )
        hours, num_utts = total_hours(train_utts), len(train_utts)
    optimizer = make_optimizer(cfg, model)
    scheduler = schedule_for(cfg, optimizer, len(sampler), accumulate)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.train.seed + 1 + RANK_SEED_STRIDE * env.rank)
    augment = build_augment(cfg.augment, cfg.data.sample_rate)
    forward_model = ddp.wrap_model(model, device) if env.is_distributed else model
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep_last=cfg.train.keep_last)
    log.info(
        f"training on {hours:.2f} h ({num_utts:,} utts), dev {len(dev_utts):,} utts; "
        f"model {model.num_params() / 1e6:.2f} M params; device {device}, "
        f"precision {amp_dtype or torch.float32}, {rnn_kernel} RNN kernel; "
        f"{len(sampler)} batches/epoch" + (" per rank" if env.is_distributed else "")
    )
    if env.is_distributed:
        log.info(
            f"DDP: {env.world_size} processes ({ddp.choose_backend(device)}), "
            f"{accumulate} micro-batch(es) per rank and step, "
            f"sync_batchnorm={cfg.train.sync_batchnorm}"
        )
    return Run(
        cfg=cfg,
        dir=run_dir,
        log=log,
        device=device,
        amp_dtype=amp_dtype,
        tokenizer=tokenizer,
        extractor=extractor,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        dataset=dataset,
        sampler=sampler,
        loader=loader,
        dev_utts=dev_utts,
        generator=generator,
        wave_augment=augment.wave,
        freq_warp=augment.warp,
        spec_augment=augment.spec,
        checkpoints=checkpoints,
        train_hours=hours,
        last_save_step=checkpoints.last_saved_step,
        env=env,
        sync=sync,
        forward_model=forward_model,
        accumulate=accumulate,
    )


def schedule_for(cfg: Config, optimizer, batches_per_epoch: int, accumulate: int = 1):
    """The run's LR schedule: over `train.epochs` epochs of `batches_per_epoch`, cut at
    `train.max_steps`; a time-budgeted run anneals within its budget even where steps are
    slower than planned."""
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / accumulate))
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    total_steps = max(total_steps, 2)  # one-cycle needs a rise and a fall
    return make_scheduler(
        cfg, optimizer, total_steps, steps_per_epoch, time_budget_s=cfg.train.time_budget_min * 60
    )


def _set_threads(num_threads: int, env: ddp.DistEnv) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)
    elif env.is_distributed:  # N processes x all-core pools would oversubscribe the node
        per_process = max(1, (os.cpu_count() or 1) // max(1, env.local_world_size))
        torch.set_num_threads(per_process)


def close_log(log: logging.Logger) -> None:
    """Close and detach a run's log handlers (its train.log), so a run built inside a process
    that goes on (a benchmark) lets its folder be deleted and a later run of the same folder
    gets fresh handlers."""
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)


def _logger(run_dir: Path, env: ddp.DistEnv) -> logging.Logger:
    """The run's logger: train.log and the console on the main process; under DDP the other
    ranks print only warnings and errors, prefixed with their rank."""
    if not env.is_main:
        log = logging.getLogger(f"speechswarm.run.{run_dir}.rank{env.rank}")
        log.setLevel(logging.WARNING)
        log.propagate = False
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {env.rank}] %(message)s"))
            log.addHandler(handler)
        return log
    log = logging.getLogger(f"speechswarm.run.{run_dir}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.StreamHandler(), logging.FileHandler(run_dir / "train.log")):
            handler.setFormatter(fmt)
            log.addHandler(handler)
    return log
