"""BucketBatchSampler: hand-computed packing, exact-once coverage across ranks, resume."""

from __future__ import annotations

import numpy as np
import pytest

from speechswarm.data.sampler import (
    BucketBatchSampler,
    epoch_speed_factors,
    make_divisible,
    pack_batches,
    padding_fraction,
)


def _durations(n: int = 101, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 15.0, n)


def _all_ranks(durations, world_size: int, epoch: int, **kw) -> list[list[list[int]]]:
    out = []
    for rank in range(world_size):
        s = BucketBatchSampler(durations, 40.0, rank=rank, world_size=world_size, **kw)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


def test_pack_batches_hand_computed():
    d = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0]
    # [1,2,3]: 3 * 3 = 9 <= 10; adding 4 would cost 16. [4,5]: 5 * 2 = 10. [10] alone.
    assert pack_batches(range(6), d, 10.0) == [[0, 1, 2], [3, 4], [5]]
    assert pack_batches(range(6), d, 10.0, max_batch_size=2) == [[0, 1], [2, 3], [4], [5]]
    # an utterance longer than the bound is a batch of one, never merged with others
    assert pack_batches([0, 1, 2], [1.0, 25.0, 1.0], 10.0) == [[0], [1], [2]]
    # packing follows the given order and tracks the running max
    assert pack_batches([2, 0, 1], [1.0, 2.0, 4.0], 8.0) == [[2, 0], [1]]


def test_padding_fraction_hand_computed():
    # occupied 2*2 + 4*2 = 12 s, used 1+2+3+4 = 10 s
    assert padding_fraction([1, 2, 3, 4], [[0, 1], [2, 3]]) == pytest.approx(2 / 12)
    assert padding_fraction([3, 3], [[0, 1]]) == 0.0
    d = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0]
    assert padding_fraction(d, [[0, 1, 2], [3, 4], [5]]) == pytest.approx(4 / 29)


def test_make_divisible_splits_largest_or_merges_cheapest():
    d = np.ones(7)
    assert make_divisible([[0, 1, 2, 3], [4, 5], [6]], 2, d) == [[0, 1], [2, 3], [4, 5], [6]]
    assert make_divisible([[0, 1, 2, 3], [4, 5], [6]], 3, d) == [[0, 1, 2, 3], [4, 5], [6]]
    # 3 singletons, 2 ranks: 4 batches impossible, so the two cheapest neighbours merge
    assert make_divisible([[0], [1], [2]], 2, np.array([1.0, 1.0, 1.0])) == [[0, 1], [2]]
    assert make_divisible([[0], [1], [2]], 2, np.array([5.0, 1.0, 1.0])) == [[0], [1, 2]]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_every_utterance_once_and_equal_counts(world_size, epoch):
    d = _durations()
    per_rank = _all_ranks(d, world_size, epoch)
    flat = sorted(i for batches in per_rank for b in batches for i in b)
    assert flat == list(range(len(d)))
    assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank


def test_uneven_split_forced_by_world_size():
    # 4 utterances of 10 s in one 40 s batch, 3 ranks: split until 3 batches
    per_rank = _all_ranks([10.0] * 4, 3, 0)
    assert [len(b) for b in per_rank] == [1, 1, 1]
    assert sorted(i for b in per_rank for i in b[0]) == [0, 1, 2, 3]


def test_fewer_utterances_than_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match="2 utterances cannot be shared by 3 ranks"):
        BucketBatchSampler([1.0, 2.0], 10.0, rank=0, world_size=3)


def test_batch_cost_bound_and_lone_long_utterance():
    d = np.append(_durations(200), 55.0)  # one utterance longer than the bound
    s = BucketBatchSampler(d, 40.0, max_batch_size=8)
    for epoch in range(3):
        s.set_epoch(epoch)
        for b in s:
            assert len(b) <= 8
            if len(b) > 1:  # a batch of one may exceed the bound (the 55 s utterance)
                assert d[b].max() * len(b) <= 40.0
        assert [200] in list(s)


