"""Split a corpus into agents, each with its own train/dev/test utterances (pure, seeded).

    groups = partition(utts, "speaker", agents=8, seed=0)       # list of utterance lists
    agents = split_agents(groups, test_fraction=0.3, seed=0)    # [Agent(train, dev, test)]

Modes:
- `speaker`: whole speakers per agent, speakers dealt so utterance counts stay balanced
  (largest first to the agent with fewest utterances). No speaker is on two agents.
- `person`: the same with whole *persons*: the built-in corpus's `identity` field (every
  speaker id of one recorded person, espeak-ng timbre or neural blend; flite kal and
  festival kal_diphone are one person), else `engine:voice`, else the speaker.
- `book`: one agent per (speaker, book) group, UserLibri style (`book`, else `chapter`
  from the manifest's extra fields); `agents` must not exceed the number of groups, the
  largest groups are kept when it is smaller.
- `client`: one agent per value of the manifest's `client` field (`speechswarm prepare
  clients`, the UserLibri importer), in order of first appearance.
- `iid`: utterances shuffled and dealt round-robin.
- `dirichlet`: each speaker's utterances spread over agents in Dirichlet(alpha) shares;
  small alpha gives agents few speakers each (non-IID), large alpha approaches IID.
Each agent's utterances are then shuffled and cut into test/dev/train shares (the P2P
seed: 70/30 train/test at random per user, so test speakers are also training speakers:
it measures personalisation, while the global test set measures generalisation).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from speechswarm.data.manifest import Utterance
from speechswarm.errors import DataError


class PartitionError(DataError):
    """The data cannot be split as asked; the message says which key to change."""


@dataclass(frozen=True)
class Agent:
    index: int
    name: str
    train: tuple[Utterance, ...]
    dev: tuple[Utterance, ...]
    test: tuple[Utterance, ...]

    @property
    def train_seconds(self) -> float:
        return sum(u.duration for u in self.train)

    def summary(self) -> dict:
        return {
            "agent": self.index,
            "name": self.name,
            "train_utts": len(self.train),
            "dev_utts": len(self.dev),
            "test_utts": len(self.test),
            "train_minutes": round(self.train_seconds / 60, 2),
            "speakers": len({u.speaker for u in self.train + self.dev + self.test}),
            "persons": sorted({person_key(u) for u in self.train + self.dev + self.test}),
        }


def _groups_by(utts: Sequence[Utterance], key) -> dict[str, list[Utterance]]:
    groups: dict[str, list[Utterance]] = defaultdict(list)
    for u in utts:
        groups[key(u)].append(u)
    return dict(groups)


def person_key(u: Utterance) -> str:
    """Who speaks: the built-in corpus's `identity` (one person across the speaker ids its
    settings got), else `engine:voice`, else the speaker."""
    if "identity" in u.extra:
        return str(u.extra["identity"])
    if "voice" in u.extra:
        return f"{u.extra.get('engine', '')}:{u.extra['voice']}".lstrip(":")
    return u.speaker


def by_speaker(
    utts: Sequence[Utterance], agents: int, seed: int, key=lambda u: u.speaker, what="speaker"
) -> list[list[Utterance]]:
    groups = _groups_by(utts, key)
    if len(groups) < agents:
        raise PartitionError(
            f"partition={what}: {len(groups)} {what}s for p2p.agents={agents}; lower "
            "p2p.agents or use partition=iid or dirichlet"
        )
    rng = np.random.default_rng([seed, 1])
    names = [sorted(groups)[i] for i in rng.permutation(len(groups))]
    names.sort(key=lambda s: -len(groups[s]))  # stable: ties keep the shuffled order
    out: list[list[Utterance]] = [[] for _ in range(agents)]
    for name in names:
        k = min(range(agents), key=lambda a: (len(out[a]), a))
        out[k].extend(groups[name])
    return out


def by_field(utts: Sequence[Utterance], key, agents: int | None, what: str) -> list[list]:
    groups = _groups_by(utts, key)
    order = list(groups)  # first appearance
    if agents is not None:
        if len(groups) < agents:
            raise PartitionError(
                f"partition={what}: {len(groups)} groups for p2p.agents={agents}; lower p2p.agents"
            )
        keep = sorted(order, key=lambda g: -len(groups[g]))[:agents]
        order = [g for g in order if g in set(keep)]
    return [groups[g] for g in order]


def book_key(u: Utterance) -> str:
    book = u.extra.get("book", u.extra.get("chapter", ""))
    return f"{u.speaker}/{book}"


def client_key(u: Utterance) -> str:
    if "client" not in u.extra:
        raise PartitionError(
            f"partition=client: utterance {u.id} has no 'client' field; make the manifest with "
            "`speechswarm prepare clients` or the userlibri importer, or use partition=speaker"
        )
    return str(u.extra["client"])


def iid(utts: Sequence[Utterance], agents: int, seed: int) -> list[list[Utterance]]:
    if len(utts) < agents:
        raise PartitionError(f"partition=iid: {len(utts)} utterances for p2p.agents={agents}")
    order = np.random.default_rng([seed, 2]).permutation(len(utts))
    return [[utts[i] for i in order[k::agents]] for k in range(agents)]


def dirichlet(
    utts: Sequence[Utterance], agents: int, alpha: float, seed: int, min_utts: int = 2
) -> list[list[Utterance]]:
    """Speaker-skewed split; redrawn (up to 100 times) until every agent has `min_utts`."""
    groups = _groups_by(utts, lambda u: u.speaker)
    rng = np.random.default_rng([seed, 3])
    for _ in range(100):
        out: list[list[Utterance]] = [[] for _ in range(agents)]
        for name in sorted(groups):
            items = groups[name]
            shares = rng.dirichlet(np.full(agents, alpha))
            counts = _largest_remainder(shares, len(items))
            order = rng.permutation(len(items))
            start = 0
            for k, c in enumerate(counts):
                out[k].extend(items[i] for i in order[start : start + c])
                start += c
        if min(len(o) for o in out) >= min_utts:
            return out
    raise PartitionError(
        f"partition=dirichlet: alpha={alpha} leaves some of {agents} agents with fewer than "
        f"{min_utts} utterances; raise p2p.dirichlet_alpha or lower p2p.agents"
    )


def _largest_remainder(shares: np.ndarray, total: int) -> list[int]:
    """Integer counts summing to `total`, proportional to `shares` (Hamilton's method)."""
    raw = shares * total
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def partition(
    utts: Sequence[Utterance], mode: str, agents: int, seed: int = 0, alpha: float = 0.5
) -> list[list[Utterance]]:
    """Utterance groups, one per agent (see the module docstring for the modes)."""
    if not utts:
        raise PartitionError("no utterances to split into agents (empty manifest?)")
    if mode == "speaker":
        return by_speaker(utts, agents, seed)
    if mode == "person":
        return by_speaker(utts, agents, seed, key=person_key, what="person")
    if mode == "book":
        return by_field(utts, book_key, agents, "book")
    if mode == "client":
        return by_field(utts, client_key, None, "client")
    if mode == "iid":
        return iid(utts, agents, seed)
    if mode == "dirichlet":
        return dirichlet(utts, agents, alpha, seed)
    raise PartitionError(
        f"unknown partition {mode!r}: speaker, person, book, client, iid or dirichlet"
    )


def split_counts(n: int, test_fraction: float, dev_fraction: float) -> tuple[int, int, int]:
    """(train, dev, test) counts for n utterances: test and dev rounded, at least one test
    and one train utterance."""
    if n < 2:
        raise PartitionError(f"an agent with {n} utterance(s) cannot have train and test data")
    test = min(n - 1, max(1, round(n * test_fraction)))
    dev = min(n - 1 - test, round(n * dev_fraction)) if dev_fraction else 0
    return n - test - dev, dev, test


def split_agents(
    groups: Sequence[Sequence[Utterance]],
    test_fraction: float = 0.3,
    dev_fraction: float = 0.0,
    seed: int = 0,
    names: Sequence[str] | None = None,
    max_utts: int = 0,
) -> list[Agent]:
    """Agents with random test/dev/train cuts of their utterances (seeded per agent); with
    `max_utts`, each agent first keeps that many of its utterances, picked at random."""
    agents = []
    width = max(2, math.ceil(math.log10(max(len(groups), 1) + 1)))
    for k, group in enumerate(groups):
        order = np.random.default_rng([seed, 4, k]).permutation(len(group))
        if max_utts:
            order = order[:max_utts]
        n_train, n_dev, n_test = split_counts(len(order), test_fraction, dev_fraction)
        items = [group[i] for i in order]
        name = names[k] if names else f"agent{k:0{width}d}"
        agents.append(
            Agent(
                k,
                name,
                train=tuple(items[n_test + n_dev :]),
                dev=tuple(items[n_test : n_test + n_dev]),
                test=tuple(items[:n_test]),
            )
        )
    return agents


def agents_from_splits(splits: dict[str, list[Utterance]], test_fraction: float, seed: int):
    """Agents from a clients hook's per-split utterances (extra `client` = agent number).

    The hook's own train/val/test are used; when it has no test split (or a client has no
    test data) that client's train utterances are cut `test_fraction` for testing."""
    train = _groups_by(splits.get("train", []), lambda u: int(u.extra["client"]))
    dev = _groups_by(splits.get("val", []), lambda u: int(u.extra["client"]))
    test = _groups_by(splits.get("test", []), lambda u: int(u.extra["client"]))
    clients = sorted(set(train) | set(test))
    agents = []
    for k, c in enumerate(clients):
        tr, te = list(train.get(c, [])), list(test.get(c, []))
        if not te:
            n_train, _, n_test = split_counts(len(tr), test_fraction, 0.0)
            order = np.random.default_rng([seed, 4, k]).permutation(len(tr))
            te = [tr[i] for i in order[:n_test]]
            tr = [tr[i] for i in order[n_test:]]
        if not tr:
            raise PartitionError(f"--clients: client {c} has no training utterances")
        agents.append(Agent(k, f"client{c}", tuple(tr), tuple(dev.get(c, [])), tuple(te)))
    if not agents:
        raise PartitionError("--clients: the hook returned no clients with data")
    return agents
