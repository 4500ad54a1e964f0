"""Everything a training run holds, built once from a Config: data, model, optimizer, outputs.

The loop in `train/loop.py` reads these objects; this module owns how they are made, saved
into a checkpoint and restored from one. Under DDP (`setup_run(cfg, env=dist_env())` in a
torchrun worker) it also gives each rank its share of the data, its seed offset, the
DDP-wrapped model and the synchronizer; only rank 0 writes logs and reports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import speechswarm
from speechswarm import fused_gru
from speechswarm.build import (
    build_augment,
    build_features,
    build_model,
    build_tokenizer,
    resolve_device,
    resolve_precision,
)
from speechswarm.checkpoint import CheckpointManager, load_checkpoint
from speechswarm.config import Config, to_dict
from speechswarm.data.dataset import SpeechDataset, make_loader
from speechswarm.data.manifest import Utterance, read_manifest, spread_subset, total_hours
from speechswarm.data.sampler import BucketBatchSampler
from speechswarm.data.tokenizer import Tokenizer
from speechswarm.data.validate import validate_utterances
from speechswarm.evaluate import eval_batches
from speechswarm.features import FeatureExtractor, compute_global_stats
from speechswarm.model import DeepSpeech2
from speechswarm.report import MetricsLogger, plot_run, write_summary
from speechswarm.train import ddp
from speechswarm.train.optim import build_optimizer, build_scheduler
from speechswarm.train.rng import capture_rng_state, seed_everything
from speechswarm.train.shard_stream import ShardStream, shard_source
from speechswarm.train.sync import LocalSync, Synchronizer
from speechswarm.train.syncbn import convert_sync_batchnorm

CHECKPOINT_FORMAT = 1


@dataclass
class Run:
    cfg: Config
    dir: Path
    log: logging.Logger
    device: torch.device
    amp_dtype: torch.dtype | None
    tokenizer: Tokenizer
    extractor: FeatureExtractor
    model: DeepSpeech2
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    dataset: SpeechDataset
    sampler: BucketBatchSampler | ShardStream
    loader: torch.utils.data.DataLoader
    dev_utts: list[Utterance]
    generator: torch.Generator  # augmentation randomness, saved in checkpoints
    wave_augment: object | None
    spec_augment: object | None
    checkpoints: CheckpointManager
    train_hours: float
    metrics: MetricsLogger | None = None  # opened by the loop once it knows the resume step
    ctc: torch.nn.CTCLoss = field(
        default_factory=lambda: torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)
    )
    dev_history: list[dict] = field(default_factory=list)
    env: ddp.DistEnv = field(default_factory=ddp.DistEnv)
    sync: Synchronizer = field(default_factory=LocalSync)
    # What the loop calls for the forward pass: the DistributedDataParallel wrapper under DDP,
    # else `model` itself. Checkpoints always hold the unwrapped `model`.
    forward_model: torch.nn.Module | None = None
    accumulate: int = 1  # micro-batches per optimizer step on this process
    last_eval_step: int | None = None  # step of the latest dev evaluation (every rank knows it)
    last_save_step: int | None = None  # step of the latest checkpoint (every rank knows it)
    checkpoint_extra: dict = field(default_factory=dict)  # more keys for checkpoints (Hogwild)

    @property
    def sample_rate(self) -> int:
        return self.cfg.data.sample_rate

    @property
    def dev_speakers(self) -> dict[str, str]:
        return {u.id: u.speaker for u in self.dev_utts}

    @property
    def dev_references(self) -> dict[str, str]:
        return {u.id: u.text for u in self.dev_utts}

    def dataset_set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def dev_loader(self):
        data = self.cfg.data
        return eval_batches(
            self.dev_utts,
            self.tokenizer,
            data.sample_rate,
            max_batch_seconds=data.max_batch_seconds,
            max_batch_size=data.max_batch_size,
            num_workers=min(data.num_workers, 2),
        )

    def grad_sync(self, enabled: bool):
        """Context for one micro-batch's forward+backward: under DDP, `enabled=False` keeps the
        gradients local (accumulation micro-batches before the last one); no-op otherwise."""
        if enabled or self.forward_model is None or self.forward_model is self.model:
            return contextlib.nullcontext()
        return self.forward_model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def optimizer_step(self) -> float:
        """Clip, step, schedule, zero; returns the gradient norm before clipping."""
        return clip_and_step(
            self.model, self.optimizer, self.scheduler, self.scaler, self.cfg.optim.grad_clip
        )

    def load_state(self, ckpt: dict) -> dict:
        """Restore weights, optimizer, schedule, augmentation generator and dev history;
        returns the global RNG state to restore once the loader has started (this rank's
        own under DDP when the checkpoint has one for it)."""
        check_compatible(ckpt, self)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.dev_history[:] = ckpt.get("dev_history", [])
        ranks = ckpt.get("rank_rng") or []
        saved_world = int(ckpt.get("world_size", 1))
        if self.env.world_size == 1 or len(ranks) == self.env.world_size:
            mine = ranks[self.env.rank] if ranks else ckpt
            self.generator.set_state(mine["generator"])
            return mine["rng"]
        # Another world size: the data deal differs anyway; give each rank fresh draws.
        self.log.warning(
            f"checkpoint was saved by {saved_world} process(es), resuming with "
            f"{self.env.world_size}: random draws (augmentation, dropout) restart per rank"
        )
        step = int(ckpt["train_state"]["step"])
        seed_everything(self.cfg.train.seed + step, self.env.rank)
        self.generator.manual_seed(
            self.cfg.train.seed + 1 + step + RANK_SEED_STRIDE * self.env.rank
        )
        return capture_rng_state()

    def finish(
        self, state, stop_reason: str, dev_history: list[dict], audio_seconds: float | None = None
    ) -> None:
        """Close the metrics, draw the plots, write summary.md/json. `audio_seconds`: the
        training audio of every process (default: this one's, `state.audio_seconds`)."""
        audio_seconds = state.audio_seconds if audio_seconds is None else audio_seconds
        self.metrics.close()
        plots = plot_run(self.metrics.read(), self.dir / "plots")
        best = self.checkpoints.best_path()
        summary = {
            "stop_reason": stop_reason,
            "train_hours": round(self.train_hours, 3),
            "steps": state.step,
            "epochs": state.epoch,
            "train_minutes": round(state.train_seconds / 60, 2),
            "audio_seconds": round(audio_seconds, 1),
            "audio_seconds_per_second": round(audio_seconds / max(state.train_seconds, 1e-9), 1),
            "best_dev_wer": min((r["dev_wer"] for r in dev_history), default=None),
            "best_dev_cer": min((r["dev_cer"] for r in dev_history), default=None),
            "skipped_utterances": state.skipped_utterances,
            "nonfinite_losses": state.nonfinite_total,
            "best_checkpoint": str(best) if best else None,
            "plots": [str(p) for p in plots],
        }
        write_summary(self.dir, summary)
        self.log.info(f"run finished ({stop_reason}); summary in {self.dir / 'summary.md'}")


def clip_and_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float,
) -> float:
    """After backward: unscale (fp16), clip the trainable parameters' gradient norm to
    `grad_clip` (0: no clipping), step the optimizer and the schedule, zero the gradients.
    Returns the gradient norm before clipping. Every trainer's step (loop, p2p, bench).

    A non-finite gradient norm (a finite loss whose backward overflowed) skips the update, as
    GradScaler does for fp16: one such update turns every weight into NaN. A bf16 `make demo`
    once ended that way at its peak LR (finite losses, then only NaN ones); which update did
    it was not recorded, and a rerun did not repeat it. The schedule still advances; callers
    see the non-finite norm and count the skip (with fp16, GradScaler's overflow skips too)."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf))
    if scaler is not None:
        scaler.step(optimizer)  # skips the update itself when the gradients are not finite
        scaler.update()
    elif math.isfinite(grad_norm):
        optimizer.step()
    if scheduler is not None:
        with warnings.catch_warnings():  # torch warns when a skipped first update precedes it
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


RANK_SEED_STRIDE = 1_000_003  # seed offset between ranks' augmentation generators


def setup_run(cfg: Config, *, progress: bool = True, env: ddp.DistEnv | None = None) -> Run:
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
        raise RuntimeError("setup_run under DDP: call ddp.init_distributed(env, device) first")
    if cfg.train.sync_batchnorm and not env.is_distributed:
        log.info("train.sync_batchnorm has no effect in a single process")
    sync = ddp.DDPSync(env, device) if env.is_distributed else LocalSync()
    amp_dtype = resolve_precision(cfg.train.precision, device)
    tokenizer = build_tokenizer(cfg.tokenizer)
    extractor = build_features(cfg.features, cfg.data.sample_rate).to(device)
    model = build_model(cfg.model, extractor.num_features, len(tokenizer))
    if cfg.train.init_from:
        init_from_checkpoint(model, cfg.train.init_from, tokenizer, log)
    _freeze(model, cfg.train.freeze, log)
    model.to(device)
    rnn_kernel = fused_gru.prepare(model, cfg.train.rnn_kernel, device, log)
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
            extractor = _with_global_stats(extractor, train_utts, cfg, device, log)
        dataset = SpeechDataset(
            train_utts,
            tokenizer,
            cfg.data.sample_rate,
            speed_factors=cfg.data.speed_factors,
            seed=cfg.train.seed,
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
    steps_per_epoch = max(1, math.ceil(len(sampler) / accumulate))
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    total_steps = max(total_steps, 2)  # one-cycle needs a rise and a fall
    # A time-budgeted run anneals within its budget even where steps are slower than planned.
    scheduler = make_scheduler(
        cfg, optimizer, total_steps, steps_per_epoch, time_budget_s=cfg.train.time_budget_min * 60
    )
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.train.seed + 1 + RANK_SEED_STRIDE * env.rank)
    wave_augment, spec_augment = build_augment(cfg.augment, cfg.data.sample_rate)
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
        wave_augment=wave_augment,
        spec_augment=spec_augment,
        checkpoints=checkpoints,
        train_hours=hours,
        last_save_step=checkpoints.last_saved_step,
        env=env,
        sync=sync,
        forward_model=forward_model,
        accumulate=accumulate,
    )


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


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer `cfg.optim` describes, over `model`'s trainable parameters."""
    o = cfg.optim
    return build_optimizer(
        model.named_parameters(),
        name=o.name,
        lr=o.lr,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        nesterov=o.nesterov,
        betas=o.betas,
    )


