"""A networked peer's synchronizer: hivemind averaging at the training step's sync point.

    sync = HivemindSync(averager, names, every=4, weight=n_utts, settings=..., p2p=cfg.p2p,
                        rounds_path=out / "rounds.jsonl", log=log)
    run = dataclasses.replace(run, sync=sync)     # then train.loop.run_steps(run, ...)

Every `every` local steps it averages the model's floating tensors with whichever peers are
looking for a group, checks the result (`p2p.mixing.check_received`) and only then loads it;
one row per attempt goes to rounds.jsonl; after each attempt it offers its weights, optimizer
state and position to newcomers (`state_transfer`). With `background=True` a round end only
snapshots the tensors and starts the round on a thread; the average lands within
`max_staleness` steps, merged with the local progress made meanwhile (`p2p.net.background`,
`p2p.mixing.merge_late_average`). Also: the codec on the wire and which tensors are averaged.
See `p2p.net.peer`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import torch

from speechswarm.p2p import mixing
from speechswarm.p2p.net.background import InFlight, batch_counts, ema_decays, run_in_background
from speechswarm.p2p.net.settings import staleness_bound
from speechswarm.p2p.net.state_transfer import pack_state, state_sum
from speechswarm.p2p.workspace import batchnorm_stat_names


def hivemind_compression(kind: str):
    """hivemind codec for `kind`. int8: tensors of 1,024+ values as 8-bit codes (hivemind's
    Uniform8BitQuantization: 256 bins over +-3 std, a 256-entry codebook each), smaller ones
    (biases, norms: a tiny share of the bytes, and a 1-value tensor has no std) uncompressed."""
    from hivemind.compression import (
        Float16Compression,
        NoCompression,
        SizeAdaptiveCompression,
        Uniform8BitQuantization,
    )

    import speechswarm.p2p.net.averager  # noqa: F401 (its 8-bit decoding fix)

    if kind == "int8":
        return SizeAdaptiveCompression(1024, NoCompression(), Uniform8BitQuantization())
    return {"none": NoCompression, "fp16": Float16Compression}[kind]()


def averaged_names(model: torch.nn.Module, bn_stats: str) -> list[str]:
    """State-dict names that peers average: floating tensors, minus BatchNorm statistics
    when p2p.bn_stats is `local` (FedBN-style)."""
    skip = set(batchnorm_stat_names(model)) if bn_stats == "local" else set()
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and k not in skip]


class HivemindSync:
    """A `train.sync.Synchronizer` that averages through a GatedAverager every
    `every` steps; the other three methods answer as LocalSync (each peer is its own main)."""

    is_main = True

    def __init__(
        self, averager, names, *, every, weight, settings, p2p, rounds_path, log, first_round=0,
        bn_names=(), optimizer=None, plan=None, background=False, max_staleness=0, last_step=0,
    ):  # fmt: skip
        self.averager, self.names, self.every, self.weight = averager, names, every, weight
        # --background: a round's all-reduce runs while training goes on; its average lands
        # at most `max_staleness` steps (0: `every`) after its snapshot. The round ending at
        # `last_step` is averaged in the foreground: no local steps follow it.
        self.background, self.last_step = background, last_step
        self.max_staleness = staleness_bound(max_staleness, every) if background else every
        self.flight: InFlight | None = None
        self.optimizer = optimizer  # its state is offered to newcomers with the weights
        # --topology: a NeighbourPlan (who this peer averages with in each round), else None
        self.plan = plan
        self.settings, self.p2p, self.log = settings, p2p, log
        # p2p.outer_lr / outer_momentum: the outer optimizer's anchor (the weights after the
        # last outer step) and momentum buffer; checkpointed with the peer (checkpoint_extra)
        self.outer: dict = {"anchor": {}, "momentum": {}}
        self.bn_names = [n for n in bn_names if n in set(names)]
        self.rounds_path = Path(rounds_path)
        # a resumed peer keeps the rows of the rounds its checkpoint had done
        kept = [r for r in read_rows_file(self.rounds_path) if r["round"] <= first_round]
        self.rounds_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.started = time.perf_counter()
        self.round = first_round
        self.joined = 0
        self.averaging_seconds = 0.0
        self.group_sizes: list[int] = []
        self.reasons: dict[str, int] = {}
        self.partial = 0  # rounds that averaged without a member for part of the vector
        # rounds that averaged by the mean although p2p.aggregation asks for a robust rule
        # (a group of fewer than 3; a trimmed mean that would cut nothing)
        self.fallbacks = 0
        self.neighbour_rounds = 0  # --topology: rounds averaged with the planned neighbours
        self.topology_fallbacks = 0  # ... rounds that looked for whoever is reachable instead
        # --background: rounds whose all-reduce overlapped training, the steps between their
        # snapshot and the average's application, seconds of all-reduce training went on
        # through, rounds the loop waited for (at the staleness bound or at the run's end)
        # and how long, rounds given up when --timeout-s ran out
        self.overlapped = 0
        self.staleness: list[int] = []
        self.overlap_seconds = self.wait_seconds = 0.0
        self.waits = self.gave_up = 0
        for row in kept:  # the whole run's counts, not only this process's
            self._count(row)

    def _count(self, row: dict) -> None:
        # seconds the training loop stood still for the round (all of it, in the foreground)
        self.averaging_seconds += float(row.get("blocked_s", row["seconds"]))
        if row.get("background"):
            self.overlapped += 1
            self.overlap_seconds += float(row["overlap_s"])
            self.wait_seconds += float(row["wait_s"])
            self.waits += bool(row["waited"])
            self.gave_up += row["reason"] == "timeout"
            if row["ok"]:
                self.staleness.append(int(row["staleness"]))
        reason = row["reason"] or "ok"
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if row["ok"]:
            self.joined += 1
            self.group_sizes.append(int(row["group_size"]))
        self.partial += bool(row.get("partial"))
        self.fallbacks += bool(row["ok"] and row.get("aggregation") != self.p2p.aggregation)
        self.neighbour_rounds += bool(row["ok"] and row.get("topology") == "neighbours")
        self.topology_fallbacks += row.get("topology") == "fallback"

    def agree(self, flag: str) -> str:
        return flag

    def gather(self, obj):
        return [obj]

    def after_step(self, model: torch.nn.Module, state) -> None:
        if self.flight is not None:  # a background round: apply its average once it is in
            self.land(model, state.step, wait=state.step - self.flight.step >= self.max_staleness)
        if state.step % self.every:
            return
        if self.background and state.step != self.last_step:
            self.launch(model, state.step)
        else:
            self.average(model, state.step)

    def finish(self, model: torch.nn.Module, state) -> None:
        """The run stopped (its last step, a time budget): a round still in flight is waited
        for (at most until its --timeout-s ends) and applied."""
        if self.flight is not None:
            self.land(model, state.step, wait=True)

    def own_state(self, model) -> dict:
        sd = model.state_dict()
        return {k: sd[k].detach().clone() for k in self.names}

    def average(self, model: torch.nn.Module, step: int) -> dict:
        """One averaging attempt in the foreground; returns (and logs) its row."""
        flight = self._snapshot(model, step)
        return self._conclude(model, step, flight, self._exchange(flight))

    def launch(self, model: torch.nn.Module, step: int) -> None:
        """Snapshot the averaged tensors and start the round's search and all-reduce on a
        thread; training goes on (`land` applies the average)."""
        self.flight = self._snapshot(model, step)
        flight = self.flight
        run_in_background(lambda: self._exchange(flight), flight)

    def land(self, model: torch.nn.Module, step: int, *, wait: bool) -> dict | None:
        """Apply the background round's average if it is in; with `wait`, wait for it first
        (the round's budget bounds the wait: past it the thread gives the round up). Returns
        its row once applied (or failed), else None."""
        flight = self.flight
        if flight is None or not (wait or flight.future.done()):
            return None
        waited_from = time.perf_counter()
        pending = not flight.future.done()
        budget = self.settings.timeout_s + ROUND_GRACE_S + LATE_THREAD_S
        try:
            outcome = flight.future.result(timeout=max(0.0, budget - (waited_from - flight.started)))  # fmt: skip
        except TimeoutError:  # the thread itself overran (hivemind did not answer)
            outcome = ("timeout", {}, None, averaged_checksum(None))
            self.log.info(f"background averaging of step {flight.step}: no answer in {budget:g} s")
        waited = time.perf_counter() - waited_from if pending else 0.0
        self.flight = None
        done_at = flight.done_at or time.perf_counter()
        late = {
            "background": True,
            "applied_step": step,
            "staleness": step - flight.step,  # local steps between snapshot and application
            "waited": pending,  # the loop waited for it (staleness bound, or the run's end)
            "wait_s": round(waited, 3),
            # seconds of the round's exchange during which training went on
            "overlap_s": round(max(0.0, min(done_at, waited_from) - flight.started), 3),
        }
        return self._conclude(model, step, flight, outcome, late, blocked=waited)

    def _snapshot(self, model: torch.nn.Module, step: int) -> InFlight:
        """A round's start: the averaged tensors copied to the averager's buffers."""
        start = time.perf_counter()
        own = self.own_state(model)
        before = {k: self.averager.counter(k) for k in _ROUND_COUNTERS}
        with self.averager.get_tensors() as buffers:
            for buf, name in zip(buffers, self.names, strict=True):
                buf.copy_(own[name])
        return InFlight(
            round=self.round + 1, step=step, snapshot=own, counts=batch_counts(model),
            before=before, where={"topology": "", "planned": []}, started=start,
            snapshot_s=time.perf_counter() - start,
        )  # fmt: skip

    def _exchange(self, flight: InFlight) -> tuple[str, dict, dict | None, dict]:
        """The round's search and all-reduce, and the check of the average it brought
        against the snapshot (under --background on the round's thread: nothing here touches
        the model or the outer optimizer). Returns ("" or why it failed, the group's members,
        the average received or None, its checksum)."""
        step, reason, peers = flight.step, "", {}
        try:
            peers = self._search(step, flight.started, flight.where)
            if peers is None:
                reason = "no group"
        except Exception as e:  # hivemind raises several kinds for a failed round
            reason = "timeout" if "imeout" in type(e).__name__ + str(e) else "failed"
            self.log.info(f"averaging at step {step} failed: {type(e).__name__}: {e}")
        received = None
        if not reason:
            with self.averager.get_tensors() as buffers:
                received = {n: b.clone() for n, b in zip(self.names, buffers, strict=True)}
            if self.p2p.validate:
                reason = mixing.check_received(received, flight.snapshot, self.p2p.max_norm_ratio)
        return reason, peers or {}, received, averaged_checksum(received)

    def _conclude(self, model, step, flight, outcome, late=None, blocked=None) -> dict:
        """Load the average a round brought (`outcome` of `_exchange`), moved by the outer
        optimizer (with `late`, a background round's fields: merged with the local progress
        made since the snapshot), offer the state to newcomers, count and log the round's
        row. `blocked`: seconds the training loop waited for it (None: in the foreground)."""
        concluding = time.perf_counter()
        reason, peers, received, checksum = outcome
        own = flight.snapshot
        group = len(peers) if peers else 1
        if not reason:
            new = self.outer_step(received)
            if late is not None:  # keep what training did since the snapshot
                decay = ema_decays(model, flight.counts, self.bn_names)
                new = mixing.merge_late_average(new, own, self.own_state(model), decay)
            model.load_state_dict({**model.state_dict(), **new})
        counts = {k: int(self.averager.counter(k) - flight.before[k]) for k in _ROUND_COUNTERS}
        partial = not reason and (counts["values_kept_local"] > 0 or counts["senders_dropped"] > 0)
        if partial:
            self.log.info(
                f"averaging at step {flight.step}: a member stalled mid-round; "
                f"{counts['values_kept_local']} values kept local, "
                f"{counts['senders_dropped']} sender(s) left out of this peer's part"
            )
        shared = self.share(model, step)
        now = time.perf_counter()
        ended = now if late is None else (flight.done_at or now)  # background: the exchange's end
        self.round = flight.round
        row = {
            "round": flight.round,
            "step": flight.step,
            "ok": not reason,
            "reason": reason,
            "group_size": group if not reason else 1,
            "partial": partial,
            # the rule the group's size allows (each member reduces its share by it)
            "aggregation": self.rule(group) if not reason else "",
            "seconds": round(ended - flight.started, 3),  # from the snapshot
            "time": round(now - self.started, 3),
            **counts,
            "state_sum": shared,
            **(flight.where if self.plan is not None else {}),
            **group_fields(peers or {}),
            **checksum,
        }
        if late is not None:
            # seconds the training loop stood still for this round: snapshot, wait, merge
            row["blocked_s"] = round(flight.snapshot_s + blocked + now - concluding, 3)
            row.update(late)
        self._count(row)
        with open(self.rounds_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def rule(self, group: int) -> str:
        """p2p.aggregation where a group of `group` allows it, else "mean" (a fallback)."""
        return mixing.robust_rule(self.p2p.aggregation, self.p2p.trim_fraction, group)

    @property
    def outer_enabled(self) -> bool:
        return self.p2p.outer_lr != 1.0 or self.p2p.outer_momentum != 0.0

    def set_anchor(self, model: torch.nn.Module) -> None:
        """The outer optimizer's starting point: the weights training begins from (after a
        download from peers); a resumed peer has its checkpoint's instead."""
        if self.outer_enabled and not self.outer["anchor"]:
            self.outer["anchor"] = self.own_state(model)

    def outer_step(self, averaged: dict) -> dict:
        """The group's average moved by the outer optimizer from the anchor (SlowMo: each
        peer keeps its own buffer); the average itself without p2p.outer_*."""
        if not self.outer_enabled:
            return averaged
        p = self.p2p
        new, self.outer["momentum"] = mixing.outer_step(
            self.outer["anchor"], averaged, self.outer["momentum"] or None, p.outer_lr,
            p.outer_momentum, nesterov=p.outer_nesterov, skip=self.bn_names,
        )  # fmt: skip
        self.outer["anchor"] = {k: v.clone() for k, v in new.items()}
        return new

    def _search(self, step: int, start: float, where: dict):
        """The round's group: with --topology first the planned neighbours (under their own
        group key, for NEIGHBOUR_SHARE of the budget), then whoever is reachable (the run's
        common key) for the rest; `where` records which and the plan."""
        if self.plan is None:
            return self._step(step, start)
        # the simulation's round whose local work ends at this step (0: the first), so the
        # graph (p2p.redraw_every) and the draw of groups are that round's; the same on every peer
        round_index = step // self.every - 1
        group = self.plan.group(round_index)
        where["planned"] = group
        if group:
            where["topology"] = "neighbours"
            self.averager.set_group_bits(self.plan.key_bits(round_index, group))
            try:
                peers = self._step(step, start, self.settings.timeout_s * NEIGHBOUR_SHARE)
            except Exception as e:  # a planned member that did not come, or failed mid-way
                self.log.info(f"averaging with neighbours {group} at step {step}: {e}")
                peers = None
            if peers:
                return peers
        where["topology"] = "fallback"
        self.averager.set_group_bits("")  # the run's common key: whoever is looking
        return self._step(step, start)

    def _step(self, step: int, start: float, budget: float | None = None):
        """hivemind's averaging step, within the round's budget (--timeout-s from `start`,
        or `budget`). hivemind bounds only the search for a group by its timeout; the
        all-reduce that follows has its own, and a search that joined a frozen leader can
        overrun: a round could take twice the budget and more. Past the budget the peer
        cancels the step and trains on; an all-reduce already running ends in the averager
        within its timeout."""
        budget = self.settings.timeout_s if budget is None else budget
        info = {"step": step} if self.plan is None else {"step": step, "index": self.plan.index}
        control = self.averager.step(
            weight=self.weight,
            gather=self.averager.gather_info(**info),
            timeout=max(0.1, budget - (time.perf_counter() - start)),
            wait=False,
        )
        left = budget - (time.perf_counter() - start)
        try:
            return control.result(timeout=max(0.0, left) + ROUND_GRACE_S)
        except TimeoutError:
            control.cancel()
            raise TimeoutError(f"no average within --timeout-s {budget:g}") from None

    def share(self, model, step: int) -> float:
        """Offer the current weights, optimizer state and position to newcomers (a snapshot,
        consistent across tensors); returns the weights' `state_sum` (a checksum: a newcomer
        logs the same for what it loaded)."""
        metadata, tensors = pack_state(model, self.names, self.optimizer, step=step, round=self.round)  # fmt: skip
        self.averager.share_state(metadata, tensors)
        return state_sum(tensors[: len(self.names)])


