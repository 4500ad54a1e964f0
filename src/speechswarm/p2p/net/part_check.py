"""The check every incoming all-reduce message passes before hivemind uses it.

    problem = part_problem(values, own, max_norm_ratio=5.0, weight=msg.weight)

In a butterfly all-reduce each member averages one part of the vector: it receives the other
members' values for that part (with their weights) and returns the average to each of them
(as a delta). hivemind adds whatever arrives. One member that sends NaN, 1e6 or a part of the
wrong length spoils the round for all (the average fails validation, or the reshape of a
tensor fails and hivemind retries the round until its deadline), and does so again in every
round it joins. `GatedAverager`'s runner checks each message with `part_problem` first: a
sender whose part fails is dropped from that part's average, a reducer whose result fails
is treated as one that did not answer (this peer keeps its own values for that part), and
either is left out of this peer's later groups (`averager.GatedAverager`).
"""

from __future__ import annotations

import math

import torch


def part_problem(
    values: torch.Tensor,
    own: torch.Tensor,
    max_norm_ratio: float | None,
    *,
    weight: float = 1.0,
    floor_rms: float = 0.0,
) -> str:
    """Why a member's values for a part must not be used ("" if they may).

    `values`: what the member sent for the part this peer holds as `own` (a sender's part;
    for a reducer's answer, own + its delta), decoded. Reasons: `shape` (another length or
    shape), `weight` (the sender's averaging weight is NaN, Inf or negative), `nonfinite`
    (NaN or Inf), `norm` (the values' root mean square above `max_norm_ratio` times the
    larger of own's and `floor_rms`; skipped when the ratio is None). `floor_rms` is the RMS
    of this peer's whole vector: a part may be a small tensor near zero (a BatchNorm bias)
    whose values differ between honest peers by more than any ratio. There is no lower
    bound here: values near zero cannot blow up an average, and the whole average still
    passes `p2p.mixing.check_received` (which has one) before it is loaded."""
    if values.shape != own.shape:
        return "shape"
    if not (math.isfinite(weight) and weight >= 0.0):
        return "weight"
    if not bool(torch.isfinite(values).all()):
        return "nonfinite"
    if max_norm_ratio is not None and values.numel():
        bound = max_norm_ratio * max(rms(own), floor_rms)
        if bound > 0.0 and rms(values) > bound:
            return "norm"
    return ""


def rms(t: torch.Tensor) -> float:
    """Root mean square of a tensor's values (float64; 0 for an empty one)."""
    return float(t.double().pow(2).mean().sqrt()) if t.numel() else 0.0
