"""Agents from a corpus: by speaker, book, client, IID, Dirichlet; 70/30 splits.

.venv/bin/python -m pytest tests/p2p/test_p2p_partition.py -q
"""

from __future__ import annotations

from collections import Counter

import pytest

from speechswarm.data.manifest import Utterance
from speechswarm.p2p.partition import (
    PartitionError,
    agents_from_splits,
    partition,
    split_agents,
    split_counts,
)


def corpus(speakers: int = 10, per: tuple[int, ...] = (8,)) -> list[Utterance]:
    utts = []
    for s in range(speakers):
        for j in range(per[s % len(per)]):
            utts.append(
                Utterance(
                    f"{s}-{j}", f"{s}-{j}.flac", 1.0, "a", str(s), extra={"chapter": str(j % 2)}
                )
            )
    return utts


def ids(groups):
    return sorted(u.id for g in groups for u in g)


def test_speaker_partition_keeps_speakers_whole_and_balanced():
    utts = corpus(10, per=(4, 8, 12))
    groups = partition(utts, "speaker", 3, seed=0)
    assert ids(groups) == sorted(u.id for u in utts)  # every utterance exactly once
    owners = {}
    for k, g in enumerate(groups):
        for u in g:
            assert owners.setdefault(u.speaker, k) == k  # a speaker on one agent only
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 12  # at most one speaker's worth apart
    assert partition(utts, "speaker", 3, seed=0) == groups  # seeded


def test_person_partition_keeps_every_variant_of_a_voice_on_one_agent():
    # 12 speaker ids, 4 persons: each TTS voice synthesised under three speaker ids
    utts = [
        Utterance(f"{s}-{j}", f"{s}-{j}.flac", 1.0, "a", str(s), extra=extra)
        for s in range(12)
        for j in range(3)
        for extra in [{"engine": "flite" if s % 4 < 2 else "kokoro", "voice": f"v{s % 4}"}]
    ]
    groups = partition(utts, "person", 2, seed=0)
    assert ids(groups) == sorted(u.id for u in utts)
    for g in groups:
        assert len({u.speaker for u in g}) == 6  # 2 persons x 3 speaker ids
    persons = [sorted({f"{u.extra['engine']}:{u.extra['voice']}" for u in g}) for g in groups]
    assert sorted(p for ps in persons for p in ps) == [
        "flite:v0",
        "flite:v1",
        "kokoro:v2",
        "kokoro:v3",
    ]
    agents = split_agents(groups, 0.3, seed=0)
    assert agents[0].summary()["persons"] == persons[0]
    with pytest.raises(PartitionError, match="4 persons for p2p.agents=5"):
        partition(utts, "person", 5)
    # a manifest without engine/voice fields: persons are its speakers
    assert partition(corpus(4), "person", 2, seed=0) == partition(corpus(4), "speaker", 2, seed=0)


def test_speaker_partition_needs_enough_speakers():
    with pytest.raises(PartitionError, match="p2p.agents"):
        partition(corpus(3), "speaker", 4)


def test_iid_deals_everything_evenly():
    utts = corpus(5)
    groups = partition(utts, "iid", 4, seed=1)
    assert ids(groups) == sorted(u.id for u in utts)
    assert sorted(len(g) for g in groups) == [10, 10, 10, 10]


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_mixed():
    utts = corpus(20, per=(20,))
    skewed = partition(utts, "dirichlet", 4, seed=0, alpha=0.05)
    mixed = partition(utts, "dirichlet", 4, seed=0, alpha=1000.0)
    for groups in (skewed, mixed):
        assert ids(groups) == sorted(u.id for u in utts)

    def top_share(groups):  # mean share of each agent's largest speaker
        return sum(max(Counter(u.speaker for u in g).values()) / len(g) for g in groups) / 4

    assert top_share(skewed) > 2 * top_share(mixed)


def test_book_and_client_partitions():
    utts = corpus(3)  # each speaker has chapters 0 and 1
    groups = partition(utts, "book", 6)
    assert len(groups) == 6 and all(
        len({(u.speaker, u.extra["chapter"]) for u in g}) == 1 for g in groups
    )
    with_client = [u.with_(extra={"client": u.speaker}) for u in utts]
    assert len(partition(with_client, "client", 99)) == 3
    with pytest.raises(PartitionError, match="client"):
        partition(utts, "client", 3)


def test_split_counts_70_30():
    assert split_counts(10, 0.3, 0.0) == (7, 0, 3)
    assert split_counts(2, 0.3, 0.0) == (1, 0, 1)
    assert split_counts(20, 0.3, 0.1) == (12, 2, 6)
    with pytest.raises(PartitionError):
        split_counts(1, 0.3, 0.0)


def test_split_agents_is_disjoint_and_seeded():
    groups = partition(corpus(6), "speaker", 2, seed=0)
    agents = split_agents(groups, 0.3, seed=0)
    for a, g in zip(agents, groups, strict=True):
        assert len(a.test) == round(0.3 * len(g))
        assert sorted(u.id for u in a.train + a.test) == sorted(u.id for u in g)
    assert split_agents(groups, 0.3, seed=0) == agents
    assert split_agents(groups, 0.3, seed=1) != agents
    assert agents[0].name == "agent00"


def test_agents_from_hook_splits():
    train = [
        Utterance(f"t{i}", "x.flac", 1.0, "a", "c", extra={"client": i % 2}) for i in range(10)
    ]
    test = [Utterance("e0", "x.flac", 1.0, "a", "c", extra={"client": 0})]
    agents = agents_from_splits({"train": train, "test": test}, 0.3, seed=0)
    # client 1 had no test split: round(0.3 * 5) = 2 of its 5 are cut for testing
    assert [len(a.train) for a in agents] == [5, 3]
    assert [len(a.test) for a in agents] == [1, 2]


def test_agents_keep_at_most_max_utts_picked_at_random():
    groups = partition(corpus(4, per=(10, 30)), "speaker", 2, seed=0)
    capped = split_agents(groups, 0.3, seed=0, max_utts=12)
    assert [len(a.train) + len(a.test) for a in capped] == [12, 12]
    full = split_agents(groups, 0.3, seed=0)
    for a, b in zip(capped, full, strict=True):
        assert {u.id for u in a.train + a.test} <= {u.id for u in b.train + b.test}
    assert split_agents(groups, 0.3, seed=0, max_utts=12) == capped  # seeded
