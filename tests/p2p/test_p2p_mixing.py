"""The pure exchange math against hand-computed answers: mixing weights, averaging, robust
aggregation, validation, compression, consensus.

    .venv/bin/python -m pytest tests/p2p/test_p2p_mixing.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechswarm.p2p import mixing
from speechswarm.p2p.topology import complete, ring


def state(*values: float, count: int = 7) -> dict:
    """A tiny state dict: one 2-element weight, one scalar bias, an int counter."""
    return {
        "w": torch.tensor(values[:2], dtype=torch.float32),
        "b": torch.tensor(values[2], dtype=torch.float32),
        "n": torch.tensor(count, dtype=torch.int64),
    }


def test_pull_matrix_data_size_weights_by_hand():
    # path 0 - 1 - 2 with 1, 2 and 3 training utterances
    adj = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=bool)
    w = mixing.pull_matrix(adj, [1, 2, 3])
    expected = np.array([[1 / 3, 2 / 3, 0], [1 / 6, 2 / 6, 3 / 6], [0, 2 / 5, 3 / 5]])
    np.testing.assert_allclose(w, expected)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)


def test_pull_matrix_uniform_ring_is_doubly_stochastic():
    w = mixing.pull_matrix(ring(5))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    assert w[0, 0] == w[0, 1] == w[0, 4] == pytest.approx(1 / 3) and w[0, 2] == 0


def test_pull_matrix_directed_uses_in_neighbours_only():
    adj = np.zeros((3, 3), dtype=bool)
    adj[0, 1] = True  # 0 pulls from 1; nobody pulls from 0
    w = mixing.pull_matrix(adj, [1, 3, 1])
    np.testing.assert_allclose(w, [[0.25, 0.75, 0], [0, 1, 0], [0, 0, 1]])


def test_pull_matrix_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        mixing.pull_matrix(ring(3), [1, 0, 2])


def test_data_size_weights():
    np.testing.assert_allclose(mixing.data_size_weights([1, 3]), [0.25, 0.75])


def test_average_equals_analytic_weighted_mean():
    a, b, c = state(1, 2, 3, count=1), state(4, 8, -3, count=2), state(0, -1, 6, count=3)
    out = mixing.average_states([a, b, c], [1, 2, 3], keep_from=1)
    # (1*a + 2*b + 3*c) / 6
    torch.testing.assert_close(out["w"], torch.tensor([9 / 6, 15 / 6]))
    assert out["b"].item() == pytest.approx((3 - 6 + 18) / 6)
    assert out["n"].item() == 2  # integer tensors come from keep_from, never averaged
    assert out["w"].dtype == torch.float32


def test_average_unweighted_is_the_mean():
    out = mixing.average_states([state(1, 2, 3), state(3, 4, 5)])
    torch.testing.assert_close(out["w"], torch.tensor([2.0, 3.0]))


def test_average_refuses_mismatched_states():
    bad = {"w": torch.zeros(3), "b": torch.tensor(0.0), "n": torch.tensor(1)}
    with pytest.raises(ValueError, match="shape"):
        mixing.average_states([state(1, 2, 3), bad])


def test_median_and_trimmed_mean_by_hand():
    states = [state(1, 10, 0), state(2, 20, 0), state(100, -50, 0)]
    med = mixing.median_states(states)
    torch.testing.assert_close(med["w"], torch.tensor([2.0, 10.0]))
    five = [state(v, v, v) for v in (1, 2, 3, 4, 100)]
    tm = mixing.trimmed_mean_states(five, trim=0.2)  # drop 1 and 100 per coordinate
    torch.testing.assert_close(tm["w"], torch.tensor([3.0, 3.0]))
    assert mixing.aggregate(five, None, method="trimmed_mean", trim=0.0)["b"].item() == 22.0


def test_median_ignores_one_liar_among_three():
    honest = [state(1, 1, 1), state(1.2, 0.8, 1)]
    liar = state(1e6, -1e6, 1e6)
    out = mixing.aggregate([*honest, liar], [1, 1, 1], method="median")
    assert out["w"].abs().max() < 2


def test_median_by_hand_and_a_nan_liar_is_the_largest_value():
    odd = [state(1, 5, 0), state(3, 4, 0), state(2, 9, 0)]
    assert mixing.median_states(odd)["w"].tolist() == [2, 5]
    even = [*odd, state(4, 1, 0)]
    assert mixing.median_states(even)["w"].tolist() == [2.5, 4.5]
    honest = [state(1, 1, 1), state(2, 3, 2), state(3, 2, 3), state(4, 4, 4)]
    out = mixing.median_states([*honest, state(math.nan, math.nan, math.nan)])
    assert out["w"].tolist() == [3, 3] and out["b"].item() == 3  # 3rd of 1, 2, 3, 4, NaN
    assert mixing.within_range(out, honest)


def test_check_received_reasons():
    own = state(1, 2, 3)
    assert mixing.check_received(state(1.5, 2, 3), own, 5.0) == ""
    assert mixing.check_received(state(math.nan, 2, 3), own, 5.0) == "nonfinite"
    assert mixing.check_received(state(1, math.inf, 3), own, 5.0) == "nonfinite"
    assert mixing.check_received(state(100, 200, 300), own, 5.0) == "norm"
    assert mixing.check_received(state(0.01, 0.02, 0.03), own, 5.0) == "norm"
    wrong_shape = dict(own, w=torch.zeros(3))
    assert mixing.check_received(wrong_shape, own, 5.0) == "shape"
    assert mixing.check_received({"w": own["w"]}, own, 5.0) == "keys"


def test_compression_sizes_and_errors():
    torch.manual_seed(0)
    s = {"a": torch.randn(100), "b": torch.randn(3, 5), "n": torch.tensor(4)}
    payload, nbytes = mixing.compress(s, "none")
    assert nbytes == 4 * 115 + 8
    payload, nbytes = mixing.compress(s, "fp16")
    assert nbytes == 2 * 115 + 8
    back = mixing.decompress(payload)
    assert back["a"].dtype == torch.float32
    assert (back["a"] - s["a"]).abs().max() < 2e-3
    payload, nbytes = mixing.compress(s, "int8")
    assert nbytes == 115 + 2 * 4 + 8  # 1 byte per value + one fp32 scale per float tensor
    back = mixing.decompress(payload)
    scale = s["a"].abs().max() / 127
    assert (back["a"] - s["a"]).abs().max() <= scale / 2 + 1e-7
    assert back["n"].item() == 4


def test_a_compressed_change_loses_far_less_than_compressed_weights():
    """Delta messages: int8 on the change since a shared model quantises on the change's
    scale. Weights ~N(0, 1) that moved by ~1e-3: int8 of the weights errs by up to
    max|w| / 254 (~1e-2, ten times the change itself), int8 of the change by ~1e-5."""
    torch.manual_seed(0)
    shared = {"w": torch.randn(1000), "n": torch.tensor(3)}
    moved = {"w": shared["w"] + 1e-3 * torch.randn(1000), "n": torch.tensor(5)}
    change = mixing.difference(moved, shared)
    assert torch.allclose(change["w"], moved["w"] - shared["w"]) and change["n"].item() == 5
    whole = mixing.decompress(mixing.compress(moved, "int8")[0])
    rebuilt = mixing.add_back(mixing.decompress(mixing.compress(change, "int8")[0]), shared)
    err_whole = (whole["w"] - moved["w"]).abs().max().item()
    err_delta = (rebuilt["w"] - moved["w"]).abs().max().item()
    assert err_whole > 3e-3 and err_delta < 3e-5, (err_whole, err_delta)
    assert rebuilt["n"].item() == 5  # integer tensors travel whole
    lossless = mixing.add_back(mixing.decompress(mixing.compress(change, "none")[0]), shared)
    torch.testing.assert_close(lossless["w"], moved["w"], rtol=0, atol=1e-6)
    # a liar's NaN survives the round trip for validation to refuse
    poisoned = mixing.difference(dict(moved, w=torch.full((1000,), math.nan)), shared)
    back = mixing.add_back(mixing.decompress(mixing.compress(poisoned, "int8")[0]), shared)
    assert mixing.check_received(back, shared, 5.0) == "nonfinite"


def payload_bytes(payload: dict) -> int:
    """What the payload's tensors hold, counted from the tensors themselves."""
    total = 0
    for item in payload["tensors"].values():
        parts = [item] if isinstance(item, torch.Tensor) else item
        for part in parts:
            if isinstance(part, torch.Tensor):
                total += part.numel() * part.element_size()
            elif isinstance(part, float):
                total += 4  # int8's scale, sent as fp32
    return total