def read_rows_file(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# seconds past --timeout-s a round waits for hivemind to report its own outcome
ROUND_GRACE_S = 0.5
# --background: seconds past that a waiting loop gives the round's thread to hand its outcome
# over (the thread ends the round itself within --timeout-s plus ROUND_GRACE_S)
LATE_THREAD_S = 1.0
# --topology: share of --timeout-s a round waits for its planned neighbours before it looks
# for whoever is reachable (the rest of the budget)
NEIGHBOUR_SHARE = 0.5
# per-round deltas of the averager's counters, in rounds.jsonl
_ROUND_COUNTERS = ("bytes_sent", "bytes_recv", "values_kept_local", "senders_dropped",
                   "rejected_parts", "robust_parts", "fallback_parts")  # fmt: skip


def group_fields(peers: dict) -> dict:
    """Who a round's group was: `members` (base58 peer IDs, sorted) and `group`, a digest of
    the members and the step each of them averaged at. Every member logs the same `group`
    for one all-reduce (a peer averages once per step), so rows of different peers can be
    matched; with --topology also `indices`, the members' peer numbers. Empty when no group
    formed."""
    if not peers:
        return {"group": "", "members": []}
    pairs = sorted(
        (str(p), info.get("step") if isinstance(info, dict) else None)  # str(PeerID): base58
        for p, info in peers.items()
    )
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]
    fields = {"group": digest, "members": [p for p, _ in pairs]}
    indices = [info.get("index") for info in peers.values() if isinstance(info, dict)]
    if indices and all(isinstance(i, int) for i in indices):  # peers that follow a topology
        fields["indices"] = sorted(indices)
    return fields