def test_deterministic_by_seed_and_epoch():
    d = _durations()
    a, b, c = (BucketBatchSampler(d, 40.0, seed=s) for s in (7, 7, 8))
    for s in (a, b, c):
        s.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) != list(c)
    b.set_epoch(3)
    assert list(a) != list(b)
    # membership itself changes between shuffled epochs, not just the order
    assert {frozenset(x) for x in a} != {frozenset(x) for x in b}


def test_sortagrad_epoch0_ascending_then_shuffled():
    d = _durations()
    s = BucketBatchSampler(d, 40.0, world_size=2, rank=1)
    longest = [d[b].max() for b in s]
    assert longest == sorted(longest)
    s.set_epoch(1)
    longest = [d[b].max() for b in s]
    assert longest != sorted(longest)

    no_sg = BucketBatchSampler(d, 40.0, sortagrad=False)
    longest = [d[b].max() for b in no_sg]
    assert longest != sorted(longest)

    fixed = BucketBatchSampler(d, 40.0, shuffle=False)
    epoch0 = list(fixed)
    fixed.set_epoch(4)
    assert list(fixed) == epoch0


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_yields_exact_tail(rank):
    d = _durations(300)
    s = BucketBatchSampler(d, 40.0, rank=rank, world_size=2, seed=3)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start_batch=5)
    assert list(s) == full[5:]
    assert len(s) == len(full) - 5

    fresh = BucketBatchSampler(d, 40.0, rank=rank, world_size=2, seed=99)
    fresh.load_state_dict(s.state_dict())
    assert s.state_dict() == {"epoch": 4, "start_batch": 5, "seed": 3}
    assert list(fresh) == full[5:]


def test_drop_last_drops_instead_of_splitting():
    # 3 batches of 4 x 10 s, 2 ranks: drop the last dealt batch, 4 utterances skip the epoch
    s0 = BucketBatchSampler([10.0] * 12, 40.0, world_size=2, rank=0, drop_last=True)
    s1 = BucketBatchSampler([10.0] * 12, 40.0, world_size=2, rank=1, drop_last=True)
    assert len(s0) == len(s1) == 1
    assert len(list(s0)[0]) == len(list(s1)[0]) == 4
    dropped = set()
    for epoch in range(1, 6):  # shuffled epochs drop different utterances
        for s in (s0, s1):
            s.set_epoch(epoch)
        kept = {i for s in (s0, s1) for b in s for i in b}
        assert len(kept) == 8
        dropped.add(frozenset(set(range(12)) - kept))
    assert len(dropped) > 1


@pytest.mark.parametrize(
    "durations",
    [
        np.random.default_rng(0).lognormal(np.log(6.0), 0.6, 2000),
        np.random.default_rng(0).uniform(1.0, 15.0, 2000),
    ],
    ids=["lognormal", "uniform"],
)
def test_padding_under_five_percent(durations):
    s = BucketBatchSampler(durations, 60.0)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert padding_fraction(durations, batches) <= 0.05
    # the bound is not met trivially: a sort jittered by +-30 % pads far more
    s1 = BucketBatchSampler(durations, 60.0, jitter=0.3)
    s1.set_epoch(1)
    assert padding_fraction(durations, list(s1)) > 0.1


FACTORS = (0.9, 1.0, 1.1)