@pytest.mark.parametrize("kind", mixing.COMPRESSIONS)
def test_compressed_size_is_what_the_payload_holds(kind):
    """The counted bytes are the packed codes and scales, for odd sizes and sizes across
    a block boundary too."""
    torch.manual_seed(0)
    s = {"a": torch.randn(3 * mixing.BLOCK + 5), "b": torch.randn(3), "c": torch.randn(0),
         "n": torch.tensor(4)}  # fmt: skip
    payload, nbytes = mixing.compress(s, kind)
    assert nbytes == payload_bytes(payload) == mixing.compressed_size(s, kind)
    back = mixing.decompress(payload)
    assert {k: (t.shape, t.dtype) for k, t in back.items()} == {
        k: (t.shape, t.dtype) for k, t in s.items()
    }


def test_int4_int2_and_sign_codes_by_hand():
    n = mixing.BLOCK + 3  # a full block and a block of 3
    x = torch.linspace(-1.0, 1.0, n)
    payload, nbytes = mixing.compress({"x": x}, "int4")
    assert nbytes == (n + 1) // 2 + 2 * 4
    back = mixing.decompress(payload)["x"]
    full, tail = x[: mixing.BLOCK], x[mixing.BLOCK :]
    assert (back[: mixing.BLOCK] - full).abs().max() <= full.abs().max() / 7 / 2 + 1e-6
    assert (back[mixing.BLOCK :] - tail).abs().max() <= tail.abs().max() / 7 / 2 + 1e-6
    payload, nbytes = mixing.compress({"x": x}, "int2")
    assert nbytes == (n + 3) // 4 + 2 * 4
    back = mixing.decompress(payload)["x"]  # ternary: 0 or +-max|x| of the block
    assert torch.equal(
        back[: mixing.BLOCK], full.abs().max() * torch.round(full / full.abs().max())
    )
    assert set(back[mixing.BLOCK :].abs().tolist()) <= {0.0, tail.abs().max().item()}
    payload, nbytes = mixing.compress({"x": x}, "sign")
    assert nbytes == (n + 7) // 8 + 2 * 4
    back = mixing.decompress(payload)["x"]
    assert torch.equal(back >= 0, x >= 0)  # the signs, and each block's mean |x|
    torch.testing.assert_close(back[: mixing.BLOCK].abs(), full.abs().mean().expand(mixing.BLOCK))
    torch.testing.assert_close(back[mixing.BLOCK :].abs(), tail.abs().mean().expand(3))


