"""A training run's objects, and what a checkpoint of it holds.

    run = build_run(cfg)                  # train.assemble: data, model, optimizer, outputs
    run.load_state(load_checkpoint(path)) # resume
    ckpt = make_checkpoint_state(run, state)

`Run` is what the loop (`train.loop`) and the step (`train.step.train_step`) read: the model
and its optimizer, schedule and data, the synchronizer of the mode it runs in, and the run
folder's outputs. A peer-to-peer agent is its own model, optimizer, schedule and data swapped
into one `Run` (`p2p.workspace`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

import speechswarm
from speechswarm.checkpoint import CheckpointManager
from speechswarm.config import Config, to_dict
from speechswarm.data.dataset import SpeechDataset
from speechswarm.data.manifest import Utterance
from speechswarm.data.sampler import BucketBatchSampler
from speechswarm.data.tokenizer import Tokenizer
from speechswarm.errors import ConfigError
from speechswarm.evaluate import eval_batches, evaluate
from speechswarm.features import FeatureExtractor
from speechswarm.model import DeepSpeech2, complete_settings
from speechswarm.plots import plot_run
from speechswarm.report import MetricsLogger, write_summary
from speechswarm.train import ddp
from speechswarm.train.rng import capture_rng_state, seed_everything
from speechswarm.train.shard_stream import ShardStream
from speechswarm.train.step import NormStatistics, clip_and_step
from speechswarm.train.sync import LocalSync, Synchronizer

CHECKPOINT_FORMAT = 1
RANK_SEED_STRIDE = 1_000_003  # seed offset between ranks' augmentation generators


@dataclass
class Run:
    """See the module docstring; built by `train.assemble.build_run`."""

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
    freq_warp: object | None  # VTLP factors (augment.FrequencyWarp)
    spec_augment: object | None
    checkpoints: CheckpointManager | None  # None: a run that writes no checkpoints (P2P agents)
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
    accumulated: int = 0  # finite micro-batches since the last optimizer step
    # perf_counter() at which the run's wall time (TrainState.wall_seconds, across resumes)
    # was 0; set by the loop's stop rule (train.loop.RunLimits). None: not timed.
    wall_origin: float | None = None
    norm_stats: NormStatistics = field(init=False)  # put back when a batch is skipped

    def __post_init__(self) -> None:
        self.norm_stats = NormStatistics(self.model)

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
        return self._eval_batches(self.dev_utts, num_workers=min(self.cfg.data.num_workers, 2))

    def _eval_batches(self, utts: list[Utterance], num_workers: int):
        data = self.cfg.data
        return eval_batches(
            utts,
            self.tokenizer,
            data.sample_rate,
            max_batch_seconds=data.max_batch_seconds,
            max_batch_size=data.max_batch_size,
            num_workers=num_workers,
        )

    def score(self, utts: list[Utterance]):
        """`evaluate.evaluate` of the current model on `utts` (greedy, in this process)."""
        batches = self._eval_batches(utts, num_workers=0)
        return evaluate(
            self.model,
            self.extractor,
            batches,
            self.tokenizer,
            device=self.device,
            amp_dtype=self.amp_dtype,
            references={u.id: u.text for u in utts},
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
            "oom_skipped_batches": state.oom_skipped,
            "best_checkpoint": str(best) if best else None,
            "plots": [str(p) for p in plots],
        }
        write_summary(self.dir, summary)
        self.log.info(f"run finished ({stop_reason}); summary in {self.dir / 'summary.md'}")


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
    theirs = dict(ckpt, model_settings=complete_settings(ckpt.get("model_settings") or {}))
    for key, ours in (
        ("model_settings", run.model.settings()),
        ("features", run.extractor.feature_settings()),
        ("tokenizer", run.tokenizer.to_dict()),
    ):
        if theirs.get(key) != ours:
            raise ConfigError(
                f"cannot resume: the checkpoint's {key} differ from this config's; resume with the "
                "config stored in the run folder (config.yaml), or use train.init_from to fine-tune"
            )
