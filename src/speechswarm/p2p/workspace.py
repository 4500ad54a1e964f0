"""Many agents' training with one model in one process: agents are swapped in and out of a run.

    ws = Workspace(cfg, trainers={0: utts0, 1: utts1}, tests={"global": test_utts}, work=...)
    state = ws.initial_state(trainer=0)
    state, stats = ws.train(0, state, round_index=0)   # local steps or epochs of agent 0
    wer, cer, n = ws.evaluate(state["model"], "global")

A `Workspace` holds one `train.run.Run` (model, optimizer, features, augmentation); an agent
is plain data (`AgentState`: model, optimizer and schedule state dicts, its RNG streams and
its `TrainState`), so 50 agents cost 50 state dicts, not 50 modules. A round of an agent
loads its state into the run and trains it with the training loop's own `run_steps` and
`train_step`, exactly as `speechswarm train` does (the same non-finite rules, the same
schedule), with a stop rule that ends the round. Agent k's randomness comes from
`train.seed`: its batch order and speed perturbation from `train.seed + k`, its dropout from
`seed_everything(train.seed, k)` (agent 0 and the central model: the stream that built the
model, as in `speechswarm train`), its augmentation from rank k's generator seed; it carries
its RNG state from round to round: an agent's round gives the same weights whether
it runs here, in a worker process or after a resume, and a one-agent `central` simulation
trains exactly as `speechswarm train` on the same data. `Executor`s run a list of such calls
in this process or in a pool of worker processes, each with its own Workspace.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from speechswarm.build import autocast, build_augment, resolve_device, resolve_precision
from speechswarm.checkpoint import unsafe_pickle
from speechswarm.config import Config
from speechswarm.data.dataset import SpeechDataset, collate, make_loader
from speechswarm.data.manifest import Utterance
from speechswarm.data.sampler import BucketBatchSampler
from speechswarm.errors import ConfigError
from speechswarm.train.loop import TrainState, run_steps
from speechswarm.train.model_stack import build_model_stack
from speechswarm.train.optim import make_optimizer, make_scheduler
from speechswarm.train.rng import capture_rng_state, seed_everything
from speechswarm.train.run import RANK_SEED_STRIDE, Run
from speechswarm.train.step import TrainingDiverged

log = logging.getLogger("speechswarm.p2p")

AgentState = dict  # {"model", "optimizer", "scheduler", "rng", "generator", "train_state"}
CENTRAL = 1_000_000  # trainer id of the central model (agents are 0..n-1)


def trainer_rank(trainer: int) -> int:
    """The `speechswarm train` rank whose random draws trainer `trainer` makes: agent k is
    rank k; the central model (alone in its simulation) is rank 0."""
    return 0 if trainer == CENTRAL else trainer


def agent_steps(state: AgentState) -> int:
    """Optimizer steps an agent has taken so far."""
    return int(state["train_state"]["step"])


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
            raise ConfigError("p2p runs do not support optim.accumulate > 1; set it to 1")
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        # An agent's round evaluates and saves nothing: the simulation scores and checkpoints.
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, eval_every=0, checkpoint_every=0)
        )
        self.cfg = cfg
        device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)  # every agent starts from the same initial weights
        tokenizer, extractor, model, _ = build_model_stack(cfg, device, log)
        self.rank0_rng = capture_rng_state()  # where `speechswarm train` rank 0 goes on
        optimizer = make_optimizer(cfg, model)
        self.blank_optimizer = snapshot(optimizer.state_dict())
        augment = build_augment(cfg.augment, cfg.data.sample_rate)
        self.base = Run(
            cfg=cfg,
            dir=Path(cfg.train.out_dir),
            log=log,
            device=device,
            amp_dtype=resolve_precision(cfg.train.precision, device),
            tokenizer=tokenizer,
            extractor=extractor,
            model=model,
            optimizer=optimizer,
            scheduler=None,  # per agent (its length depends on the agent's data)
            scaler=None,
            dataset=None,  # per agent: see `agent_run`
            sampler=None,
            loader=None,
            dev_utts=[],
            generator=torch.Generator(device=device),
            wave_augment=augment.wave,
            freq_warp=augment.warp,
            spec_augment=augment.spec,
            checkpoints=None,
            train_hours=0.0,
        )
        self.trainers = {k: list(v) for k, v in trainers.items()}
        self.tests = {k: list(v) for k, v in tests.items()}
        self.work = dict(work)  # trainer -> (steps per round, epochs per round)
        self._runs: dict[int, Run] = {}
        self.bn_names = batchnorm_stat_names(model)

    # ------------------------------------------------------------------ agents' runs

    def agent_run(self, trainer: int) -> Run:
        """The run with `trainer`'s data and schedule (model and optimizer are shared)."""
        if trainer not in self._runs:
            cfg, utts = self.cfg, self.trainers[trainer]
            seed = cfg.train.seed + trainer_rank(trainer)
            dataset = SpeechDataset(
                utts,
                self.base.tokenizer,
                cfg.data.sample_rate,
                speed_factors=cfg.data.speed_factors,
                seed=seed,
            )
            sampler = BucketBatchSampler(
                [u.duration for u in utts],
                cfg.data.max_batch_seconds,
                max_batch_size=cfg.data.max_batch_size,
                sortagrad=cfg.data.sortagrad,
                seed=seed,
                speed_factors=cfg.data.speed_factors,  # batches on perturbed lengths
            )
            loader = make_loader(dataset, sampler, num_workers=0)
            self._runs[trainer] = dataclasses.replace(
                self.base, dataset=dataset, sampler=sampler, loader=loader
            )
            self._runs[trainer].scheduler = self._schedule(trainer, len(sampler))
        return self._runs[trainer]

    def _schedule(self, trainer: int, batches_per_epoch: int):
        """A fresh schedule for `trainer` over p2p.rounds rounds; building it sets the
        optimizer's LR to the schedule's first value."""
        per_round = self._steps_per_round(trainer, batches_per_epoch)
        return make_scheduler(
            self.cfg,
            self.base.optimizer,
            max(2, per_round * self.cfg.p2p.rounds),
            max(1, batches_per_epoch),
        )

    def _steps_per_round(self, trainer: int, batches_per_epoch: int) -> int:
        steps, epochs = self.work[trainer]
        return steps or epochs * batches_per_epoch

    def steps_per_round(self, trainer: int) -> int:
        """Optimizer steps one round gives this trainer (epoch 0's batch count for epochs)."""
        return self._steps_per_round(trainer, len(self.agent_run(trainer).sampler))

    def initial_state(self, trainer: int) -> AgentState:
        run = self.agent_run(trainer)
        rank = trainer_rank(trainer)
        if rank == 0:
            rng = self.rank0_rng
        else:
            seed_everything(self.cfg.train.seed, rank)
            rng = capture_rng_state()
        run.generator.manual_seed(self.cfg.train.seed + 1 + RANK_SEED_STRIDE * rank)
        run.optimizer.load_state_dict(self.blank_optimizer)
        run.scheduler = self._schedule(trainer, len(run.sampler))  # the first step's LR
        return {
            "model": snapshot(run.model.state_dict()),
            "optimizer": snapshot(run.optimizer.state_dict()),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng,
            "generator": run.generator.get_state(),
            "train_state": TrainState().to_dict(),
        }

    # ------------------------------------------------------------------ training

    def train(
        self,
        trainer: int,
        state: AgentState,
        round_index: int,
        bn_only: bool = False,
        steps: int = 0,
    ) -> tuple[AgentState, dict]:
        """One round of local work for `trainer` from `state`; returns the new state and
        {"loss" (mean CTC per utterance), "steps", "audio_seconds", "seconds", "nonfinite",
        "diverged" (`train.max_nonfinite` non-finite batches in a row ended the round)}.
        `bn_only`: only the BatchNorm layers' parameters train (P2P-BN's second stage).
        `round_index` is for the record: an agent's randomness travels in its state.
        `steps`: this many optimizer steps instead of the trainer's work per round."""
        start = time.perf_counter()
        steps_wanted, epochs_wanted = (steps, 0) if steps else self.work[trainer]
        run = self.agent_run(trainer)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.generator.set_state(state["generator"])
        ts = TrainState.from_dict(state["train_state"])
        before = dataclasses.replace(ts)

        def round_end(s: TrainState) -> str:
            if steps_wanted:
                return "round_end" if s.step - before.step >= steps_wanted else ""
            return "round_end" if s.epoch - before.epoch >= epochs_wanted else ""

        diverged = False
        frozen = self.freeze_all_but_batchnorm() if bn_only else []
        try:
            run_steps(run, ts, round_end, rng_to_restore=state["rng"])
        except TrainingDiverged as e:  # this agent is broken (e.g. NaN weights received):
            diverged = True  # it keeps its state and the others train on
            log.warning(f"trainer {trainer}, round {round_index}: {e}; its round ends here")
        finally:
            for param in frozen:
                param.requires_grad_(True)
        new_state = {
            "model": snapshot(run.model.state_dict()),
            "optimizer": snapshot(run.optimizer.state_dict()),
            "scheduler": run.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "generator": run.generator.get_state(),
            "train_state": ts.to_dict(),
        }
        losses = ts.loss_count - before.loss_count
        stats = {
            "loss": (ts.loss_sum - before.loss_sum) / losses if losses else math.nan,
            "steps": ts.step - before.step,
            "audio_seconds": ts.audio_seconds - before.audio_seconds,
            "seconds": time.perf_counter() - start,
            "nonfinite": ts.nonfinite_total - before.nonfinite_total,
            "diverged": diverged,
        }
        return new_state, stats

    def finetune(self, trainer: int, state: AgentState, round_index: int, steps: int) -> dict:
        """The model of `state` after `steps` more local steps on the trainer's own data: a
        personalised copy for scoring; `state` itself (and so the agent's run) is unchanged.
        The optimizer state is copied first: `Optimizer.load_state_dict` keeps the given
        tensors when dtype and device match, and the steps would update them in place."""
        state = {**state, "optimizer": copy.deepcopy(state["optimizer"])}
        return self.train(trainer, state, round_index, steps=steps)[0]["model"]

    def freeze_all_but_batchnorm(self) -> list[torch.nn.Parameter]:
        """Stop gradients to every trainable parameter outside BatchNorm layers; returns them
        (the caller thaws them). Frozen parameters take no optimizer step, decay included."""
        norm = {
            id(p)
            for m in self.base.model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for p in m.parameters()
        }
        frozen = [p for p in self.base.model.parameters() if p.requires_grad and id(p) not in norm]
        for param in frozen:
            param.requires_grad_(False)
        return frozen

    @torch.no_grad()
    def recompute_bn(self, trainer: int, model_state: dict, round_index: int) -> dict:
        """`model_state` with BatchNorm running statistics re-estimated on up to
        `p2p.bn_batches` of the trainer's batches (cumulative average, no augmentation):
        after averaging, averaged statistics no longer match the averaged weights."""
        run = self.agent_run(trainer)
        model = run.model
        model.load_state_dict(model_state)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches below
        seed = self.cfg.p2p.seed
        torch.manual_seed(derive_seed(seed, trainer, round_index, 3))
        rng = np.random.default_rng(derive_seed(seed, trainer, round_index, 4))
        run.sampler.set_epoch(round_index)  # the same batches in any process, after a resume
        batches = run.sampler.rank_batches()
        picks = rng.choice(
            len(batches), size=min(len(batches), self.cfg.p2p.bn_batches), replace=False
        )
        model.train()
        for k in sorted(picks):
            batch = collate([run.dataset[i] for i in batches[k]]).to(run.device)
            if not batch.ids:
                continue
            feats, feat_lens = run.extractor(batch.waves, batch.wave_lens)
            with autocast(run.device, run.amp_dtype):
                model(feats, feat_lens)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        return snapshot(model.state_dict())

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model_state: dict, test: str) -> tuple[float, float, int]:
        """(WER, CER, utterances) of `model_state` on test set `test`, greedy decoding."""
        utts = self.tests[test]
        if not utts:
            return math.nan, math.nan, 0
        self.base.model.load_state_dict(model_state)
        result = self.base.score(utts)
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
    """`_dumps`' bytes back, weights-only: a payload holding pickled code is refused, not run."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message runs to 8 lines
        what = unsafe_pickle(e) or "pickle instructions weights-only loading refuses"
        raise RuntimeError(f"p2p worker payload refused: it holds {what}") from e


_WORKER: Workspace | None = None


def _init_worker(cfg: Config, trainers, tests, work, parent: int) -> None:
    global _WORKER
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(cfg.train.num_threads or 1)
    _WORKER = Workspace(cfg, trainers, tests, work)


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """End this worker once the simulation that started it is gone. A simulation killed by
    a signal never shuts its pool down, and its idle workers (each holding a model and the
    agents' data) were left behind: the pool's queue does not tell them."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(0)


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
            initargs=(cfg, trainers, tests, work, os.getpid()),
        )

    def map(self, method: str, calls: Sequence[tuple]) -> list:
        futures = [self.pool.submit(_call_worker, method, _dumps(tuple(a))) for a in calls]
        return [_loads(f.result()) for f in futures]

    def close(self) -> None:
        self.pool.shutdown()