def test_running_statistics_go_int8_under_change_only_codes():
    """A variance of 0.01 that fell by 0.005 among variances that grew by 1: a sign code
    would send the block's mean change, about -1, and turn it negative; int8 keeps it
    within 1 / 254 of 0.005."""
    var = torch.cat([torch.tensor([0.01]), torch.full((99,), 2.0)])
    change = {"bn.running_var": torch.cat([torch.tensor([-0.005]), torch.full((99,), 1.0)])}
    change["w"] = torch.randn(100)
    for kind in ("int4", "int2", "sign"):
        payload, nbytes = mixing.compress(change, kind, stats=["bn.running_var"])
        assert nbytes == 100 + 4 + mixing.compressed_size({"w": change["w"]}, kind)
        back = mixing.decompress(payload)
        assert (var + back["bn.running_var"]).min() >= 0.005 - 1 / 254
    back = mixing.decompress(mixing.compress(change, "sign")[0])
    assert (var + back["bn.running_var"]).min() < 0  # what the exception is for


@pytest.mark.parametrize("kind", ["int4", "int2", "sign"])
def test_error_feedback_sends_every_part_of_the_changes_late(kind):
    """The same change sent 80 times: with error feedback the receiver's running sum is
    the true sum up to the residual, which grows far slower than the sum (sign: about as
    the square root of the messages here; int4: not at all); without it, every message
    misses the same part, and the error grows as the sum, 4-fold from 20 messages to 80."""
    torch.manual_seed(0)
    change = {"w": torch.randn(1000) * torch.rand(1000) ** 2, "n": torch.tensor(1)}
    total_ef, total_plain = torch.zeros(1000), torch.zeros(1000)
    residual, errors = None, {}
    for i in range(1, 81):
        payload, _, residual = mixing.compress_with_feedback(change, residual, kind)
        total_ef += mixing.decompress(payload)["w"]
        total_plain += mixing.decompress(mixing.compress(change, kind)[0])["w"]
        if i in (20, 80):
            errors[i] = [float((t - i * change["w"]).norm()) for t in (total_ef, total_plain)]
    torch.testing.assert_close(total_ef + residual["w"], 80 * change["w"], rtol=0, atol=1e-3)
    (ef20, plain20), (ef80, plain80) = errors[20], errors[80]
    assert ef80 < 2.5 * ef20 and plain80 > 3.9 * plain20, errors
    assert ef80 < plain80 / 3, errors


