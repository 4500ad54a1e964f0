"""GatedAverager on loopback, in one process: weighted averages, a closed DHT, strangers
refused, compression's bytes.

    .venv/bin/python -m pytest tests/p2p/net/test_net_averager.py -q
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator  # noqa: UP035 (hivemind reads typing.AsyncIterator hints)

import pytest
import torch

pytest.importorskip("hivemind")

import hivemind  # noqa: E402
from hivemind.p2p import P2PContext  # noqa: E402
from hivemind.proto import averaging_pb2  # noqa: E402

from speechswarm.p2p.net.auth import Gate, ensure_identity, run_secret_authorizer  # noqa: E402
from speechswarm.p2p.net.averager import GatedAverager  # noqa: E402
from speechswarm.p2p.net.hivemind_sync import hivemind_compression  # noqa: E402

SECRET = b"0123456789abcdef0123"
HOST = ["/ip4/127.0.0.1/tcp/0"]


def _dht(initial=(), secret=b"", identity=None):
    kwargs = {"authorizer": run_secret_authorizer(secret)} if secret else {}
    return hivemind.DHT(
        initial_peers=list(initial) or None,
        host_maddrs=HOST,
        start=True,
        identity_path=identity,
        **kwargs,
    )


def _averager(tensors, dht, gate, compression="none", group=2, start=True, **kwargs):
    kwargs = {"min_matchmaking_time": 1.0, **kwargs}
    return GatedAverager(
        tensors,
        dht,
        gate=gate,
        prefix="test",
        start=start,
        target_group_size=group,
        request_timeout=0.3,
        allreduce_timeout=10.0,
        next_chunk_timeout=2.0,
        compression=hivemind_compression(compression),
        **kwargs,
    )


async def _never_answer(
    stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
) -> AsyncIterator[averaging_pb2.AveragingData]:
    """An all-reduce handler that hangs: its peer joins groups and sends its parts, but
    never answers for the part it reduces (a peer that stalls mid-round)."""
    await asyncio.sleep(60)
    yield averaging_pb2.AveragingData(code=averaging_pb2.INTERNAL_ERROR)


def _step_all(averagers, weights, timeout=10.0):
    results = {}

    def run(k):
        a = averagers[k]
        try:
            results[k] = a.step(weight=weights[k], gather=a.gather_info(), timeout=timeout)
        except Exception as e:  # a refused peer's step fails: record it
            results[k] = e

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(averagers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 20)
    return results


def _close(*things):
    for t in things:
        t.shutdown()


def test_members_average_by_weight_and_bytes_are_metered():
    gate = Gate(secret=SECRET)
    d0 = _dht(secret=SECRET)
    d1 = _dht([str(a) for a in d0.get_visible_maddrs()], secret=SECRET)
    n = 5000
    a0 = _averager([torch.zeros(n), torch.full((3,), 2.0)], d0, gate)
    a1 = _averager([torch.ones(n), torch.full((3,), 6.0)], d1, gate)
    try:
        # Matchmaking is best effort: on a loaded machine one peer may time out before the
        # other announces itself ("could not find a group") and the round ends with nothing
        # exchanged, as the swarm's rounds may. Such a round is run again (at most twice).
        for _ in range(3):
            results = _step_all([a0, a1], [1.0, 3.0])
            if all(isinstance(r, dict) and len(r) == 2 for r in results.values()):
                break
        assert all(isinstance(r, dict) and len(r) == 2 for r in results.values()), results
        for a in (a0, a1):
            with a.get_tensors() as (big, small):
                # weighted mean by hand: (1*0 + 3*1) / 4 and (1*2 + 3*6) / 4
                assert torch.allclose(big, torch.full((n,), 0.75))
                assert torch.allclose(small, torch.full((3,), 5.0))
        # butterfly all-reduce: each peer sends its half of the other's part (~2.5k floats)
        # and returns the averaged half (~2.5k floats): about 4 bytes x 5k values each way
        for a in (a0, a1):
            assert 0.9 * 4 * n < a.counter("bytes_sent") < 1.2 * 4 * n + 2000
            assert 0.9 * 4 * n < a.counter("bytes_recv") < 1.2 * 4 * n + 2000
    finally:
        _close(a0, a1, d0, d1)


def test_a_member_that_stalls_mid_round_is_counted_not_hidden():
    gate = Gate()
    d0 = _dht()
    addr = [str(a) for a in d0.get_visible_maddrs()]
    d1, d2 = _dht(addr), _dht(addr)
    n = 3 * 2**17  # hivemind's parts are 2**19 bytes, dealt out whole: one part per peer
    three = {"group": 3, "min_group_size": 3, "min_matchmaking_time": 3.0}
    values = (0.0, 3.0, 9.0)  # mean 4
    healthy = [_averager([torch.full((n,), values[k])], d, gate, **three) for k, d in enumerate((d0, d1))]  # fmt: skip
    stalled = _averager([torch.full((n,), values[2])], d2, gate, start=False, **three)
    stalled.rpc_aggregate_part = _never_answer  # hivemind serves the instance's attribute
    stalled.run_in_background(await_ready=True)
    try:
        results = _step_all([*healthy, stalled], [1.0, 1.0, 1.0], timeout=15.0)
        # hivemind reports every step as a success with a group of 3 ...
        assert all(isinstance(r, dict) and len(r) == 3 for r in results.values()), results
        for k, a in enumerate(healthy):
            with a.get_tensors() as (t,):
                kept, averaged = int((t == values[k]).sum()), int((t == 4.0).sum())
            # ... but the stalled peer's part stayed each healthy peer's own values: counted
            assert kept == n // 3 and averaged == n - kept
            assert a.counter("values_kept_local") == kept and a.counter("senders_dropped") == 0
        # the stalled peer averaged its own part alone, leaving out both senders
        assert stalled.counter("senders_dropped") == 2 and stalled.counter("values_kept_local") == 0
        with stalled.get_tensors() as (t,):
            assert int((t == values[2]).sum()) == n // 3 and int((t == 4.0).sum()) == n - n // 3
    finally:
        _close(*healthy, stalled, d0, d1, d2)


def test_int8_compression_quarters_the_bytes_and_stays_close():
    gate = Gate()
    d0 = _dht()
    d1 = _dht([str(a) for a in d0.get_visible_maddrs()])
    n = 20000
    x0 = torch.linspace(-1, 1, n)
    x1 = torch.linspace(1, -1, n) * 0.5
    a0 = _averager([x0.clone()], d0, gate, compression="int8")
    a1 = _averager([x1.clone()], d1, gate, compression="int8")
    try:
        results = _step_all([a0, a1], [1.0, 1.0])
        assert all(isinstance(r, dict) for r in results.values()), results
        with a0.get_tensors() as (got,):
            err = (got - (x0 + x1) / 2).abs().max()
            assert err < 0.05  # 8-bit codes: a few hundredths on values in [-1, 1]
        sent = a0.counter("bytes_sent")
        assert 0.9 * n < sent < 1.4 * n + 4000, sent  # ~1 byte per value instead of 4
    finally:
        _close(a0, a1, d0, d1)


def test_a_peer_without_the_run_secret_cannot_join_the_dht():
    d0 = _dht(secret=SECRET)
    address = [str(a) for a in d0.get_visible_maddrs()]
    try:
        with pytest.raises(RuntimeError, match="bootstrap failed"):
            _dht(address, secret=b"a wrong secret 0123456789")
        with pytest.raises(RuntimeError, match="bootstrap failed"):
            _dht(address)  # no secret at all
    finally:
        d0.shutdown()


def test_allow_list_refuses_a_strangers_tensors_and_state_downloads(tmp_path):
    from hivemind.p2p import PeerID

    keys = [str(tmp_path / f"m{k}.key") for k in range(2)]
    members = frozenset(PeerID.from_base58(ensure_identity(k)).to_bytes() for k in keys)
    gate = Gate(allowed=members)
    d0 = _dht(identity=keys[0])
    addr = [str(a) for a in d0.get_visible_maddrs()]
    d1 = _dht(addr, identity=keys[1])
    ds = _dht(addr)  # the stranger: reaches the (open) DHT, but is not on the list
    m0 = _averager([torch.zeros(100)], d0, gate, group=3)
    m1 = _averager([torch.ones(100)], d1, gate, group=3)
    stranger = _averager([torch.full((100,), 1e6)], ds, gate, group=3)
    try:
        m0.share_state({"step": 7}, [torch.zeros(100)])
        _step_all([m0, m1, stranger], [1.0, 1.0, 1.0], timeout=12.0)
        for a in (m0, m1):
            with a.get_tensors() as (t,):
                assert float(t.max()) < 2.0, "the stranger's values reached a member"
        # members leave any group the stranger leads before sending a byte: its "average" is
        # its own tensor (hivemind drops senders that never arrive), nothing of theirs
        with stranger.get_tensors() as (t,):
            assert torch.equal(t, torch.full((100,), 1e6))
        # No tensor byte reaches the stranger (100 values: >= 100 bytes even as int8). A bare
        # control message may (an AveragingData holding only its code is 2 bytes), depending
        # on timing: 2 bytes were seen in 2 full-suite runs on the session-4 machine.
        assert stranger.counter("bytes_recv") < 16
        refused = sum(a.counter("rejected_joins") + a.counter("rejected_groups") for a in (m0, m1))
        assert refused >= 1
        assert stranger.load_state_from_peers(timeout=5.0) is None
        assert m0.counter("rejected_downloads") >= 1
        # a member downloads from a member, never from the stranger (which, with hivemind's
        # default allow_state_sharing, declares itself a donor on the open DHT)
        got = m1.load_state_from_peers(timeout=5.0)
        assert got is not None and got[0]["step"] == 7 and torch.equal(got[1][0], torch.zeros(100))
    finally:
        _close(m0, m1, stranger, d0, d1, ds)


@pytest.mark.parametrize("mode", ["nan", "shape"])
def test_a_member_sending_garbage_is_left_out_and_then_avoided(monkeypatch, mode):
    """A member of the run whose every outgoing part is NaN, or one value too long (which
    hivemind added to the buffers as it came, then failed to reshape, retrying the round to
    its deadline): its parts are refused before they are added, and it is left out of the
    next round."""
    from speechswarm.chaos.net_fault_peer import FAULT_ENV, FaultyAverager

    gate = Gate()
    d0 = _dht()
    addr = [str(a) for a in d0.get_visible_maddrs()]
    d1, d2 = _dht(addr), _dht(addr)
    n = 3 * 2**17  # one part of the vector per member
    three = {"group": 3, "min_group_size": 2, "min_matchmaking_time": 3.0}
    values = (0.0, 3.0)  # mean 1.5
    healthy = [_averager([torch.full((n,), values[k])], d, gate, max_norm_ratio=5.0, **three)
               for k, d in enumerate((d0, d1))]  # fmt: skip
    monkeypatch.setenv(FAULT_ENV, f'{{"kind": "garbage", "mode": "{mode}"}}')
    bad = FaultyAverager(
        [torch.full((n,), 2.0)], d2, gate=gate, prefix="test", start=True, target_group_size=3,
        min_group_size=2, min_matchmaking_time=3.0, request_timeout=0.3, allreduce_timeout=10.0,
        next_chunk_timeout=2.0, compression=hivemind_compression("none"),
    )  # fmt: skip
    try:
        results = _step_all([*healthy, bad], [1.0, 1.0, 1.0], timeout=15.0)
        assert all(isinstance(results[k], dict) and len(results[k]) == 3 for k in (0, 1)), results
        for k, a in enumerate(healthy):
            with a.get_tensors() as (t,):
                assert bool(torch.isfinite(t).all())
                kept, averaged = int((t == values[k]).sum()), int((t == 1.5).sum())
            # the bad member's part stays this peer's own; the rest is the healthy pair's mean
            assert kept == n // 3 and averaged == n - kept
            assert a.counter("rejected_parts") == 2  # its part for this peer, its answer
            assert a.counter("offenders") == 1 and a.counter("senders_dropped") == 1
        before = [(a.counter("values_kept_local"), a.counter("senders_dropped")) for a in healthy]
        for k, a in enumerate(healthy):  # a fresh round: back to own values
            with a.get_tensors() as (t,):
                t.fill_(values[k])
        results = _step_all([*healthy, bad], [1.0, 1.0, 1.0], timeout=15.0)
        assert all(isinstance(results[k], dict) and len(results[k]) == 2 for k in (0, 1)), results
        for k, a in enumerate(healthy):
            with a.get_tensors() as (t,):
                kept, averaged = int((t == values[k]).sum()), int((t == 1.5).sum())
            # the pair's mean everywhere; on a loaded machine hivemind may finish the round
            # without a late part (its values stay local) or a late sender (the part this peer
            # reduces is its own): either way the values stay own values and are counted
            assert kept + averaged == n and averaged >= n // 3, (kept, averaged)
            local, dropped = (a.counter(c) - b for c, b in zip(
                ("values_kept_local", "senders_dropped"), before[k], strict=True))  # fmt: skip
            assert kept == 0 or local == kept or dropped >= 1, (kept, local, dropped)
            assert a.counter("rejected_parts") == 2  # nothing new from the bad member
        assert sum(a.counter("rejected_joins") + a.counter("rejected_groups") for a in healthy) >= 1
    finally:
        _close(*healthy, bad, d0, d1, d2)


@pytest.mark.parametrize("aggregation", ["median", "mean"])
def test_under_median_a_member_sending_huge_values_moves_nothing(aggregation):
    """4 members, one share of the vector each: three send 0, 1 and 2, one sends 1e3 (the part
    check's scale bound off, as with p2p.validate=false: a lie it lets through). The mean
    drags every value to 250.75; under the median each share ends at 1.5 (the middle two of
    0, 1, 2, 1e3), within the honest values. On a loaded machine hivemind may drop a slow
    member from a share (its values stay local, or 3 remain): still within the honest range
    under the median, so that is what is asserted, with most shares exactly 1.5."""
    gate = Gate()
    d0 = _dht()
    addr = [str(a) for a in d0.get_visible_maddrs()]
    dhts = [d0, *(_dht(addr) for _ in range(3))]
    n = 4 * 2**17  # hivemind's parts are 2**19 bytes: one share per member
    four = {"group": 4, "min_group_size": 4, "min_matchmaking_time": 3.0}
    values = (0.0, 1.0, 2.0, 1e3)
    averagers = [_averager([torch.full((n,), v)], d, gate, aggregation=aggregation, **four)
                 for v, d in zip(values, dhts, strict=True)]  # fmt: skip
    try:
        results = _step_all(averagers, [1.0] * 4, timeout=15.0)
        assert all(isinstance(r, dict) and len(r) == 4 for r in results.values()), results
        for a in averagers[:3]:  # the honest members
            with a.get_tensors() as (t,):
                if aggregation == "median":
                    assert float(t.min()) >= 0.0 and float(t.max()) <= 2.0
                    assert float((t == 1.5).double().mean()) >= 0.5
                else:
                    assert float((t == 250.75).double().mean()) >= 0.5
        if aggregation == "median":  # the shares were reduced by the median
            assert sum(a.counter("robust_parts") for a in averagers) >= 3
    finally:
        _close(*averagers, *dhts)


def test_a_newcomer_refuses_a_corrupt_state_and_takes_a_members_position():
    """Over loopback: a member offering optimizer moments with Inf is refused (the newcomer
    keeps its own state); once a healthy member offers its state, the newcomer takes its
    weights, Adam moments, step and LR."""
    import logging
    import time

    from test_net_state_transfer import CLIP, _names, _spoil, _train, _trainee

    from speechswarm.p2p.net.state_transfer import load_from_peers, pack_state

    gate = Gate()
    d0 = _dht()
    addr = [str(a) for a in d0.get_visible_maddrs()]
    d1, d2 = _dht(addr), _dht(addr)
    donor = _trainee(seed=0)
    _train(*donor, 6)
    names = _names(donor[0])
    good = pack_state(donor[0], names, donor[1], step=6, round=3)
    bad = (dict(good[0]), [t.clone() for t in good[1]])
    _spoil("optimizer nonfinite", *bad, names)
    newcomer = _trainee(seed=5)
    start = [newcomer[0].state_dict()[n].clone() for n in names]
    off = {"allow_state_sharing": False}
    a_bad, a_good, a_new = (_averager(start, d, gate, **off) for d in (d0, d1, d2))
    kwargs = dict(grad_clip=CLIP, max_steps=20, timeout=3.0, log=logging.getLogger("test"))

    def load():
        deadline = time.monotonic() + 15.0
        while True:  # a donor's declaration reaches the DHT a moment after share_state
            got = load_from_peers(a_new, *newcomer, names, **kwargs)
            if got["loaded"] or got["refused"] or time.monotonic() > deadline:
                return got
            time.sleep(0.5)

    try:
        a_bad.share_state(*bad)
        got = load()
        assert got["refused"] == ["optimizer nonfinite"] and not got["loaded"], got
        assert newcomer[3].step == 0 and torch.equal(newcomer[0].state_dict()[names[0]], start[0])
        a_good.share_state(*good)
        got = load()
        assert got["loaded"] and got["position"] and got["from_step"] == 6, got
        model, optimizer, _, state = newcomer
        assert state.step == 6 and optimizer.state_dict()["state"][0]["step"] == 6.0
        assert optimizer.param_groups[0]["lr"] == donor[1].param_groups[0]["lr"]
        for n in names:
            assert torch.equal(model.state_dict()[n], donor[0].state_dict()[n]), n
    finally:
        _close(a_bad, a_good, a_new, d0, d1, d2)
