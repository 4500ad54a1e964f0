"""One agent's side of model exchange: send its weights, check and average what arrives.

    node = GossipNode(agent=3, transport=mailbox, settings=MixSettings(...), counters=c)
    node.publish(state, receivers=[2, 4], round_index=r)    # what peers will pull
    new_state = node.mix(state, weights={2: .3, 3: .4, 4: .3}, round_index=r)

The math (weights, averaging, validation, compression) lives in `mixing.py`; the transport
is anything with `send(to, message)` and `receive(agent)`. `Mailbox` is the in-memory one
the one-process simulation uses: a synchronous round publishes every agent's weights, then
every agent mixes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from speechswarm.p2p import mixing
from speechswarm.p2p.mixing import State


@dataclass(frozen=True)
class Message:
    sender: int
    round_index: int
    payload: dict  # mixing.compress output
    nbytes: int


class Mailbox:
    """In-memory transport: a message waits in the receiver's box until it reads it."""

    def __init__(self) -> None:
        self.boxes: dict[int, list[Message]] = defaultdict(list)

    def send(self, to: int, message: Message) -> None:
        self.boxes[to].append(message)

    def receive(self, agent: int) -> list[Message]:
        return self.boxes.pop(agent, [])


@dataclass(frozen=True)
class MixSettings:
    aggregation: str = "mean"  # mean | median | trimmed_mean
    trim_fraction: float = 0.2
    compression: str = "none"  # mixing.COMPRESSIONS
    stats: tuple[str, ...] = ()  # running statistics: int8 under int4/int2/sign (mixing.compress)
    validate: bool = True
    max_norm_ratio: float = 5.0
    keep_local: tuple[str, ...] = ()  # tensor names never averaged (BatchNorm stats, bn=local)
    fault: str = ""  # "" for an honest agent; else what it sends (mixing.corrupt)
    fault_scale: float = 1000.0
    # the planted faulty agents (p2p.faulty_agents): known to the simulation, used only to
    # count what became of their messages (Counters.poisoned_*), never to decide anything
    faulty: tuple[int, ...] = ()


@dataclass
class Counters:
    """Per-agent message accounting (cumulative over the run)."""

    msgs_sent: int = 0
    bytes_sent: int = 0
    msgs_recv: int = 0
    bytes_recv: int = 0
    rejected: int = 0  # messages this agent refused
    rejected_by_peers: int = 0  # this agent's messages that others refused
    reasons: Counter = field(default_factory=Counter)
    # messages from planted faulty agents (MixSettings.faulty): received, refused by
    # validation, and accepted but outvoted: the aggregate stayed within the range of the
    # honest states it was computed from (mixing.within_range). The rest got through.
    poisoned_recv: int = 0
    poisoned_refused: int = 0
    poisoned_outvoted: int = 0
    # the largest |aggregate with - without the poisoned state| / |without| seen (inf: the
    # aggregate became non-finite)
    poison_shift: float = 0.0
    # bytes this agent downloaded from a FedAvg server (sent by no agent, so not in any
    # agent's bytes_sent): the wire's total is the agents' bytes_sent plus these
    bytes_from_server: int = 0

    def to_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "reasons"}
        d["reasons"] = dict(self.reasons)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Counters:
        d = dict(d)
        reasons = Counter(d.pop("reasons", {}))
        return cls(**d, reasons=reasons)


