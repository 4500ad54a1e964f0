"""A peer that misbehaves on purpose, for the network fault campaign (`chaos/net_faults.py`).

    SPEECHSWARM_NET_FAULT='{"kind": "garbage", "mode": "nan"}' \\
        python -m speechswarm.chaos.faulty_peer peer --config CFG --data M --out DIR ...

It is the ordinary `speechswarm peer` (same arguments) with its averager's all-reduce
(`GatedAverager.runner_type`) replaced by `FaultyRunner`, which does what
$SPEECHSWARM_NET_FAULT (JSON) says:
- `{"kind": "garbage", "mode": M}`: every tensor part it sends is corrupted, both as a sender
  (its values for another member's part) and as a reducer (the averaged part it returns):
  M = `nan` (all NaN), `huge` (all 1e6), `bytes` (the serialized buffer replaced by random
  bytes of a random length, mostly not a whole number of values), `shape` (a well-formed
  tensor of zeros, one value longer than the part), `weight` (its averaging weight NaN on
  every part it sends; the values are its own);
- `{"kind": "kill", "after": A, "message": K, "marker": PATH}`: from its A-th all-reduce
  on, just before its K-th outgoing all-reduce message (a part it sends or an averaged part
  it returns), it writes PATH (which all-reduce, which message, the group) and SIGKILLs its
  own process group: the peer, its averager and DHT processes and its p2pd daemons, as
  `kill -9` from outside would, but at a known point of a running all-reduce.
Without the variable it is an ordinary peer. Used only by the campaign.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import averaging_pb2

from speechswarm.p2p.net.averager import CountingRunner, GatedAverager

FAULT_ENV = "SPEECHSWARM_NET_FAULT"
GARBAGE_MODES = ("nan", "huge", "bytes", "shape", "weight")
HUGE = 1e6


def corrupt(msg: averaging_pb2.AveragingData, mode: str, rng: random.Random) -> None:
    """Spoil one outgoing all-reduce message in place (see the module docstring)."""
    part = msg.tensor_part
    if mode == "weight":
        if msg.code != averaging_pb2.AVERAGED_PART:  # only a sender's messages carry a weight
            msg.weight = math.nan
        return
    if mode == "bytes":
        part.buffer = rng.randbytes(rng.randrange(1, len(part.buffer) + 8))
        return
    values = deserialize_torch_tensor(part)
    if mode == "shape":  # well-formed, finite, one value too many
        part.CopyFrom(serialize_torch_tensor(torch.zeros(values.numel() + 1), part.compression))
        return
    filled = torch.full_like(values, math.nan if mode == "nan" else HUGE)
    part.CopyFrom(serialize_torch_tensor(filled, part.compression))


class FaultyRunner(CountingRunner):
    """The metered all-reduce with a hook on every message this peer sends."""

    def __init__(self, *args, on_send, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_send = on_send

    async def _generate_input_for_peer(self, peer_index: int):
        async for msg in super()._generate_input_for_peer(peer_index):
            self._on_send(msg, "part", self.group_size)
            yield msg

    async def _accumulate_parts_streaming(self, stream, sender_index: int):
        async for msg in super()._accumulate_parts_streaming(stream, sender_index):
            self._on_send(msg, "averaged part", self.group_size)
            yield msg


class FaultyAverager(GatedAverager):
    """GatedAverager whose rounds run a FaultyRunner set up from $SPEECHSWARM_NET_FAULT."""

    def __init__(self, *args, **kwargs):
        self.fault = json.loads(os.environ.get(FAULT_ENV) or "{}")
        self._rng = random.Random(self.fault.get("seed", 0))
        self._allreduces = 0  # all-reduces this averager began (counted in its own process)
        self._sent = 0  # messages sent since the kill was armed
        super().__init__(*args, **kwargs)

    @classmethod
    def _get_handle_name(cls, namespace, method_name: str) -> str:
        # hivemind names each RPC after the servicer's class: under its own name this peer
        # would call, and serve, handlers the others do not have, and simply never meet them
        return GatedAverager._get_handle_name(namespace, method_name)

    def runner_type(self, *args, **kwargs):  # called where GatedAverager builds its runner
        return FaultyRunner(*args, on_send=self._on_send, **kwargs)

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):
        self._allreduces += 1
        return await super()._run_allreduce_inplace_(tensors, group_info, group_id, **kwargs)

    def _on_send(self, msg, what: str, group_size: int) -> None:
        kind = self.fault.get("kind")
        if kind == "garbage":
            corrupt(msg, self.fault["mode"], self._rng)
        elif kind == "kill" and self._allreduces >= self.fault["after"]:
            self._sent += 1
            if self._sent >= self.fault["message"]:
                self._kill(what, group_size)

    def _kill(self, what: str, group_size: int) -> None:
        record = {
            "allreduce": self._allreduces,
            "message": self._sent,
            "what": what,
            "group_size": group_size,
            "time": time.time(),
        }
        Path(self.fault["marker"]).write_text(json.dumps(record) + "\n")
        os.killpg(os.getpgrp(), signal.SIGKILL)
