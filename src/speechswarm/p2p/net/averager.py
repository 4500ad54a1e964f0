"""hivemind's DecentralizedAverager with a door and a meter: members only, bytes counted.

    averager = GatedAverager(tensors, dht, gate=Gate(secret=...), prefix="run", start=True,
                             target_group_size=2, min_matchmaking_time=1.0, request_timeout=0.5)
    averager.step(weight=120.0, gather=averager.gather_info(step=40), timeout=10.0)

Every way in is checked with `auth.Gate` against the libp2p-authenticated peer ID:
- `rpc_join_group` (a follower asks this leader for a place): refused with PROTOCOL_VIOLATION
  unless the follower's ID and tag pass;
- `_aggregate_with_group` (a group was formed, before any tensor is sent): every member's ID
  and gathered tag must pass, or this peer leaves the round (a stranger leader is caught here);
- `rpc_download_state` (a newcomer loads the model): the requester's membership record in the
  run's DHT (`<prefix>_members`, subkey = peer ID, value = tag) must pass;
- `_load_state_from_peers` (this peer is the newcomer): only members are asked for a state
  (`download_state`: also names the donor, and skips donors whose state was refused).
The parts this peer reduces are combined by p2p.aggregation: hivemind's weighted mean, or a
coordinate-wise median or trimmed mean (`robust_reduce.RobustPartReducer`).
All-reduce parts themselves are accepted by hivemind only from the group's members, and each
is checked before hivemind adds it (`CountingRunner`, `part_check.part_problem`: length,
finite values, weight, scale): a member whose part fails is left out of that part of the
round and, from then on, of this peer's groups (refused at `rpc_join_group`, left at
`_aggregate_with_group`), as an `offender` for the rest of this peer's run.

Bytes are measured on the all-reduce streams (serialized protobuf messages, both directions,
after compression) and on state downloads served, into counters shared with the host process;
so are the members a round went on without (see `_run_allreduce_inplace_`).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import math
import multiprocessing as mp
import random
import threading
from typing import AsyncIterator  # noqa: UP035 (hivemind reads typing.AsyncIterator hints)

import numpy as np
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.matchmaking import MatchmakingException
from hivemind.averaging.partition import AllreduceException
from hivemind.compression import deserialize_torch_tensor
from hivemind.compression.quantization import Quantization
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import aiter_with_timeout, as_aiter, azip
from hivemind.utils.mpfuture import MPFuture
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.streaming import combine_from_streaming
from hivemind.utils.timed_storage import ValueWithExpiration

from speechswarm.p2p.net.auth import Gate
from speechswarm.p2p.net.part_check import part_problem
from speechswarm.p2p.net.robust_reduce import RobustPartReducer


def _extract_8bit(self, serialized_tensor):
    """hivemind 1.1.12's Quantization.extract with one fix: it calls int() on a 1-element
    array, which NumPy 2.x refuses ("only 0-dimensional arrays can be converted"), so every
    8-bit message failed to decode. Same wire format, same result."""
    buffer = serialized_tensor.buffer
    codebook_size = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
    codebook = np.frombuffer(buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
    quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
    quantized = torch.as_tensor(quantized, dtype=torch.int64).reshape(tuple(serialized_tensor.size))
    codebook = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
    return codebook[quantized].requires_grad_(serialized_tensor.requires_grad)


Quantization.extract = _extract_8bit  # every process that imports this module decodes 8-bit

COUNTERS = ("bytes_sent", "bytes_recv", "state_bytes_sent", "rejected_joins", "rejected_groups",
            "rejected_downloads", "rejected_donors", "values_kept_local", "senders_dropped",
            "rejected_parts", "offenders", "robust_parts", "fallback_parts")  # fmt: skip
logger = logging.getLogger("speechswarm.p2p.net")


def gathered_tag(raw: bytes) -> bytes | None:
    """The member tag inside a peer's serialized gather data (hivemind packs
    [bandwidth, mode, user_bytes] with msgpack; user_bytes is our {"tag": ...}); None when
    absent or malformed. msgpack only: nothing from the network is unpickled."""
    try:
        _, _, user = MSGPackSerializer.loads(raw)
        info = MSGPackSerializer.loads(user)
        tag = info.get("tag") if isinstance(info, dict) else None
        return tag if isinstance(tag, bytes) else None
    except Exception:  # any malformed input is simply "no tag"
        return None


async def _counted(stream, counter, lock):
    async for msg in stream:
        with lock:
            counter.value += msg.ByteSize()
        yield msg


class _CountingStub:
    """A peer stub whose all-reduce streams add their message sizes to the counters; the
    answers (averaged parts) pass `check` on their way in."""

    def __init__(self, stub, counters, lock, check):
        self._stub, self._counters, self._lock, self._check = stub, counters, lock, check

    async def rpc_aggregate_part(self, inputs):
        sent, recv = self._counters["bytes_sent"], self._counters["bytes_recv"]
        stream = await self._stub.rpc_aggregate_part(_counted(inputs, sent, self._lock))
        return self._check(_counted(stream, recv, self._lock))


class CountingRunner(AllReduceRunner):
    """AllReduceRunner that meters both the parts it sends and those it serves, and checks
    every part that comes in (`part_check.part_problem`) before hivemind uses it: a sender's
    bad part ends its stream, and hivemind drops that sender from this part's average; a
    reducer's bad answer counts as no answer, and this peer keeps its own values for that
    part. Either way `on_offence(peer_id, reason)` is told. `aggregation` other than "mean":
    the parts this peer reduces go through `RobustPartReducer` (median or trimmed mean, with
    `trim`), which tells `on_reduce(rule)` the rule each part got."""

    def __init__(
        self, *args, counters, lock, max_norm_ratio=None, on_offence=None, aggregation="mean",
        trim=0.2, on_reduce=None, **kwargs,
    ):  # fmt: skip
        super().__init__(*args, **kwargs)
        if aggregation != "mean":  # hivemind built its reducer; nothing has used it yet
            self.tensor_part_reducer = RobustPartReducer(
                tuple(part.shape for part in self.parts_for_local_averaging),
                len(self.sender_peer_ids), method=aggregation, trim=trim,
                on_reduce=on_reduce or (lambda rule: None),
            )  # fmt: skip
        self._counters, self._lock = counters, lock
        self._max_norm_ratio = max_norm_ratio
        self._on_offence = on_offence or (lambda peer, reason: None)
        # this peer's values of each member's range, part by part: views of the tensors being
        # averaged, which change only once every delta of their tensor is in (as hivemind's
        # own `averaged_part - tensor_part` assumes)
        by_peer = self.tensor_part_container._input_parts_by_peer
        self._own_parts = [tuple(part for part, _ in parts) for parts in by_peer]
        # the RMS of this peer's whole vector: part_problem's floor for small tensors
        vector = self.tensor_part_container.local_tensors
        squares = sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in vector)
        self._floor_rms = math.sqrt(squares / max(1, sum(t.numel() for t in vector)))

    def _get_peer_stub(self, peer):
        own = self._own_parts[self.ordered_peer_ids.index(peer)]
        check = functools.partial(self._checked, peer=peer, own=own, answers=True)
        return _CountingStub(super()._get_peer_stub(peer), self._counters, self._lock, check)

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        recv, sent = self._counters["bytes_recv"], self._counters["bytes_sent"]
        own = self._own_parts[self.ordered_peer_ids.index(self.peer_id)]
        counted = _counted(stream, recv, self._lock)
        checked = self._checked(counted, peer=context.remote_id, own=own, answers=False)
        async for msg in super().rpc_aggregate_part(checked, context):
            with self._lock:
                sent.value += msg.ByteSize()
            yield msg

    async def _checked(self, stream, *, peer: PeerID, own: tuple, answers: bool):
        """`stream` up to its first bad part, which raises AllreduceException instead (before
        hivemind counts it as received: a sender dropped there leaves the part's average to
        the others instead of stalling it). `answers`: a reducer's averaged parts (deltas on
        `own`), else a sender's values for `own`."""
        index = 0
        async for msg in stream:
            if answers and msg.code != averaging_pb2.AVERAGED_PART:
                yield msg  # an error code: hivemind's own handling
                continue
            problem = self._problem(msg, own, index, answers)
            if problem:
                self._on_offence(peer, problem)
                raise AllreduceException(f"{peer} sent a bad part #{index}: {problem}")
            index += 1
            yield msg

    def _problem(self, msg, own: tuple, index: int, answers: bool) -> str:
        if index >= len(own):
            return "extra part"
        try:
            values = deserialize_torch_tensor(msg.tensor_part)
        except Exception:  # a buffer of the wrong size or dtype, an unknown codec: many types
            return "malformed"
        mine = own[index]
        if answers and values.shape == mine.shape:
            values = mine + values  # what this peer would hold: the part's average
        weight = 1.0 if answers else msg.weight
        return part_problem(
            values, mine, self._max_norm_ratio, weight=weight, floor_rms=self._floor_rms
        )