def test_a_non_finite_residual_is_dropped():
    payload, _, residual = mixing.compress_with_feedback(state(math.nan, 2, 3), None, "sign")
    assert mixing.check_received(mixing.decompress(payload), state(1, 2, 3), 5.0) == "nonfinite"
    assert all(torch.equal(t, torch.zeros_like(t)) for t in residual.values())
    assert set(residual) == {"w", "b"}  # floating tensors only


def test_compressed_nan_is_still_caught():
    own = state(1, 2, 3)
    for kind in ("fp16", "int8", "int4", "int2", "sign"):
        payload, _ = mixing.compress(state(math.nan, 2, 3), kind)
        assert mixing.check_received(mixing.decompress(payload), own, 5.0) == "nonfinite"


def test_corrupt_faults():
    s = state(1, 2, 3)
    g = torch.Generator().manual_seed(0)
    assert torch.isnan(mixing.corrupt(s, "nan", 0, g)["w"]).any()
    assert mixing.corrupt(s, "scale", 10, g)["b"].item() == 30
    assert mixing.corrupt(s, "nan", 0, g)["n"].item() == 7
    flipped = mixing.corrupt(s, "sign_flip", 0, g)
    assert flipped["w"].tolist() == [-1, -2] and flipped["b"].item() == -3
    assert flipped["n"].item() == 7  # a batch counter is not a weight
    assert s["w"].tolist() == [1, 2]  # the agent's own state is left alone
    with pytest.raises(ValueError, match="unknown fault 'nope'"):
        mixing.corrupt(s, "nope", 0, g)


def test_stale_fault_replays_the_earlier_state_whole():
    g = torch.Generator().manual_seed(0)
    earlier = state(5, 6, 7, count=2)
    sent = mixing.corrupt(state(1, 2, 3, count=9), "stale", 0, g, earlier=earlier)
    assert sent["w"].tolist() == [5, 6] and sent["b"].item() == 7 and sent["n"].item() == 2
    assert sent["w"] is not earlier["w"]
    with pytest.raises(ValueError, match="earlier state"):
        mixing.corrupt(state(1, 2, 3), "stale", 0, g)


def test_random_fault_keeps_each_tensors_mean_and_std_so_the_norm_check_passes_it():
    torch.manual_seed(0)
    own = {"w": 0.1 + 0.02 * torch.randn(10_000), "b": torch.tensor(0.5), "n": torch.tensor(3)}
    sent = mixing.corrupt(own, "random", 0, torch.Generator().manual_seed(1))
    assert sent["w"].mean().item() == pytest.approx(0.1, abs=1e-3)
    assert sent["w"].std().item() == pytest.approx(0.02, rel=0.05)
    assert abs(torch.corrcoef(torch.stack([sent["w"], own["w"]]))[0, 1].item()) < 0.05
    assert sent["b"].item() == 0.5 and sent["n"].item() == 3  # one value: std 0
    assert mixing.check_received(sent, own, 5.0) == ""
    again = mixing.corrupt(own, "random", 0, torch.Generator().manual_seed(1))
    assert torch.equal(again["w"], sent["w"])  # seeded by the generator


def test_wrong_shape_fault_is_refused_as_shape_with_or_without_value_checks():
    own = state(1, 2, 3)
    sent = mixing.corrupt(own, "wrong_shape", 0, torch.Generator())
    assert sent["w"].shape == (3,) and sent["b"].shape == (2,) and sent["n"].shape == ()
    assert mixing.check_layout(sent, own) == "shape"
    assert mixing.check_received(sent, own, 5.0) == "shape"
    assert mixing.check_layout(state(math.nan, 1e9, 3), own) == ""  # values are not layout
    assert mixing.check_layout(dict(own, n=torch.tensor(7.0)), own) == "dtype"


