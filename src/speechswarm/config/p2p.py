"""The `p2p:` section of a config: how agents are formed, connected, trained and averaged.

    speechswarm p2p --config p2p-tiny p2p.agents=8 p2p.topology=ring p2p.rounds=10

Values only (frozen dataclass); `speechswarm.config.load` validates types and keys once,
and `check_p2p` below checks the ranges and combinations. The model, features, optimizer and
data settings of each agent come from the other sections of the same config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import yaml

from speechswarm.errors import ConfigError

ALGORITHMS = ("gossip", "groups", "async", "p2pbn", "fedavg", "central", "local")
# those whose agents talk over a graph
GRAPH_ALGORITHMS = ("gossip", "groups", "async", "p2pbn")
FAULTS = ("nan", "inf", "scale", "noise", "random", "sign_flip", "stale", "wrong_shape")
TOPOLOGIES = (
    "complete",
    "ring",
    "regular",
    "directed",
    "erdos_renyi",
    "torus",
    "grid",
    "clustered",
    # the P2P seed's graphs (p2p/topology.py, docs/p2p.md "Topologies")
    "directed_regular",
    "torus_kn",
    "cylinder",
    "erdos_renyi_directed",
    "sparse_clusters",
)


@dataclass(frozen=True)
class P2PConfig:
    # ---- agents and their data
    agents: int = 8
    # speaker: whole speakers per agent; person: whole persons (the built-in corpus's
    # engine:voice, e.g. every variant of flite awb on one agent); book: one agent per (speaker, book/chapter) group,
    # UserLibri style; client: the manifest's `client` field (a --clients hook, UserLibri);
    # iid: utterances dealt at random; dirichlet: each speaker's utterances spread over
    # agents with Dirichlet(dirichlet_alpha) shares (small alpha: very non-IID).
    partition: Literal["speaker", "person", "book", "client", "iid", "dirichlet"] = "speaker"
    dirichlet_alpha: float = 0.5
    test_fraction: float = 0.3  # of each agent's utterances (the seed: 70/30 train/test)
    dev_fraction: float = 0.0
    clients: str = ""  # module:function hook returning load_clients_data()-style splits
    # utterances each agent keeps (picked at random, before its test/dev/train cut); 0: all.
    # Sizes an experiment without a new corpus (the seed's UserLibri users hold ~50-150).
    agent_max_utts: int = 0
    global_test_max: int = 100  # utterances of data.test_manifest scored per agent; 0: all
    # ---- who talks to whom
    topology: Literal[TOPOLOGIES] = "ring"
    # regular / directed / directed_regular / sparse_clusters: neighbours per agent;
    # erdos_renyi_directed: expected neighbours (p = degree / agents); torus_kn / cylinder:
    # the lattice's k rows (degree x agents/degree)
    degree: int = 3
    edge_prob: float = 0.3  # erdos_renyi
    clusters: int = 2  # clustered: complete groups joined in a ring; sparse_clusters: how many
    # sparse_clusters: share of each cluster's agents that pull from one agent of every other
    # cluster (the seed's cluster_conns; floor(cross_fraction x cluster size) links per pair)
    cross_fraction: float = 0.33
    # directed_regular and sparse_clusters' clusters: the seed's deterministic Havel-Hakimi
    # graph (false, the same for every p2p.seed) or a seeded random one (true)
    graph_seeded: bool = False
    # The seed's graphs (directed_regular, torus_kn, cylinder, erdos_renyi_directed,
    # sparse_clusters) may be disconnected, as in the seed; true redraws random ones until
    # strongly connected and rejects a disconnected deterministic one. Symptom for setting
    # it: an agent's own CER never approaches the others' (it pulls from nobody).
    require_connected: bool = False
    redraw_every: int = 0  # rounds between fresh random topologies; 0: never
    # ---- how they learn
    algorithm: Literal[ALGORITHMS] = "gossip"
    # Several runs compared in one command, each "algorithm" or "algorithm/topology",
    # e.g. [gossip/ring, gossip/regular, central, local, fedavg]; empty: just the one above.
    # A run may set p2p keys of its own after its name: "fedavg outer_lr=0.7".
    runs: tuple[str, ...] = ()
    rounds: int = 10
    local_epochs: int = 1  # per round (the seed); used when local_steps is 0
    local_steps: int = 0  # optimizer steps per agent per round; 0: local_epochs instead
    weights: Literal["data_size", "uniform"] = "data_size"
    # `groups`: the most agents (neighbours on the graph) averaging together per round, as
    # networked peers with `--topology --group-size` do; 2: pairwise gossip on a matching
    group_size: int = 2
    # median / trimmed_mean: coordinate-wise and unweighted (a large liar counts once); on the
    # network each group member reduces its share this way where the group has 3+ members
    # (else the mean, counted: docs/p2p-network.md). Symptom for it: a member whose values
    # pass the checks (p2p.max_norm_ratio) but pull the others' models away.
    aggregation: Literal["mean", "median", "trimmed_mean"] = "mean"
    trim_fraction: float = 0.2  # trimmed_mean: share cut at each end per coordinate
    # Batch-norm running statistics after averaging: averaged like weights, kept local
    # (FedBN-style), or re-estimated on bn_batches local batches.
    bn_stats: Literal["average", "local", "recompute"] = "average"
    bn_batches: int = 4
    fedavg_fraction: float = 1.0  # share of agents the virtual server asks each round
    # Outer optimizer (SlowMo, Wang et al. 2020; DiLoCo, Douillard et al. 2023) for gossip
    # and fedavg: the change a round made (anchor - mixed) is a pseudo-gradient applied
    # with outer_lr and Nesterov/heavy-ball momentum outer_momentum. 1.0 and 0.0: plain
    # averaging. DiLoCo's choice: 0.7 and 0.9 with many local steps (p2p.local_steps).
    # Symptom for raising them: decentralised runs learn more slowly per step than central.
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    outer_nesterov: bool = True
    # ---- messages
    # none | fp16 | int8 | int4 | int2 | sign (mixing.compress): int4, int2 (ternary) and
    # sign (1 bit a value, signSGD's scaled sign) send changes only (p2p.deltas; the first
    # download of whole weights then goes int8), and want p2p.error_feedback
    compression: Literal["none", "fp16", "int8", "int4", "int2", "sign"] = "none"
    # fedavg: messages after the first download carry changes, not weights: an agent's
    # change since the global model it was sent, the server's change of the global model.
    # Compressed, a change loses far less than the weights (int8's step is 1/127 of the
    # largest change, not of the largest weight). Symptom for it: int8 or fp16 messages
    # cost accuracy.
    deltas: bool = False
    # with p2p.deltas: each sender (agents and server) adds what compression left out of its
    # earlier changes to its next change (error feedback, EF-SGD / 1-bit SGD), so coarse
    # codes lose only time, not parts of the update. Symptom for it: int4/int2/sign messages
    # cost accuracy.
    error_feedback: bool = False
    # reject received weights with NaN/Inf or a norm out of bounds; the simulation refuses
    # weights of other tensor names or shapes either way (they cannot be averaged)
    validate: bool = True
    max_norm_ratio: float = 5.0  # reject if |received| / |own| is above this or below 1/this
    # ---- planted faults (robustness experiments): these agents send corrupted weights
    # (mixing.corrupt): nan/inf (one value per tensor), scale (times fault_scale), noise
    # (fault_scale x each tensor's std added), random (Gaussian with each tensor's mean and
    # std), sign_flip, stale (the agent's weights of round 0, sent again every round),
    # wrong_shape; rows then count poisoned_recv/_refused/_outvoted (p2p/sync.py)
    faulty_agents: tuple[int, ...] = ()
    fault: Literal[FAULTS] = "nan"
    fault_scale: float = 1000.0
    # ---- execution
    workers: int = 0  # 0: all agents in this process; N: a pool of N processes
    # `central`'s work per round: "per_agent", what one agent does (each agent is one
    # machine, so the central model gets one machine's compute: the P2P seed's comparison),
    # or "total", the agents' combined work (equal total steps)
    central_compute: Literal["per_agent", "total"] = "per_agent"
    # p2pbn (the P2P seed's asynchronous algorithm): an agent whose own dev CER (its loss
    # without a dev split) has not improved for this many of its activations trains only its
    # BatchNorm layers from then on; 0: never
    bn_stage_patience: int = 2
    eval_every: int = 1  # rounds between evaluations (the last round is always scored)
    # Personalisation: at each evaluation, every agent of a mixing run (gossip, async,
    # p2pbn, fedavg) also scores a copy of its mixed model after this many more local
    # steps on its own data (*_tuned columns); its training goes on from the mixed model.
    # 0: off. Symptom for it: agents' own CER before mixing beats after mixing.
    finetune_steps: int = 0
    # which model the headline scores (own_*, global_*) read: "premix", each agent's model
    # after its local training and before it mixes (its personalised model: the P2P seed's
    # choice), or "postmix", after mixing (the consensus). Rows hold both either way.
    score: Literal["premix", "postmix"] = "premix"
    train_score_max: int = 30  # own training utterances scored per agent (0: none)
    checkpoint_every: int = 1  # rounds between simulation checkpoints
    seed: int = 0


# keys a run may not change: they define the agents and the comparison itself
SHARED_KEYS = (
    "agents", "partition", "dirichlet_alpha", "test_fraction", "dev_fraction", "clients",
    "agent_max_utts", "global_test_max", "train_score_max", "runs", "rounds", "seed",
)  # fmt: skip


def parse_run(spec: str, default_topology: str) -> tuple[str, str, dict]:
    """ "gossip/ring" -> ("gossip", "ring", {}); "central" -> ("central", default_topology,
    {}); "fedavg outer_lr=0.7 outer_momentum=0.9" -> ("fedavg", ..., {"outer_lr": 0.7,
    "outer_momentum": 0.9}): p2p keys this run sets differently from the others."""
    head, *rest = spec.split()
    algorithm, _, topology = head.partition("/")
    topology = topology or default_topology
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"p2p.runs: {spec!r}: unknown algorithm {algorithm!r}; choose from {', '.join(ALGORITHMS)}"
        )
    if topology not in TOPOLOGIES:
        raise ConfigError(
            f"p2p.runs: {spec!r}: unknown topology {topology!r}; choose from {', '.join(TOPOLOGIES)}"
        )
    options = {}
    fields = {f.name for f in dataclasses.fields(P2PConfig)}
    for item in rest:
        key, sep, text = item.partition("=")
        if not sep or key not in fields or key in SHARED_KEYS + ("algorithm", "topology"):
            raise ConfigError(
                f"p2p.runs: {spec!r}: {item!r} must be key=value with a p2p key a run may set "
                f"on its own (not {', '.join(SHARED_KEYS)}; algorithm/topology go before)"
            )
        options[key] = yaml.safe_load(text)
    return algorithm, topology, options


def run_name(algorithm: str, topology: str, options: dict | None = None) -> str:
    """Folder name of one run: topology matters only where agents talk to neighbours;
    a run's own p2p keys are appended (`fedavg-outer_lr0.7-outer_momentum0.9`)."""
    name = f"{algorithm}-{topology}" if algorithm in GRAPH_ALGORITHMS else algorithm
    return name + "".join(f"-{k}{v}" for k, v in (options or {}).items())