def make_scheduler(
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    time_budget_s: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule `cfg.optim` describes, for a run of `total_steps`; with
    `time_budget_s`, an ending schedule also ends when the budget does (`build_scheduler`)."""
    o = cfg.optim
    return build_scheduler(
        optimizer,
        time_budget_s=time_budget_s,
        name=o.schedule,
        total_steps=total_steps,
        warmup_steps=o.warmup_steps,
        steps_per_epoch=steps_per_epoch,
        anneal_factor=o.anneal_factor,
        min_factor=o.min_factor,
        pct_start=o.pct_start,
    )


def per_rank_accumulate(accumulate: int, world_size: int) -> int:
    """Micro-batches each rank accumulates per optimizer step, so that `optim.accumulate`
    means the same global batch at any world size (as nanoGPT does): accumulate=8 is 8
    micro-batches on one process, 4 on each of 2 ranks. accumulate=1 with W ranks cannot be
    divided: each rank steps after every batch (a global batch W times larger)."""
    if accumulate < 1:
        raise ValueError(f"optim.accumulate must be >= 1, got {accumulate}")
    if accumulate == 1:
        return 1
    if accumulate % world_size:
        raise ValueError(
            f"optim.accumulate={accumulate} is not divisible by the {world_size} processes: "
            f"use a multiple of {world_size} (it counts micro-batches across all of them)"
        )
    return accumulate // world_size


def _set_threads(num_threads: int, env: ddp.DistEnv) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)
    elif env.is_distributed:  # N processes x all-core pools would oversubscribe the node
        per_process = max(1, (os.cpu_count() or 1) // max(1, env.local_world_size))
        torch.set_num_threads(per_process)


def make_checkpoint_state(run: Run, state) -> dict | None:
    """Everything needed to resume training or to rebuild the model for inference.

    Every process calls it (under DDP it gathers each rank's RNG states); the main process
    gets the dict, the others None."""
    per_rank = run.sync.gather({"rng": capture_rng_state(), "generator": run.generator.get_state()})
    if not run.sync.is_main:
        return None
    return {
        "format": CHECKPOINT_FORMAT,
        "speechswarm_version": speechswarm.__version__,
        "model": run.model.state_dict(),
        "model_settings": run.model.settings(),
        "features": run.extractor.feature_settings(),
        "tokenizer": run.tokenizer.to_dict(),
        "config": to_dict(run.cfg),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else {},
        "sampler": run.sampler.state_dict(),
        "generator": per_rank[0]["generator"],
        "rng": per_rank[0]["rng"],
        "rank_rng": per_rank if run.env.is_distributed else [],
        "world_size": run.env.world_size,
        "train_state": state.to_dict(),
        "dev_history": list(run.dev_history),
        **run.checkpoint_extra,
    }


def check_compatible(ckpt: dict, run: Run) -> None:
    """Refuse to resume a checkpoint made with another model, vocabulary or features."""
    for key, ours in (
        ("model_settings", run.model.settings()),
        ("features", run.extractor.feature_settings()),
        ("tokenizer", run.tokenizer.to_dict()),
    ):
        if ckpt.get(key) != ours:
            raise ValueError(
                f"cannot resume: the checkpoint's {key} differ from this config's; resume with the "
                "config stored in the run folder (config.yaml), or use train.init_from to fine-tune"
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
        raise ValueError(
            f"{manifest}: no usable utterances left (see {run_dir}/data_report_{name}.json)"
        )
    return utts


def init_from_checkpoint(model: DeepSpeech2, path: str, tokenizer: Tokenizer, log) -> None:
    """Transfer learning: copy matching weights; re-initialise the head if the vocabulary differs."""
    ckpt = load_checkpoint(path)
    source = ckpt["model"]
    target = model.state_dict()
    same_vocab = ckpt.get("tokenizer") == tokenizer.to_dict()
    copied, skipped = [], []
    for name, tensor in source.items():
        if (
            name in target
            and target[name].shape == tensor.shape
            and (same_vocab or not _is_head(name, model))
        ):
            target[name] = tensor
            copied.append(name)
        else:
            skipped.append(name)
    model.load_state_dict(target)
    log.info(
        f"init from {path}: copied {len(copied)} tensors, re-initialised {len(skipped)}"
        + ("" if same_vocab else " (vocabulary differs: new output layer)")
    )


def _is_head(name: str, model: DeepSpeech2) -> bool:
    # DeepSpeech2's output layer is `classifier`; a model may name its head with `head_prefix`.
    return name.startswith(getattr(model, "head_prefix", "classifier."))


def _freeze(model: torch.nn.Module, prefixes: tuple[str, ...], log) -> None:
    if not prefixes:
        return
    frozen = 0
    for name, param in model.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            param.requires_grad_(False)
            frozen += param.numel()
    if not frozen:
        names = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ValueError(
            f"train.freeze={list(prefixes)} matches no parameter; top-level modules: {names}"
        )
    log.info(f"froze {frozen:,} parameters under {list(prefixes)}")


def _with_global_stats(extractor, utts, cfg, device, log):
    batches = eval_batches(utts[:500], build_tokenizer(cfg.tokenizer), cfg.data.sample_rate)
    mean, std = compute_global_stats(
        extractor, ((b.waves.to(device), b.wave_lens.to(device)) for b in batches)
    )
    settings = dict(extractor.feature_settings(), mean=mean.tolist(), std=std.tolist())
    log.info("computed global feature mean/std on up to 500 training utterances")
    return FeatureExtractor.from_settings(settings).to(device)


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