def averaged_checksum(received: dict | None) -> dict:
    """What the group's all-reduce returned to this peer, before validation: `avg_sum` (sum of
    all values, float64) and `avg_abs` (sum of absolute values: the scale for comparing sums).
    Members of one complete round get equal weights, so equal checksums up to float32
    rounding (and the codec's error: see `CHECKSUM_TOLERANCE`). None when no average came
    or when it held NaN/Inf (JSON has no spelling for them)."""
    if not received:
        return {"avg_sum": None, "avg_abs": None}
    total = sum(float(t.double().sum()) for t in received.values())
    scale = sum(float(t.double().abs().sum()) for t in received.values())
    if not (math.isfinite(total) and math.isfinite(scale)):
        return {"avg_sum": None, "avg_abs": None}
    return {"avg_sum": total, "avg_abs": scale}


# |avg_sum(a) - avg_sum(b)| <= tolerance x avg_abs for two members of one complete round:
# each member adds the reducers' deltas to its own float32 values (a few ulps apart), and
# fp16 / int8 send the deltas rounded to 11 bits / 256 levels of +-3 std. Measured with 3
# averagers on 26k values: 7e-10 (none), 9e-6 (fp16), 2e-8 (int8: its errors cancel in a sum).
CHECKSUM_TOLERANCE = {"none": 1e-5, "fp16": 1e-3, "int8": 1e-2}
