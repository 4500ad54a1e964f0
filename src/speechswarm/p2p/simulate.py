"""Peer-to-peer training simulated on one machine: rounds of local training and exchange.

    speechswarm p2p --config p2p-tiny p2p.runs=[gossip/ring,central,local]

A `Simulation` holds every agent's state and runs one round of an algorithm
(`p2p.runner.simulate_run` drives it round by round, scores, logs and checkpoints):
- `gossip`: synchronous pull-gossip (the P2P seed): every agent trains one round of local
  work, then replaces its weights by the data-size-weighted average of its own and its
  in-neighbours' (`mixing.pull_matrix`);
- `groups`: synchronous gossip in disjoint groups, as networked peers with `--topology`
  average: every agent trains, then each round's plan (`plan_groups`, the draw the peers
  make) cuts the graph into groups of up to `p2p.group_size` neighbours, and each group
  averages by data size (2: a random matching, pairwise);
- `async`: pairwise gossip: `agents` times per round a random agent trains, then it and a
  random neighbour both take the 50/50 average;
- `p2pbn`: the seed's asynchronous P2P-BN: an activated agent trains and pushes its model to
  its out-neighbours, which take the 50/50 average; an agent that stops improving trains
  only its BatchNorm layers;
- `fedavg`: a virtual server sends the global model, agents train, the server averages;
- `central`: one model on the union of the agents' training data, one agent's or all
  agents' steps per round (`p2p.central_compute`);
- `local`: agents train alone (no messages).
Agents are scored before mixing (their personalised models) and after (`evaluate`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from speechswarm.checkpoint import load_checkpoint, save_checkpoint
from speechswarm.config import Config, to_dict
from speechswarm.data.manifest import Utterance, spread_subset
from speechswarm.errors import UsageError
from speechswarm.p2p import mixing
from speechswarm.p2p.net.neighbour_groups import plan_groups
from speechswarm.p2p.partition import Agent
from speechswarm.p2p.sync import Counters, GossipNode, Mailbox, MixSettings
from speechswarm.p2p.topology import topology_for_round, topology_options
from speechswarm.p2p.workspace import (
    CENTRAL,
    InlineExecutor,
    PoolExecutor,
    Workspace,
    derive_seed,
    snapshot,
)
from speechswarm.train.training_data import make_sampler

log = logging.getLogger("speechswarm.p2p")
# 2: agents carry their RNG streams and TrainState (they train through train.loop.run_steps)
CHECKPOINT_FORMAT = 2


class Simulation:
    """The state of one run: agents' states, counters, round; one method per algorithm."""

    def __init__(self, cfg: Config, algorithm: str, topology: str, agents: list[Agent], run_dir):
        self.cfg, self.p = cfg, cfg.p2p
        self.algorithm, self.topology = algorithm, topology
        self.agents = agents
        self.n = len(agents)
        self.run_dir = Path(run_dir)
        self.sizes = [float(len(a.train)) if self.p.weights == "data_size" else 1.0 for a in agents]
        self.states: dict[int, dict] = {}
        # each agent's model after its local training, before mixing (scored as "premix")
        self.premix: dict[int, dict] = {}
        self.tuned: dict[int, dict] = {}  # p2p.finetune_steps: personalised copies, for scoring
        self.bn_stage: dict[int, dict] = {}  # p2pbn: {"best", "since", "bn_only"} per agent
        self.global_model: dict = {}
        # the round-0 weights of each planted faulty agent: what fault `stale` replays
        self.first_models: dict[int, dict] = {}
        self.outer_momentum: dict[int, dict] = {}  # outer optimizer's buffers (-1: the server)
        # p2p.error_feedback: what compression left out of each sender's changes (-1: server)
        self.residuals: dict[int, dict] = {}
        self.counters = {k: Counters() for k in range(self.n)}
        self.round = 0  # rounds completed
        self.wall_time = 0.0
        self.workspace: Workspace | None = None
        self.executor = None

    @property
    def trainers(self) -> list[int]:
        return [CENTRAL] if self.algorithm == "central" else list(range(self.n))

    # ------------------------------------------------------------------ set-up

    def open(self, global_test: list[Utterance]) -> None:
        p = self.p
        trainers = {k: a.train for k, a in enumerate(self.agents)}
        work = {k: (p.local_steps, p.local_epochs) for k in range(self.n)}
        if self.algorithm == "central":  # one model on the union of the agents' data
            trainers = {CENTRAL: tuple(u for a in self.agents for u in a.train)}
            work = {CENTRAL: self.central_work()}
        tests = {f"agent{k}": list(a.test) for k, a in enumerate(self.agents)}
        for k, a in enumerate(self.agents):  # a spread sample of each agent's own train split
            tests[f"agent{k}_train"] = (
                spread_subset(list(a.train), p.train_score_max) if p.train_score_max else []
            )
        for k, a in enumerate(self.agents):
            tests[f"agent{k}_dev"] = list(a.dev)
        tests["global"] = list(global_test[: p.global_test_max or None])
        self.workspace = Workspace(self.cfg, trainers, tests, work)
        if p.workers:
            self.executor = PoolExecutor(p.workers, self.cfg, trainers, tests, work)
        else:
            self.executor = InlineExecutor(self.workspace)
        for k in self.trainers:
            self.states[k] = self.workspace.initial_state(k)
        self.global_model = snapshot(self.states[self.trainers[0]]["model"])
        self.first_models = {
            k: snapshot(self.states[k]["model"]) for k in p.faulty_agents if k in self.states
        }

    def central_work(self) -> tuple[int, int]:
        """(steps, epochs) per round of the central model: the agents' combined work
        (p2p.central_compute=total) or one agent's (per_agent: the mean agent's batches)."""
        p = self.p
        if p.central_compute == "total":
            return p.local_steps * self.n, p.local_epochs
        if p.local_steps:
            return p.local_steps, 0
        batches = []
        for a in self.agents:
            sampler = make_sampler(self.cfg, [u.duration for u in a.train])
            sampler.set_epoch(0)
            batches.append(len(sampler))
        return max(1, round(sum(batches) / len(batches) * p.local_epochs)), 0

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()

    def settings(self, agent: int) -> MixSettings:
        p = self.p
        keep = tuple(self.workspace.bn_names) if p.bn_stats == "local" else ()
        return MixSettings(
            aggregation=p.aggregation,
            trim_fraction=p.trim_fraction,
            compression=p.compression,
            stats=tuple(self.workspace.bn_names),
            validate=p.validate,
            max_norm_ratio=p.max_norm_ratio,
            keep_local=keep,
            fault=p.fault if agent in p.faulty_agents else "",
            fault_scale=p.fault_scale,
            faulty=p.faulty_agents,
        )

    def nodes(self, transport) -> dict[int, GossipNode]:
        return {
            k: GossipNode(
                k,
                transport,
                self.settings(k),
                self.counters,
                torch.Generator().manual_seed(derive_seed(self.p.seed, k, self.round, 6)),
                earlier=self.first_models.get(k),
            )
            for k in range(self.n)
        }

    def adjacency(self) -> np.ndarray:
        p = self.p
        return topology_for_round(
            self.topology,
            self.n,
            self.round,
            redraw_every=p.redraw_every,
            seed=p.seed,
            **topology_options(p),
        )

    # ------------------------------------------------------------------ one round

    def train(self, trainers: list[int], bn_only: bool = False) -> dict[int, dict]:
        """Local work of `trainers` (in parallel with a pool); returns their stats."""
        calls = [(k, self.states[k], self.round, bn_only) for k in trainers]
        results = self.executor.map("train", calls)
        stats = {}
        for k, (state, st) in zip(trainers, results, strict=True):
            self.states[k] = state
            self.premix[k] = state["model"]  # mixing replaces states[k]["model"], not this
            stats[k] = st
        return stats

    def recompute_bn(self, agents: list[int]) -> None:
        if self.p.bn_stats != "recompute" or not agents:
            return
        calls = [(k, self.states[k]["model"], self.round) for k in agents]
        for k, model in zip(agents, self.executor.map("recompute_bn", calls), strict=True):
            self.states[k]["model"] = model

    @property
    def outer(self) -> bool:
        return self.p.outer_lr != 1.0 or self.p.outer_momentum != 0.0

    def outer_step(self, key: int, anchor: dict, mixed: dict) -> dict:
        """`mixed` moved by the outer optimizer from `anchor` (the model this round began
        with); a no-op without p2p.outer_*."""
        if not self.outer:
            return mixed
        p = self.p
        new, self.outer_momentum[key] = mixing.outer_step(
            anchor, mixed, self.outer_momentum.get(key), p.outer_lr, p.outer_momentum,
            nesterov=p.outer_nesterov, skip=self.workspace.bn_names,
        )  # fmt: skip
        return new

    def round_gossip(self) -> dict[int, dict]:
        anchors = {k: self.states[k]["model"] for k in self.trainers}
        stats = self.train(self.trainers)
        adj = self.adjacency()
        nodes = self.nodes(Mailbox())
        for k, node in nodes.items():  # k is pulled by every j with adj[j, k]
            node.publish(self.states[k]["model"], np.flatnonzero(adj[:, k]).tolist(), self.round)
        for k, node in nodes.items():
            # Row k of mixing.pull_matrix(adj, sizes), unnormalised: weight ~ data size. The
            # node renormalises over the peers it accepted (a rejected one drops out).
            weights = {j: self.sizes[j] for j in range(self.n) if j == k or adj[k, j]}
            mixed = node.mix(self.states[k]["model"], weights, self.round)
            self.states[k]["model"] = self.outer_step(k, anchors[k], mixed)
        self.recompute_bn(list(range(self.n)))
        return stats

    def round_groups(self) -> dict[int, dict]:
        """Every agent trains; then each group of the round's plan (disjoint, up to
        p2p.group_size graph neighbours: `plan_groups` with the arguments networked peers
        use for this round) averages by data size. An agent in no group keeps its model."""
        anchors = {k: self.states[k]["model"] for k in self.trainers}
        stats = self.train(self.trainers)
        groups = plan_groups(self.adjacency(), self.p.group_size, self.p.seed, self.round)
        nodes = self.nodes(Mailbox())
        for group in groups:
            for k in group:
                nodes[k].publish(self.states[k]["model"], [j for j in group if j != k], self.round)
        for group in groups:
            weights = {j: self.sizes[j] for j in group}
            for k in group:
                mixed = nodes[k].mix(self.states[k]["model"], weights, self.round)
                self.states[k]["model"] = self.outer_step(k, anchors[k], mixed)
        self.recompute_bn(sorted(k for group in groups for k in group))
        return stats

    def round_async(self) -> dict[int, dict]:
        adj = self.adjacency()
        rng = np.random.default_rng(derive_seed(self.p.seed, self.round, 5))
        nodes = self.nodes(Mailbox())
        stats: dict[int, list[dict]] = {}
        for _ in range(self.n):
            i = int(rng.integers(self.n))
            stats.setdefault(i, []).append(self.train([i])[i])
            peers = np.flatnonzero(adj[i] | adj[:, i])
            if not len(peers):
                continue
            j = int(rng.choice(peers))
            own_i, own_j = self.states[i]["model"], self.states[j]["model"]
            nodes[i].publish(own_i, [j], self.round)
            nodes[j].publish(own_j, [i], self.round)
            half = {i: 0.5, j: 0.5}
            self.states[i]["model"] = nodes[i].mix(own_i, half, self.round)
            self.states[j]["model"] = nodes[j].mix(own_j, half, self.round)
            self.recompute_bn([i, j])
        return {k: _merge_stats(v) for k, v in stats.items()}

    def round_p2pbn(self) -> dict[int, dict]:
        """The P2P seed's asynchronous P2P-BN: n activations per round. An activated agent
        trains its local epoch(s) and pushes its model to all its out-neighbours; each
        receiver replaces its model by the mean of its own and the received one; the sender
        keeps its own. An agent whose validation metric (own dev CER, or its training loss
        without a dev split) has not improved for p2p.bn_stage_patience of its activations
        trains only its BatchNorm layers from then on."""
        adj = self.adjacency()
        rng = np.random.default_rng(derive_seed(self.p.seed, self.round, 8))
        nodes = self.nodes(Mailbox())
        stats: dict[int, list[dict]] = {}
        for _ in range(self.n):
            i = int(rng.integers(self.n))
            stage = self.bn_stage.setdefault(i, {"best": math.inf, "since": 0, "bn_only": False})
            st = self.train([i], bn_only=stage["bn_only"])[i]
            stats.setdefault(i, []).append(st)
            self._track_bn_stage(i, st, stage)
            self.push(i, np.flatnonzero(adj[:, i]).tolist(), nodes)  # j pulls i: adj[j, i]
        return {k: _merge_stats(v) for k, v in stats.items()}

    def push(self, sender: int, receivers: list[int], nodes: dict[int, GossipNode]) -> None:
        """P2P-BN's exchange: each receiver takes the mean of its model and the sender's
        (validated like any received model); the sender keeps its own."""
        if not receivers:
            return
        nodes[sender].publish(self.states[sender]["model"], receivers, self.round)
        for j in receivers:
            own = self.states[j]["model"]
            self.states[j]["model"] = nodes[j].mix(own, {j: 0.5, sender: 0.5}, self.round)
        self.recompute_bn(receivers)

    def _track_bn_stage(self, agent: int, stats: dict, stage: dict) -> None:
        patience = self.p.bn_stage_patience
        if stage["bn_only"] or not patience:
            return
        if self.agents[agent].dev:
            metric = self.executor.map("evaluate", [(self.states[agent]["model"], f"agent{agent}_dev")])[0][1]  # fmt: skip
        else:
            metric = stats["loss"]
        if math.isfinite(metric) and metric < stage["best"]:
            stage["best"], stage["since"] = float(metric), 0
            return
        stage["since"] += 1
        if stage["since"] >= patience:
            stage["bn_only"] = True
            log.info(f"agent {agent}: no better after {patience} activations: BatchNorm only")

    def round_fedavg(self) -> dict[int, dict]:
        """The server sends the global model, the chosen agents train and send theirs back,
        the server aggregates. With p2p.deltas, messages after the first download carry
        only changes: an agent its change since the global model it was sent, the server
        the global model's change, which every agent applies (so the global model is
        always what the agents rebuild, compression error included); with
        p2p.error_feedback, each sender adds what compression left out of its earlier
        changes (`self.residuals`)."""
        p = self.p
        rng = np.random.default_rng(derive_seed(p.seed, self.round, 7))
        count = max(1, round(p.fedavg_fraction * self.n))
        chosen = sorted(rng.choice(self.n, size=count, replace=False).tolist())
        server = Mailbox()
        # with deltas, the last round's change is this round's download: every agent has
        # applied it already (for scoring), and the bytes are counted now, as without
        applied = p.deltas and self.round > 0
        # whole weights travel at int8 at most: int4, int2 and sign codes are for changes
        whole = "int8" if p.compression in mixing.CHANGE_ONLY else p.compression
        bn = self.workspace.bn_names
        if applied:
            nbytes = mixing.compressed_size(self.global_model, p.compression, bn)
        else:
            down, nbytes = mixing.compress(self.global_model, whole)
            if p.deltas:  # changes are taken from the model the agents rebuild
                self.global_model = mixing.decompress(down)
        for k in chosen:  # the server sends the global model; agents adopt it
            received = self.global_model if applied else mixing.decompress(down)
            self.states[k]["model"] = self.adopt(received, self.states[k]["model"])
            c = self.counters[k]
            c.msgs_recv += 1
            c.bytes_recv += nbytes
            c.bytes_from_server += nbytes
        anchor = self.global_model
        stats = self.train(chosen)
        nodes = self.nodes(server)
        reference = anchor if p.deltas else None
        for k in chosen:
            residual = self.residuals.get(k, {}) if p.error_feedback else None
            residual = nodes[k].publish(
                self.states[k]["model"], [-1], self.round, reference=reference, residual=residual
            )
            if residual is not None:
                self.residuals[k] = residual
        server_node = GossipNode(-1, server, self.settings(-1), {**self.counters, -1: Counters()})
        accepted = server_node.receive_valid(anchor, reference=reference)
        if accepted:
            mixed = server_node.aggregate(accepted, dict(enumerate(self.sizes)))
            self.global_model = self.outer_step(-1, anchor, mixed)
            if p.deltas:  # the change, which the agents will apply
                change = mixing.difference(self.global_model, anchor)
                if p.error_feedback:
                    change, _, self.residuals[-1] = mixing.compress_with_feedback(
                        change, self.residuals.get(-1), p.compression, bn
                    )
                else:
                    change, _ = mixing.compress(change, p.compression, bn)
                self.global_model = mixing.add_back(mixing.decompress(change), anchor)
        for k in range(self.n):  # for scoring: every agent holds the new global model
            self.states[k]["model"] = self.adopt(self.global_model, self.states[k]["model"])
        self.recompute_bn(list(range(self.n)))
        return stats

    def adopt(self, received: dict, own: dict) -> dict:
        new = {k: v.clone() for k, v in received.items()}
        if self.p.bn_stats == "local":
            new = mixing.keep_local(new, own, self.workspace.bn_names)
        return new

    def run_round(self) -> dict[int, dict]:
        # an agent that does not train this round (FedAvg) is scored on what it holds
        self.premix = {k: self.states[k]["model"] for k in self.trainers}
        if self.algorithm == "gossip":
            return self.round_gossip()
        if self.algorithm == "groups":
            return self.round_groups()
        if self.algorithm == "async":
            return self.round_async()
        if self.algorithm == "fedavg":
            return self.round_fedavg()
        if self.algorithm == "p2pbn":
            return self.round_p2pbn()
        return self.train(self.trainers)  # central, local

    # ------------------------------------------------------------------ scoring

    def model_of(self, agent: int, view: str = "postmix") -> dict:
        """The model agent `agent` holds after this round ("postmix"), the one it had
        after its local training, before mixing ("premix"), or its postmix model
        fine-tuned on its own data ("tuned", p2p.finetune_steps)."""
        k = CENTRAL if self.algorithm == "central" else agent
        if view == "premix" and k in self.premix:
            return self.premix[k]
        if view == "tuned" and k in self.tuned:
            return self.tuned[k]
        return self.states[k]["model"]

    @property
    def views(self) -> tuple[str, ...]:
        mixes = self.algorithm not in ("central", "local")
        return ("premix", "postmix") + (("tuned",) if mixes and self.p.finetune_steps else ())

    def finetune(self) -> None:
        """p2p.finetune_steps: each agent's personalised copy of its mixed model."""
        self.tuned = {}
        if "tuned" not in self.views:
            return
        calls = [(k, self.states[k], self.round, self.p.finetune_steps) for k in range(self.n)]
        self.tuned = dict(enumerate(self.executor.map("finetune", calls)))

    def evaluate(self) -> dict[int, dict]:
        """Scores of each agent's model before and after mixing: WER/CER on its own test
        split, a sample of its own training split and the global test set. Each distinct
        model is scored once (central and FedAvg agents share one; without mixing, the
        premix model is the postmix one). The headline keys (own_*, train_*, global_*) are
        those of the view `p2p.score` names; both views are kept as *_premix / *_postmix."""
        views = self.views
        self.finetune()
        calls: list[tuple] = []
        where: dict[tuple, int] = {}  # (view, agent, test) -> index into calls

        def score(view: str, k: int, test: str) -> None:
            model = self.model_of(k, view)
            for (v, j, t), idx in where.items():
                if t == test and _same_state(self.model_of(j, v), model):
                    where[(view, k, test)] = idx
                    return
            where[(view, k, test)] = len(calls)
            calls.append((model, test))

        for view in views:
            for k in range(self.n):
                score(view, k, f"agent{k}")
                score(view, k, f"agent{k}_train")
                score(view, k, "global")
        results = self.executor.map("evaluate", calls)
        out = {}
        for k in range(self.n):
            row = {}
            for view in views:
                for prefix, test in (("own", f"agent{k}"), ("train", f"agent{k}_train"),
                                     ("global", "global")):  # fmt: skip
                    wer, cer, _ = results[where[(view, k, test)]]
                    row[f"{prefix}_wer_{view}"], row[f"{prefix}_cer_{view}"] = wer, cer
            for prefix in ("own", "train", "global"):
                for metric in ("wer", "cer"):
                    row[f"{prefix}_{metric}"] = row[f"{prefix}_{metric}_{self.p.score}"]
            out[k] = row
        return out

    # ------------------------------------------------------------------ checkpoints

    def fingerprint(self) -> list[str]:
        return [f"{a.name}:{len(a.train)}:{a.train[0].id}:{a.test[0].id}" for a in self.agents]

    def save(self, path: Path) -> None:
        save_checkpoint(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "algorithm": self.algorithm,
                "topology": self.topology,
                "round": self.round,
                "wall_time": self.wall_time,
                "states": {str(k): v for k, v in self.states.items()},
                "global_model": self.global_model,
                "counters": {str(k): c.to_dict() for k, c in self.counters.items()},
                "bn_stage": {str(k): dict(v) for k, v in self.bn_stage.items()},
                "outer_momentum": {str(k): v for k, v in self.outer_momentum.items()},
                "residuals": {str(k): v for k, v in self.residuals.items()},
                "agents": self.fingerprint(),
                "config": to_dict(self.cfg),
            },
        )

    def load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UsageError(
                f"cannot resume from {path}: a simulation checkpoint of format "
                f"{ckpt.get('format')}, this speechswarm reads format {CHECKPOINT_FORMAT} "
                "(agents' states changed); start the run again in another train.out_dir"
            )
        if ckpt.get("agents") != self.fingerprint():
            raise UsageError(
                f"cannot resume from {path}: its agents' data differ from this config's "
                "(partition, seed or manifest changed); resume with the run's config.yaml"
            )
        self.round = int(ckpt["round"])
        self.wall_time = float(ckpt["wall_time"])
        self.states = {int(k): v for k, v in ckpt["states"].items()}
        self.global_model = ckpt["global_model"]
        self.counters = {int(k): Counters.from_dict(v) for k, v in ckpt["counters"].items()}
        self.bn_stage = {int(k): dict(v) for k, v in ckpt.get("bn_stage", {}).items()}
        self.outer_momentum = {int(k): v for k, v in ckpt.get("outer_momentum", {}).items()}
        self.residuals = {int(k): v for k, v in ckpt.get("residuals", {}).items()}


def _same_state(a: dict, b: dict) -> bool:
    return a is b or all(torch.equal(a[k], b[k]) for k in a)


def _merge_stats(items: list[dict]) -> dict:
    losses = [s["loss"] for s in items if math.isfinite(s["loss"])]
    return {
        "loss": sum(losses) / len(losses) if losses else math.nan,
        "steps": sum(s["steps"] for s in items),
        "audio_seconds": sum(s["audio_seconds"] for s in items),
        "seconds": sum(s["seconds"] for s in items),
        "nonfinite": sum(s["nonfinite"] for s in items),
        "diverged": any(s["diverged"] for s in items),
    }