def test_within_range_is_the_honest_states_box():
    honest = [state(1, 4, 0), state(3, 2, 1)]
    assert mixing.within_range(state(2, 3, 0.5), honest)
    assert mixing.within_range(state(1, 4, 1), honest)  # the edges count
    assert not mixing.within_range(state(2, 5, 0.5), honest)
    assert not mixing.within_range(state(math.nan, 3, 0.5), honest)
    assert mixing.within_range(state(2, 3, 0.5, count=99), honest)  # integers are copied


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_robust_aggregates_stay_in_the_honest_range_and_the_mean_does_not(method):
    """4 honest states and one liar of every kind: median and trimmed mean (trim 0.2 of 5
    cuts one value per side) land inside the honest box; the mean is dragged out of it."""
    torch.manual_seed(0)
    honest = [{"w": torch.randn(50), "n": torch.tensor(1)} for _ in range(4)]
    g = torch.Generator().manual_seed(0)
    for fault in ("scale", "sign_flip", "random"):
        liar = mixing.corrupt(honest[0], fault, 1e6, g)
        agg = mixing.aggregate([*honest, liar], None, method=method, trim=0.2)
        assert mixing.within_range(agg, honest), (method, fault)
        mean = mixing.aggregate([*honest, liar], None, method="mean")
        assert not mixing.within_range(mean, honest), fault


def test_state_distance_by_hand():
    assert mixing.state_distance(state(1, 2, 3), state(4, 6, 3)) == pytest.approx(5.0)
    assert mixing.state_distance(state(1, 2, 3, count=1), state(1, 2, 3, count=9)) == 0.0


def test_second_eigenvalue_by_hand():
    assert mixing.second_eigenvalue(mixing.pull_matrix(complete(5))) == pytest.approx(0, abs=1e-12)
    # ring of 4, uniform: circulant (1/3)(1 + 2 cos(2 pi k / 4)): 1, 1/3, -1/3, 1/3
    assert mixing.second_eigenvalue(mixing.pull_matrix(ring(4))) == pytest.approx(1 / 3)


def test_ring_consensus_converges_to_the_stationary_mean():
    """Gossip without training: every agent converges to pi . x (the plain mean when
    weights are uniform), and the spread shrinks every few rounds."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3))
    for sizes, target in ((None, x.mean(axis=0)), ([1, 2, 3, 4, 5, 6, 7, 8], None)):
        w = mixing.pull_matrix(ring(8), sizes)
        pi = mixing.stationary_weights(w)
        assert pi @ w == pytest.approx(pi)
        expected = pi @ x if target is None else target
        states = [{"v": torch.tensor(row, dtype=torch.float64)} for row in x]
        spreads = []
        for _ in range(300):
            states = [
                mixing.average_states(states, w[i]) for i in range(8)
            ]  # one synchronous round
            stacked = torch.stack([s["v"] for s in states]).numpy()
            spreads.append(np.ptp(stacked, axis=0).max())
        np.testing.assert_allclose(stacked, np.tile(expected, (8, 1)), atol=1e-8)
        assert spreads[-1] < 1e-8 < spreads[0]
        assert all(b <= a + 1e-12 for a, b in zip(spreads[::10], spreads[10::10], strict=False))


def test_outer_step_by_hand_nesterov_and_heavy_ball():
    def st(w, bn=5.0):
        return {"w": torch.tensor([w]), "bn.running_mean": torch.tensor([bn]), "n": torch.tensor(3)}

    # round 1: g = 1.0 - 0.8 = 0.2, m = 0.2; Nesterov step g + 0.5 m = 0.3
    new, m = mixing.outer_step(st(1.0), st(0.8, bn=7.0), None, 1.0, 0.5, skip=["bn.running_mean"])
    assert new["w"].item() == pytest.approx(0.7)
    assert new["bn.running_mean"].item() == 7.0 and new["n"].item() == 3  # taken from mixed
    assert set(m) == {"w"}
    # round 2: g = 0.7 - 0.6 = 0.1, m = 0.5 * 0.2 + 0.1 = 0.2, step 0.1 + 0.1 = 0.2
    new, m = mixing.outer_step(new, st(0.6), m, 1.0, 0.5)
    assert new["w"].item() == pytest.approx(0.5) and m["w"].item() == pytest.approx(0.2)
    # heavy ball with outer lr 0.5: step = m = 0.2 -> 1.0 - 0.5 * 0.2
    new, _ = mixing.outer_step(st(1.0), st(0.8), None, 0.5, 0.9, nesterov=False)
    assert new["w"].item() == pytest.approx(0.9)


def test_outer_step_with_lr_one_and_no_momentum_is_plain_averaging():
    gen = torch.Generator().manual_seed(0)
    anchor = {"w": torch.randn(4, 3, generator=gen)}
    mixed = {"w": torch.randn(4, 3, generator=gen)}
    new, _ = mixing.outer_step(anchor, mixed, None, 1.0, 0.0)
    assert torch.allclose(new["w"], mixed["w"], atol=1e-6)
