"""Local training of many agents with one model: agents' states are swapped in and out.

    ws = Workspace(cfg, trainers={0: utts0, 1: utts1}, tests={"global": test_utts})
    state = ws.initial_state(trainer=0)
    state, stats = ws.train(0, state, round_index=0)   # local steps or epochs of agent 0
    wer, cer, n = ws.evaluate(state["model"], "global")

A `Workspace` holds one DeepSpeech2, one optimizer and one feature extractor; an agent is
plain data (`AgentState`: model and optimizer state dicts, scheduler step, sampler position),
so 50 agents cost 50 state dicts, not 50 modules. Randomness (dropout, augmentation) is
seeded from (seed, agent, round), so an agent's round gives the same weights whether it
runs here, in a worker process or after a resume. `Executor`s run a list of such calls
in this process or in a pool of worker processes, each with its own Workspace.

The per-batch path (features, augmentation, forward, CTC, backward, clip, step) is the
training loop's own: `train.loop.forward_loss` and `train.setup.clip_and_step`.
"""

from __future__ import annotations

import io
import logging
import math
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from speechswarm import fused_gru
from speechswarm.build import (
    autocast,
    build_augment,
    build_features,
    build_model,
    build_tokenizer,
    resolve_device,
    resolve_precision,
)
from speechswarm.config import Config
from speechswarm.data.dataset import SpeechDataset, collate
from speechswarm.data.manifest import Utterance
from speechswarm.data.sampler import BucketBatchSampler
from speechswarm.evaluate import eval_batches, evaluate
from speechswarm.train.loop import NormStatistics, forward_loss
from speechswarm.train.setup import clip_and_step, make_optimizer, make_scheduler

log = logging.getLogger("speechswarm.p2p")