def test_epoch_speed_factors_deterministic_uniform_and_per_epoch():
    a = epoch_speed_factors(3000, FACTORS, seed=5, epoch=2)
    assert a.shape == (3000,) and set(a.tolist()) == set(FACTORS)
    np.testing.assert_array_equal(a, epoch_speed_factors(3000, FACTORS, seed=5, epoch=2))
    counts = np.array([(a == f).sum() for f in FACTORS])
    assert np.all(np.abs(counts - 1000) < 100)  # uniform: 1000 +- 3 sigma (~26)
    for other in (
        epoch_speed_factors(3000, FACTORS, 5, 3),
        epoch_speed_factors(3000, FACTORS, 6, 2),
    ):
        assert (other != a).mean() > 0.5  # independent draws agree on ~1/3 only
    # a prefix of the corpus gets the same factors: appending utterances changes no old draw
    np.testing.assert_array_equal(epoch_speed_factors(100, FACTORS, 5, 2), a[:100])
    np.testing.assert_array_equal(epoch_speed_factors(4, (), 5, 2), np.ones(4))


@pytest.mark.parametrize("epoch", [0, 1, 4])
def test_batches_form_on_perturbed_durations(epoch):
    d = np.random.default_rng(0).lognormal(np.log(6.0), 0.6, 2000)
    s = BucketBatchSampler(d, 60.0, max_batch_size=16, speed_factors=FACTORS, seed=3)
    s.set_epoch(epoch)
    perturbed = d / epoch_speed_factors(len(d), FACTORS, seed=3, epoch=epoch)
    np.testing.assert_array_equal(s.epoch_durations(), perturbed)
    batches = list(s)
    assert sorted(i for b in batches for i in b) == list(range(len(d)))
    for b in batches:  # the memory bound holds on what the loader will deliver
        assert len(b) <= 16 and (len(b) == 1 or perturbed[b].max() * len(b) <= 60.0)
    assert padding_fraction(perturbed, batches) <= 0.05
    # the old way, batching on manifest durations and perturbing afterwards, pads 8 %+
    plain = BucketBatchSampler(d, 60.0, max_batch_size=16, seed=3)
    plain.set_epoch(epoch)
    assert padding_fraction(perturbed, list(plain)) > 0.08


@pytest.mark.parametrize("world_size", [2, 3])
def test_speed_factors_keep_coverage_equal_counts_and_resume(world_size):
    d = _durations(300)
    per_rank = _all_ranks(d, world_size, 3, speed_factors=FACTORS, seed=4)
    assert sorted(i for batches in per_rank for b in batches for i in b) == list(range(300))
    assert len({len(b) for b in per_rank}) == 1
    s = BucketBatchSampler(d, 40.0, rank=1, world_size=world_size, speed_factors=FACTORS, seed=4)
    s.set_epoch(3, start_batch=2)
    assert list(s) == per_rank[1][2:]
    fresh = BucketBatchSampler(d, 40.0, rank=1, world_size=world_size, speed_factors=FACTORS)
    fresh.load_state_dict(s.state_dict())  # the checkpoint's seed also fixes the factors
    assert list(fresh) == per_rank[1][2:]


def test_jitter_smaller_than_length_gaps_keeps_the_sorted_batches():
    # durations 10 % apart: a +-2 % jitter cannot swap neighbours, so a shuffled epoch holds
    # exactly the sorted epoch's batches, in another order; +-30 % does reorder them
    d = 1.1 ** np.arange(40.0)
    s = BucketBatchSampler(d, 2000.0, max_batch_size=4, shuffle=True, sortagrad=True)
    sorted_batches = list(s)
    assert sorted_batches == [list(range(k, k + 4)) for k in range(0, 40, 4)]
    s.set_epoch(1)
    assert list(s) != sorted_batches
    assert sorted(list(s)) == sorted_batches
    wide = BucketBatchSampler(d, 2000.0, max_batch_size=4, jitter=0.3)
    wide.set_epoch(1)
    assert sorted(list(wide)) != sorted_batches


def test_bad_jitter_or_speed_factor_is_a_clear_error():
    with pytest.raises(ValueError, match="jitter must be in"):
        BucketBatchSampler([1.0, 2.0], 10.0, jitter=-0.1)
    with pytest.raises(ValueError, match="speed_factors must all be > 0"):
        BucketBatchSampler([1.0, 2.0], 10.0, speed_factors=(1.0, 0.0))