class GatedAverager(DecentralizedAverager):
    """See the module docstring. `gate`: who may take part. The state offered to newcomers
    is what the host last passed to `share_state` (a consistent snapshot, not tensors the
    training loop is changing)."""

    runner_type = CountingRunner  # the all-reduce of one round (a chaos peer swaps in its own)

    def __init__(
        self, averaged_tensors, dht, *, gate: Gate, max_norm_ratio=None, aggregation="mean",
        trim=0.2, **kwargs,
    ):  # fmt: skip
        self.gate = gate
        self.max_norm_ratio = max_norm_ratio
        self.aggregation, self.trim = aggregation, trim  # p2p.aggregation of the parts it reduces
        self.offenders: dict[PeerID, str] = {}  # averager process: members that sent bad parts
        self.counters = {name: mp.Value(ctypes.c_double, 0.0, lock=False) for name in COUNTERS}
        self._counter_lock = mp.Lock()
        self._state_lock = threading.Lock()
        self._shared_state: tuple[dict, list] | None = None
        super().__init__(averaged_tensors, dht, **kwargs)

    # ------------------------------------------------------------------ host side

    def counter(self, name: str) -> float:
        with self._counter_lock:
            return float(self.counters[name].value)

    def gather_info(self, **extra) -> dict:
        """What this peer tells its group (msgpack-able): its member tag plus `extra`."""
        return {"tag": self.gate.tag(self.peer_id.to_bytes()), **extra}

    def share_state(self, metadata: dict, tensors: list) -> None:
        """Offer (metadata, tensors) to peers that call load_state_from_peers."""
        with self._state_lock:
            self._shared_state = (dict(metadata), [t.detach().clone() for t in tensors])
        if not self.allow_state_sharing:
            self.allow_state_sharing = True  # declare as a donor only once there is a state

    def get_current_state(self):
        with self._state_lock:
            if self._shared_state is None:
                return super().get_current_state()
            metadata, tensors = self._shared_state
            return metadata, tensors, None

    # ------------------------------------------------------------------ averager process

    def _add(self, name: str, value: float) -> None:
        with self._counter_lock:
            self.counters[name].value += value

    def _offence(self, peer_id: PeerID, reason: str) -> None:
        self._add("rejected_parts", 1)
        if peer_id not in self.offenders:
            self.offenders[peer_id] = reason
            self._add("offenders", 1)
            logger.warning(
                f"{peer_id} sent a bad all-reduce part ({reason}): left out of this round and "
                "of this peer's later groups"
            )

    def _reduced(self, rule: str) -> None:
        """A part this peer reduced: by the robust rule, or by the mean in its place."""
        if self.aggregation != "mean":
            self._add("robust_parts" if rule != "mean" else "fallback_parts", 1)

    async def rpc_join_group(
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        peer = context.remote_id
        member = self.gate.allows(peer.to_bytes(), gathered_tag(request.gather))
        if peer in self.offenders or not member:
            self._add("rejected_joins", 1)
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):
            yield response

    async def _aggregate_with_group(self, group_info, min_vector_size, **kwargs):
        for peer_id, raw in zip(group_info.peer_ids, group_info.gathered, strict=True):
            if peer_id != self.peer_id and not self.gate.allows(
                peer_id.to_bytes(), gathered_tag(raw)
            ):
                self._add("rejected_groups", 1)
                raise MatchmakingException(f"{peer_id} is not a member of this run; leaving group")
            if peer_id in self.offenders:
                self._add("rejected_groups", 1)
                raise MatchmakingException(f"{peer_id} sent bad parts before; leaving group")
        return await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):
        # hivemind's method with CountingRunner in place of AllReduceRunner
        group_id = group_info.group_id if group_id is None else group_id
        runner = self.runner_type(
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
            counters=self.counters,
            lock=self._counter_lock,
            max_norm_ratio=self.max_norm_ratio,
            on_offence=self._offence,
            aggregation=self.aggregation,
            trim=self.trim,
            on_reduce=self._reduced,
            **kwargs,
        )
        assert group_id in self._running_groups, f"group {group_id} was not registered"
        self._running_groups[group_id].set_result(runner)
        # azip as in hivemind: after the last tensor it resumes the runner once more, so the
        # runner finalizes (its future, its reducer) instead of being dropped mid-iteration
        async for tensor, update in azip(as_aiter(*tensors), runner):
            tensor.add_(update, alpha=self._averaging_alpha)
        # hivemind completes a round without a member that stalls mid-way: a part whose
        # reducer did not answer stays this peer's own values, a part this peer reduces
        # leaves out a sender that did not send. Counted, so a round is never taken for a
        # full average when it was not.
        self._add("values_kept_local", runner.tensor_part_container.failed_size)
        self._add("senders_dropped", len(runner.banned_senders))
        self._state_updated.set()

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        if self.gate.secret or self.gate.allowed:
            tag = await self._member_tag(context.remote_id.to_bytes())
            if not self.gate.allows(context.remote_id.to_bytes(), tag):
                self._add("rejected_downloads", 1)
                return
        async for message in super().rpc_download_state(request, context):
            self._add("state_bytes_sent", message.ByteSize())
            yield message

    def download_state(self, timeout: float, exclude=()) -> tuple[dict, list, str] | None:
        """(metadata, tensors, donor's base58 peer ID) from the first member that shares its
        state, skipping the peer IDs in `exclude` (donors whose state was refused); None when
        none answers within `timeout`."""
        future = MPFuture()
        kwargs = dict(timeout=timeout, future=future, exclude=tuple(exclude), with_donor=True)
        self._outer_pipe.send(("_load_state_from_peers", [], kwargs))
        try:
            return future.result(timeout=timeout + 5.0)
        except TimeoutError:
            return None

    async def _load_state_from_peers(self, future, timeout=None, exclude=(), with_donor=False):
        # hivemind's method, with donors limited to members of the run: on an open DHT
        # (allow-list mode) anyone can declare itself a donor.
        timeout = timeout or self.next_chunk_timeout or self.request_timeout
        try:
            key = f"{self._matchmaking.group_key_manager.prefix}.all_averagers"
            found = await self.dht.get(key, latest=True, return_future=True)
            donors = found.value if found is not None and isinstance(found.value, dict) else {}
            ranked = sorted(
                (
                    (float(v.value), random.random(), PeerID(p))
                    for p, v in donors.items()
                    if isinstance(v, ValueWithExpiration) and isinstance(v.value, (float, int))
                ),
                reverse=True,
            )
            for _, _, peer in ranked:
                if peer == self.peer_id or peer.to_base58() in exclude:
                    continue
                if not self.gate.allows(peer.to_bytes(), await self._member_tag(peer.to_bytes())):
                    self._add("rejected_donors", 1)
                    continue
                state = await self._download_state(peer, timeout)
                if state is not None:
                    future.set_result((*state, peer.to_base58()) if with_donor else state)
                    return
        finally:
            if not future.done():
                future.set_result(None)

    async def _download_state(self, peer, timeout: float):
        """(metadata, tensors) from `peer`, or None; metadata msgpack, tensors protobuf."""
        try:
            stub = self.get_stub(self._p2p, peer, namespace=self.prefix)
            stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
            metadata, tensors, parts = None, [], []
            async for message in aiter_with_timeout(stream, timeout=timeout):
                if message.metadata:
                    metadata = self.serializer.loads(message.metadata)
                if message.tensor_part.dtype and parts:
                    tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                    parts = []
                parts.append(message.tensor_part)
            if parts:
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
            return (metadata, tensors) if metadata else None
        except Exception as e:  # a donor that fails: try the next one
            logger.info(f"could not download the state from {peer}: {e!r}")
            return None

    async def _member_tag(self, peer_id: bytes) -> bytes | None:
        if not self.gate.secret:
            return None
        try:
            found = await asyncio.wait_for(
                self.dht.get(members_key(self.prefix), latest=True, return_future=True), 5.0
            )
        except Exception:
            return None
        if found is None or not isinstance(found.value, dict):
            return None
        item = found.value.get(peer_id)
        return item.value if isinstance(item, ValueWithExpiration) else None


def members_key(prefix: str) -> str:
    """DHT key of the run's membership records (subkey: peer ID bytes, value: member tag)."""
    return f"{prefix}_members"