AgentState = dict  # {"model", "optimizer", "scheduler", "epoch", "batch", "steps", "nonfinite"}


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, agent, round, purpose)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def snapshot(state: dict) -> dict:
    """A deep copy of a (nested) state dict's tensors: what a stored agent must own."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, list):
        return [snapshot(v) for v in state]
    if isinstance(state, tuple):
        return tuple(snapshot(v) for v in state)
    return state


def batchnorm_stat_names(model: torch.nn.Module) -> list[str]:
    """State-dict names of BatchNorm running statistics (mean, var, batch count)."""
    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                names.append(f"{prefix}.{buf}" if prefix else buf)
    return names


class Workspace:
    """One process's model, optimizer and data views; see the module docstring.

    trainers: trainer id (agent number, or a larger id for the central model) -> its
    training utterances. steps_per_round / epochs_per_round / total_steps: trainer id ->
    work per round and the schedule's length. tests: name -> utterances to score.
    """

    def __init__(
        self,
        cfg: Config,
        trainers: dict[int, Sequence[Utterance]],
        tests: dict[str, Sequence[Utterance]],
        work: dict[int, tuple[int, int]],
    ):
        if cfg.optim.accumulate != 1:
            raise ValueError("p2p runs do not support optim.accumulate > 1; set it to 1")
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.cfg = cfg
        self.seed = cfg.p2p.seed
        self.device = resolve_device(cfg.train.device)
        self.amp_dtype = resolve_precision(cfg.train.precision, self.device)
        self.tokenizer = build_tokenizer(cfg.tokenizer)
        self.sample_rate = cfg.data.sample_rate
        self.extractor = build_features(cfg.features, self.sample_rate).to(self.device)
        torch.manual_seed(self.seed)  # every agent starts from the same initial weights
        self.model = build_model(cfg.model, self.extractor.num_features, len(self.tokenizer))
        self.model.to(self.device)
        fused_gru.prepare(self.model, cfg.train.rnn_kernel, self.device, log)
        self.optimizer = make_optimizer(cfg, self.model)
        self.blank_optimizer = snapshot(self.optimizer.state_dict())
        self.ctc = torch.nn.CTCLoss(blank=0, reduction="sum", zero_infinity=True)
        self.wave_augment, self.spec_augment = build_augment(cfg.augment, self.sample_rate)
        self.trainers = {k: list(v) for k, v in trainers.items()}
        self.tests = {k: list(v) for k, v in tests.items()}
        self.work = dict(work)  # trainer -> (steps per round, epochs per round)
        self._data: dict[int, tuple[SpeechDataset, BucketBatchSampler]] = {}
        self.bn_names = batchnorm_stat_names(self.model)
        self.norm_stats = NormStatistics(self.model)

    # ------------------------------------------------------------------ agents' data

    def data(self, trainer: int) -> tuple[SpeechDataset, BucketBatchSampler]:
        if trainer not in self._data:
            utts = self.trainers[trainer]
            seed = derive_seed(self.seed, trainer, 0, 11) % 2**31
            dataset = SpeechDataset(
                utts,
                self.tokenizer,
                self.sample_rate,
                speed_factors=self.cfg.data.speed_factors,
                seed=seed,
            )
            sampler = BucketBatchSampler(
                [u.duration for u in utts],
                self.cfg.data.max_batch_seconds,
                max_batch_size=self.cfg.data.max_batch_size,
                sortagrad=self.cfg.data.sortagrad,
                seed=seed,
                speed_factors=self.cfg.data.speed_factors,  # batches on perturbed lengths
            )
            self._data[trainer] = (dataset, sampler)
        return self._data[trainer]

    def steps_per_round(self, trainer: int) -> int:
        """Optimizer steps one round gives this trainer (epoch 0's batch count for epochs)."""
        steps, epochs = self.work[trainer]
        if steps:
            return steps
        _, sampler = self.data(trainer)
        sampler.set_epoch(0)
        return epochs * len(sampler)

    def _scheduler(self, trainer: int):
        cfg = self.cfg
        per_round = self.steps_per_round(trainer)
        return make_scheduler(
            cfg, self.optimizer, max(2, per_round * cfg.p2p.rounds), max(1, per_round)
        )

    def initial_state(self, trainer: int) -> AgentState:
        self.optimizer.load_state_dict(self.blank_optimizer)
        scheduler = self._scheduler(trainer)
        return {
            "model": snapshot(self.model.state_dict()),
            "optimizer": snapshot(self.optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "epoch": 0,
            "batch": 0,
            "steps": 0,
            "nonfinite": 0,
        }

    # ------------------------------------------------------------------ training

    def train(self, trainer: int, state: AgentState, round_index: int) -> tuple[AgentState, dict]:
        """One round of local work for `trainer` from `state`; returns the new state and
        {"loss" (mean CTC per utterance), "steps", "audio_seconds", "seconds", "nonfinite"}."""
        start = time.perf_counter()
        steps_wanted, epochs_wanted = self.work[trainer]
        scheduler = self._scheduler(trainer)  # sets the LR; the optimizer state resets it
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.manual_seed(derive_seed(self.seed, trainer, round_index, 1))  # dropout
        generator = torch.Generator(device=self.device)
        generator.manual_seed(derive_seed(self.seed, trainer, round_index, 2))  # augmentation
        dataset, sampler = self.data(trainer)
        epoch, batch_index = state["epoch"], state["batch"]
        losses: list[float] = []
        steps = nonfinite = epochs_done = 0
        audio = 0.0
        self.model.train()
        while True:
            sampler.set_epoch(epoch, batch_index)
            dataset.set_epoch(epoch)
            stop = False
            for indices in sampler:
                batch_index += 1
                batch = collate([dataset[i] for i in indices])
                if batch.ids:
                    loss = self._step(batch, generator, scheduler)
                    if loss is None:
                        nonfinite += 1
                    else:
                        losses.append(loss)
                    steps += 1
                    audio += float(batch.wave_lens.sum()) / self.sample_rate
                if steps_wanted and steps >= steps_wanted:
                    stop = True
                    break
            if batch_index >= len(sampler.rank_batches()):
                epoch, batch_index = epoch + 1, 0
                epochs_done += 1
            if stop or (not steps_wanted and epochs_done >= epochs_wanted):
                break
        new_state = {
            "model": snapshot(self.model.state_dict()),
            "optimizer": snapshot(self.optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "batch": batch_index,
            "steps": state["steps"] + steps,
            "nonfinite": state["nonfinite"] + nonfinite,
        }
        stats = {
            "loss": sum(losses) / len(losses) if losses else math.nan,
            "steps": steps,
            "audio_seconds": audio,
            "seconds": time.perf_counter() - start,
            "nonfinite": nonfinite,
        }
        return new_state, stats

    def _step(self, batch, generator, scheduler) -> float | None:
        """The training loop's step: `forward_loss`, backward, `clip_and_step`; returns the
        loss, or None (and no step, and the BatchNorm statistics as they were) if it is not
        finite."""
        self.norm_stats.save()
        loss = forward_loss(
            self.model,
            self.extractor,
            self.ctc,
            batch,
            device=self.device,
            amp_dtype=self.amp_dtype,
            generator=generator,
            wave_augment=self.wave_augment,
            spec_augment=self.spec_augment,
        )
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.norm_stats.restore()
            return None
        loss.backward()
        clip_and_step(self.model, self.optimizer, scheduler, None, self.cfg.optim.grad_clip)
        return float(loss.detach())

    @torch.no_grad()
    def recompute_bn(self, trainer: int, model_state: dict, round_index: int) -> dict:
        """`model_state` with BatchNorm running statistics re-estimated on up to
        `p2p.bn_batches` of the trainer's batches (cumulative average, no augmentation):
        after averaging, averaged statistics no longer match the averaged weights."""
        self.model.load_state_dict(model_state)
        norms = [
            m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
        torch.manual_seed(derive_seed(self.seed, trainer, round_index, 3))
        dataset, sampler = self.data(trainer)
        rng = np.random.default_rng(derive_seed(self.seed, trainer, round_index, 4))
        batches = sampler.rank_batches()
        picks = rng.choice(
            len(batches), size=min(len(batches), self.cfg.p2p.bn_batches), replace=False
        )
        self.model.train()
        for k in sorted(picks):
            batch = collate([dataset[i] for i in batches[k]]).to(self.device)
            if not batch.ids:
                continue
            feats, feat_lens = self.extractor(batch.waves, batch.wave_lens)
            with autocast(self.device, self.amp_dtype):
                self.model(feats, feat_lens)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        return snapshot(self.model.state_dict())

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model_state: dict, test: str) -> tuple[float, float, int]:
        """(WER, CER, utterances) of `model_state` on test set `test`, greedy decoding."""
        utts = self.tests[test]
        if not utts:
            return math.nan, math.nan, 0
        self.model.load_state_dict(model_state)
        result = evaluate(
            self.model,
            self.extractor,
            eval_batches(
                utts,
                self.tokenizer,
                self.sample_rate,
                max_batch_seconds=self.cfg.data.max_batch_seconds,
                max_batch_size=self.cfg.data.max_batch_size,
                num_workers=0,
            ),
            self.tokenizer,
            device=self.device,
            amp_dtype=self.amp_dtype,
            references={u.id: u.text for u in utts},
        )
        return result.wer, result.cer, result.utterances


# ---------------------------------------------------------------------- executors


class InlineExecutor:
    """Runs Workspace calls one after another in this process."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace

    def map(self, method: str, calls: Sequence[tuple]) -> list:
        fn = getattr(self.workspace, method)
        return [fn(*args) for args in calls]

    def close(self) -> None:
        pass


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


_WORKER: Workspace | None = None


def _init_worker(cfg: Config, trainers, tests, work) -> None:
    global _WORKER
    torch.set_num_threads(cfg.train.num_threads or 1)
    _WORKER = Workspace(cfg, trainers, tests, work)


def _call_worker(method: str, payload: bytes) -> bytes:
    return _dumps(getattr(_WORKER, method)(*_loads(payload)))


class PoolExecutor:
    """Runs Workspace calls in `workers` spawned processes (one torch thread each unless
    train.num_threads says otherwise). Arguments and results travel as torch.save bytes,
    so results are bit-identical to InlineExecutor's."""

    def __init__(self, workers: int, cfg: Config, trainers, tests, work):
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(cfg, trainers, tests, work),
        )

    def map(self, method: str, calls: Sequence[tuple]) -> list:
        futures = [self.pool.submit(_call_worker, method, _dumps(tuple(a))) for a in calls]
        return [_loads(f.result()) for f in futures]

    def close(self) -> None:
        self.pool.shutdown()