def check_run(algorithm: str, cfg: P2PConfig) -> None:
    """Combinations of one run's algorithm and its p2p keys that cannot work."""
    if cfg.deltas and algorithm in GRAPH_ALGORITHMS:
        raise ConfigError(
            f"p2p.deltas works with fedavg only: {algorithm} agents hold no model in common "
            "with their neighbours to send changes from"
        )
    sends_weights = algorithm in GRAPH_ALGORITHMS or (algorithm == "fedavg" and not cfg.deltas)
    if cfg.compression in ("int4", "int2", "sign") and sends_weights:
        raise ConfigError(
            f"p2p.compression={cfg.compression} sends changes only: set p2p.deltas=true "
            "(fedavg); for whole weights use none, fp16 or int8"
        )
    if cfg.error_feedback and sends_weights:
        raise ConfigError(
            "p2p.error_feedback carries compression error from one change to the next: set "
            "p2p.deltas=true (fedavg)"
        )


def check_p2p(cfg: P2PConfig) -> None:
    """Ranges and combinations the types cannot express; errors name the key."""
    if cfg.agents < 1:
        raise ConfigError(f"p2p.agents must be >= 1, got {cfg.agents}")
    if cfg.rounds < 1:
        raise ConfigError(f"p2p.rounds must be >= 1, got {cfg.rounds}")
    if cfg.local_steps < 0 or cfg.local_epochs < 0 or not (cfg.local_steps or cfg.local_epochs):
        raise ConfigError("set p2p.local_steps > 0 or p2p.local_epochs > 0 (work per round)")
    if not 0.0 < cfg.test_fraction < 1.0 or not 0.0 <= cfg.dev_fraction < 1.0:
        raise ConfigError("p2p.test_fraction must be in (0, 1) and p2p.dev_fraction in [0, 1)")
    if cfg.test_fraction + cfg.dev_fraction >= 1.0:
        raise ConfigError("p2p.test_fraction + p2p.dev_fraction must leave training data (< 1)")
    if cfg.dirichlet_alpha <= 0:
        raise ConfigError(f"p2p.dirichlet_alpha must be > 0, got {cfg.dirichlet_alpha}")
    if not 0.0 <= cfg.trim_fraction < 0.5:
        raise ConfigError(f"p2p.trim_fraction must be in [0, 0.5), got {cfg.trim_fraction}")
    if cfg.max_norm_ratio <= 1.0:
        raise ConfigError(f"p2p.max_norm_ratio must be > 1, got {cfg.max_norm_ratio}")
    if cfg.outer_lr <= 0 or not 0.0 <= cfg.outer_momentum < 1.0:
        raise ConfigError(
            f"p2p.outer_lr must be > 0 and p2p.outer_momentum in [0, 1), got {cfg.outer_lr} "
            f"and {cfg.outer_momentum}"
        )
    if not 0.0 < cfg.fedavg_fraction <= 1.0:
        raise ConfigError(f"p2p.fedavg_fraction must be in (0, 1], got {cfg.fedavg_fraction}")
    for key in (
        "workers", "redraw_every", "global_test_max", "train_score_max", "agent_max_utts",
        "finetune_steps",
    ):  # fmt: skip
        if getattr(cfg, key) < 0:
            raise ConfigError(f"p2p.{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.group_size < 2:
        raise ConfigError(
            f"p2p.group_size must be >= 2 (an agent and a neighbour), got {cfg.group_size}"
        )
    for key in ("eval_every", "checkpoint_every", "degree", "clusters", "bn_batches"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"p2p.{key} must be >= 1, got {getattr(cfg, key)}")
    if not 0.0 < cfg.edge_prob <= 1.0:
        raise ConfigError(f"p2p.edge_prob must be in (0, 1], got {cfg.edge_prob}")
    if not 0.0 <= cfg.cross_fraction <= 1.0:
        raise ConfigError(f"p2p.cross_fraction must be in [0, 1], got {cfg.cross_fraction}")
    bad = [a for a in cfg.faulty_agents if not 0 <= a < cfg.agents]
    if bad:
        raise ConfigError(f"p2p.faulty_agents: {bad} are not agent numbers 0..{cfg.agents - 1}")
    for spec in cfg.runs:
        parse_run(spec, cfg.topology)