class GossipNode:
    """Agent `agent`'s exchange logic; `counters` maps agent -> Counters (shared by all
    nodes of a simulation, so a rejection is also charged to its sender). `earlier`: the
    weights a faulty agent with fault `stale` sends instead of its own."""

    def __init__(
        self,
        agent: int,
        transport,
        settings: MixSettings,
        counters: dict[int, Counters],
        generator: torch.Generator | None = None,
        earlier: State | None = None,
    ):
        self.agent = agent
        self.transport = transport
        self.settings = settings
        self.counters = counters
        self.generator = generator or torch.Generator().manual_seed(agent)
        self.earlier = earlier

    def publish(
        self,
        state: State,
        receivers,
        round_index: int,
        reference: State | None = None,
        residual: State | None = None,
    ) -> State | None:
        """Send `state` (compressed; corrupted if this agent is faulty) to each receiver;
        with a `reference` that the receivers hold too, only its change from it (a delta
        message: compression then works on the scale of the change, not the weights').
        With a `residual` ({} at first: error feedback, delta messages only), what earlier
        messages' compression left out is added to the change; returns the new residual
        (None without one)."""
        s = self.settings
        if s.fault:
            state = mixing.corrupt(state, s.fault, s.fault_scale, self.generator, self.earlier)
        delta = reference is not None and not mixing.check_layout(state, reference)
        if delta:
            state = mixing.difference(state, reference)  # (a bad layout goes as it is)
        if residual is not None and delta:
            payload, nbytes, residual = mixing.compress_with_feedback(
                state, residual, s.compression, s.stats
            )
        else:
            payload, nbytes = mixing.compress(state, s.compression, s.stats)
        mine = self.counters[self.agent]
        for to in receivers:
            self.transport.send(to, Message(self.agent, round_index, payload, nbytes))
            mine.msgs_sent += 1
            mine.bytes_sent += nbytes
        return residual

    def receive_valid(self, own: State, reference: State | None = None) -> dict[int, State]:
        """Decompressed states of this round's messages that pass validation, by sender;
        with a `reference`, the messages are delta messages (`publish`) and each state is
        rebuilt on it before it is checked. A state of other tensor names or shapes is
        refused even without `validate`: it cannot be aggregated."""
        accepted: dict[int, State] = {}
        s = self.settings
        mine = self.counters[self.agent]
        for msg in self.transport.receive(self.agent):
            mine.msgs_recv += 1
            mine.bytes_recv += msg.nbytes
            state = mixing.decompress(msg.payload)
            if reference is not None and not mixing.check_layout(state, reference):
                state = mixing.add_back(state, reference)  # (a bad layout is refused below)
            if s.validate:
                reason = mixing.check_received(state, own, s.max_norm_ratio)
            else:
                reason = mixing.check_layout(state, own)
            if msg.sender in s.faulty:
                mine.poisoned_recv += 1
                mine.poisoned_refused += bool(reason)
            if reason:
                mine.rejected += 1
                mine.reasons[reason] += 1
                if msg.sender in self.counters:
                    self.counters[msg.sender].rejected_by_peers += 1
                continue
            accepted[msg.sender] = state
        return accepted

    def mix(self, own: State, weights: dict[int, float], round_index: int) -> State:
        """Aggregate own state with the accepted received ones, in agent order, with
        `weights` (agent -> weight, own included; renormalised over who is left)."""
        accepted = self.receive_valid(own)
        accepted[self.agent] = own
        mixed = self.aggregate(accepted, weights)
        s = self.settings
        return mixing.keep_local(mixed, own, s.keep_local) if s.keep_local else mixed

    def aggregate(self, states: dict[int, State], weights: dict[int, float]) -> State:
        """`mixing.aggregate` of `states` (sender -> state) in agent order; integer tensors
        from this agent's own state (the first one's if it has none: a FedAvg server).
        Each planted faulty sender among them is counted as outvoted or not."""
        s = self.settings
        order = sorted(states)

        def combine(keys: list[int]) -> State:
            keep = keys.index(self.agent) if self.agent in keys else 0
            return mixing.aggregate([states[k] for k in keys], [weights[k] for k in keys],
                                    method=s.aggregation, trim=s.trim_fraction, keep_from=keep)  # fmt: skip

        mixed = combine(order)
        honest = [k for k in order if k == self.agent or k not in s.faulty]
        if len(honest) == len(order) or not honest:
            return mixed
        # The poisoned states' effect: the aggregate against the honest states' range, and
        # against the aggregate the receiver would have computed without them.
        mine = self.counters[self.agent]
        mine.poisoned_outvoted += (len(order) - len(honest)) * mixing.within_range(
            mixed, [states[k] for k in honest]
        )
        without = combine(honest)
        shift = mixing.state_distance(mixed, without) / max(mixing.state_norm(without), 1e-12)
        mine.poison_shift = max(mine.poison_shift, shift if math.isfinite(shift) else math.inf)
        return mixed
