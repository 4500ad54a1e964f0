"""The math of model exchange, pure: mixing matrices, averaging, robust aggregation,
validation of received weights, message compression and the faults robustness experiments
plant. No transport, no training.

    W = pull_matrix(adj, sizes)                      # (n, n), rows sum to 1
    new_i = average_states([w_j for j in peers], W[i, peers], keep_from=peers.index(i))

A "state" is a model state dict: name -> tensor. Floating tensors are averaged; integer
tensors (BatchNorm's `num_batches_tracked`) are not averages of anything and are copied
from the state named by `keep_from` (the receiver's own).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import torch

from speechswarm.config.p2p import FAULTS

State = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- mixing weights


def pull_matrix(adj: np.ndarray, sizes: Sequence[float] | None = None) -> np.ndarray:
    """Row-stochastic mixing matrix of synchronous pull-gossip (the P2P seed's rule).

    Agent i averages itself and the agents it pulls from (`adj[i, j]`), weighting each by
    its training-set size: W[i, j] = s_j / sum_{k in {i} U N(i)} s_k. `sizes=None` gives
    uniform weights 1 / (|N(i)| + 1). Rows sum to 1; W is doubly stochastic only when every
    neighbourhood has the same total size (e.g. uniform weights on a regular graph).
    """
    adj = np.asarray(adj, dtype=bool)
    n = len(adj)
    s = np.ones(n) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if s.shape != (n,) or np.any(s <= 0):
        raise ValueError(f"sizes must be {n} positive numbers, got {list(s)}")
    mask = adj | np.eye(n, dtype=bool)
    w = mask * s[None, :]
    return w / w.sum(axis=1, keepdims=True)


def data_size_weights(sizes: Sequence[float]) -> np.ndarray:
    """FedAvg's weights: s_k / sum(s)."""
    s = np.asarray(sizes, dtype=np.float64)
    if np.any(s <= 0):
        raise ValueError(f"data sizes must be positive, got {list(s)}")
    return s / s.sum()


def second_eigenvalue(w: np.ndarray) -> float:
    """Modulus of the second-largest eigenvalue of W: how fast gossip mixes (0 = at once,
    near 1 = slowly; consensus error shrinks roughly by this factor per round)."""
    ev = np.sort(np.abs(np.linalg.eigvals(np.asarray(w, dtype=np.float64))))[::-1]
    return float(ev[1]) if len(ev) > 1 else 0.0


def stationary_weights(w: np.ndarray) -> np.ndarray:
    """pi with pi W = pi, sum(pi) = 1: repeated pull-gossip without training converges to
    sum_j pi_j x_j for every agent (for a connected graph)."""
    vals, vecs = np.linalg.eig(np.asarray(w, dtype=np.float64).T)
    v = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
    return v / v.sum()


# ----------------------------------------------------------------------------- aggregation


def _check_same_layout(states: Sequence[State]) -> None:
    if not states:
        raise ValueError("nothing to average: no states")
    keys = list(states[0])
    for k, s in enumerate(states[1:], start=1):
        if list(s) != keys:
            raise ValueError(f"state {k} has different keys from state 0")
        for name in keys:
            if s[name].shape != states[0][name].shape:
                raise ValueError(
                    f"state {k}: {name} has shape {tuple(s[name].shape)}, "
                    f"state 0 has {tuple(states[0][name].shape)}"
                )


def average_states(
    states: Sequence[State], weights: Sequence[float] | None = None, keep_from: int = 0
) -> State:
    """sum_k weights[k] * states[k] per floating tensor (weights renormalised to sum 1;
    None: the plain mean), accumulated in float64 in the given order, returned in each
    tensor's dtype. Integer tensors are copied from states[keep_from]."""
    _check_same_layout(states)
    w = np.ones(len(states)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(states),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(states)} non-negative numbers, got {list(w)}")
    w = w / w.sum()
    out: State = {}
    for name, ref in states[keep_from].items():
        if not ref.is_floating_point():
            out[name] = ref.clone()
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for wk, s in zip(w, states, strict=True):
            acc += float(wk) * s[name].double()
        out[name] = acc.to(ref.dtype)
    return out


def median_states(states: Sequence[State], keep_from: int = 0) -> State:
    """Coordinate-wise median (unweighted; for an even count the mean of the two middle
    values) of the sorted values, NaN sorting last as in `trimmed_mean_states`. Tolerates up
    to half minus one arbitrary states, NaN ones included (torch.quantile would return NaN
    for a coordinate as soon as one state holds NaN there)."""
    _check_same_layout(states)
    k = len(states)
    out: State = {}
    for name, ref in states[keep_from].items():
        if not ref.is_floating_point():
            out[name] = ref.clone()
            continue
        stacked = torch.stack([s[name].double() for s in states])  # (K, ...)
        middle = torch.sort(stacked, dim=0).values[(k - 1) // 2 : k // 2 + 1]  # 1 or 2 values
        out[name] = middle.mean(dim=0).to(ref.dtype)
    return out


def trimmed_mean_states(states: Sequence[State], trim: float, keep_from: int = 0) -> State:
    """Coordinate-wise trimmed mean: per coordinate, drop the floor(trim * K) smallest and
    largest values and average the rest (unweighted). trim=0 is the plain mean."""
    _check_same_layout(states)
    k = len(states)
    cut = int(math.floor(trim * k))
    if k - 2 * cut < 1:
        raise ValueError(f"trim_fraction {trim} removes all of {k} values")
    out: State = {}
    for name, ref in states[keep_from].items():
        if not ref.is_floating_point():
            out[name] = ref.clone()
            continue
        stacked = torch.stack([s[name].double() for s in states])  # (K, ...)
        kept = torch.sort(stacked, dim=0).values[cut : k - cut]
        out[name] = kept.mean(dim=0).to(ref.dtype)
    return out


def aggregate(
    states: Sequence[State],
    weights: Sequence[float] | None,
    *,
    method: str = "mean",
    trim: float = 0.2,
    keep_from: int = 0,
) -> State:
    """`mean` (weighted), `median` or `trimmed_mean` (both unweighted: robustness needs
    every state to count once, or a large liar would dominate)."""
    if method == "mean":
        return average_states(states, weights, keep_from)
    if method == "median":
        return median_states(states, keep_from)
    if method == "trimmed_mean":
        return trimmed_mean_states(states, trim, keep_from)
    raise ValueError(f"unknown aggregation {method!r}: mean, median or trimmed_mean")


def robust_rule(method: str, trim: float, count: int) -> str:
    """The rule `aggregate` can apply to `count` states when `method` is asked for: a median
    or trimmed mean needs 3 or more values per coordinate (of 2 a median is their mean), and a
    trimmed mean that cuts floor(trim x count) = 0 values from each end is the plain mean; in
    those cases the (weighted) "mean"."""
    if method == "mean" or count < 3:
        return "mean"
    if method == "trimmed_mean" and math.floor(trim * count) == 0:
        return "mean"
    return method


def keep_local(mixed: State, own: State, names: Sequence[str]) -> State:
    """`mixed` with the tensors `names` (e.g. BatchNorm running statistics) taken from `own`."""
    out = dict(mixed)
    for name in names:
        out[name] = own[name].clone()
    return out


# ----------------------------------------------------------------------------- outer steps


def outer_step(
    anchor: State,
    mixed: State,
    momentum: State | None,
    lr: float,
    beta: float,
    nesterov: bool = True,
    skip: Sequence[str] = (),
) -> tuple[State, State]:
    """SlowMo / DiLoCo's outer optimizer: (new state, new momentum buffer).

    The change since the last outer step is a pseudo-gradient g = anchor - mixed; with
    buffer m <- beta * m + g, the new state is anchor - lr * (g + beta * m) (Nesterov) or
    anchor - lr * m. lr = 1, beta = 0 gives `mixed` back (plain averaging). Tensors named in
    `skip` (BatchNorm running statistics: measured, not learned) and integer tensors are
    taken from `mixed`. Float64 arithmetic, results in each tensor's dtype."""
    out: State = {}
    buf: State = {}
    skip = set(skip)
    for name, new in mixed.items():
        if not new.is_floating_point() or name in skip:
            out[name] = new.clone()
            continue
        g = anchor[name].double() - new.double()
        m = g if momentum is None or name not in momentum else beta * momentum[name] + g
        step = g + beta * m if nesterov else m
        out[name] = (anchor[name].double() - lr * step).to(new.dtype)
        buf[name] = m
    return out, buf


def merge_late_average(
    averaged: State, snapshot: State, current: State, decay: dict[str, float] | None = None
) -> State:
    """An average of `snapshot` that arrives after local steps took the model to `current`
    (background averaging): averaged + (current - snapshot), so the local progress made while
    the average was on its way is kept (DiLoCo / overlapped SlowMo).

    For names in `decay` (running statistics: exponential moving averages) the rule is
    current + d * (averaged - snapshot), d being the weight the snapshot's value still has in
    `current` ((1 - momentum)^n after n updates): the snapshot's share of the statistic is
    swapped for the average's, and a running variance stays >= 0 (d * averaged plus the
    batches' share). d = 1 is the first rule. In each tensor's own dtype (it runs while
    training waits): current - snapshot is exact where the two are within a factor of 2 of
    each other (Sterbenz), so the sum rounds once. Integer tensors come from `current`."""
    decay = decay or {}
    out: State = {}
    for name, now in current.items():
        if not now.is_floating_point() or name not in averaged:
            out[name] = now.clone()
            continue
        a, s, d = averaged[name].to(now.dtype), snapshot[name].to(now.dtype), decay.get(name, 1.0)
        # d = 1 in the first form: no step since the snapshot gives the average bit for bit
        out[name] = a + (now - s) if d == 1.0 else now + d * (a - s)
    return out


# ----------------------------------------------------------------------------- validation


def state_norm(state: State) -> float:
    """L2 norm over all floating tensors (float64 sum of squares)."""
    total = 0.0
    for t in state.values():
        if t.is_floating_point():
            total += float(t.double().pow(2).sum())
    return math.sqrt(total)


def check_layout(received: State, own: State) -> str:
    """Why a received state cannot be aggregated with `own` at all ("" if it can): `keys`
    (different tensor names), `shape`, `dtype` (floating where own is integer or back)."""
    if set(received) != set(own):
        return "keys"
    for name, t in own.items():
        r = received[name]
        if not isinstance(r, torch.Tensor) or r.shape != t.shape:
            return "shape"
        if r.is_floating_point() != t.is_floating_point():
            return "dtype"
    return ""


def check_received(received: State, own: State, max_norm_ratio: float) -> str:
    """Why a received state must be rejected ("" if it is acceptable).

    Reasons: those of `check_layout`, then `nonfinite` (NaN or Inf anywhere), `norm`
    (|received| / |own| above max_norm_ratio or below its inverse: an agent that diverged or
    scales its weights to dominate the average).
    """
    reason = check_layout(received, own)
    if reason:
        return reason
    for t in received.values():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return "nonfinite"
    own_norm, norm = state_norm(own), state_norm(received)
    if own_norm > 0 and not (1.0 / max_norm_ratio <= norm / own_norm <= max_norm_ratio):
        return "norm"
    return ""


def within_range(state: State, others: Sequence[State]) -> bool:
    """Whether every floating coordinate of `state` lies between the smallest and largest
    value `others` hold at that coordinate (NaN never does). A robust aggregate of honest
    states and a minority of arbitrary ones stays in the honest states' range: the liars'
    influence is bounded by the honest spread."""
    for name, t in state.items():
        if not t.is_floating_point():
            continue
        stacked = torch.stack([o[name] for o in others])  # (K, ...)
        low, high = stacked.min(dim=0).values, stacked.max(dim=0).values
        if not bool(((t >= low) & (t <= high)).all()):
            return False
    return True


def state_distance(a: State, b: State) -> float:
    """L2 distance between two states over their floating tensors (float64)."""
    total = 0.0
    for name, t in a.items():
        if t.is_floating_point():
            total += float((t.double() - b[name].double()).pow(2).sum())
    return math.sqrt(total)


# ----------------------------------------------------------------------------- compression


def difference(state: State, reference: State) -> State:
    """What a delta message carries: `state` - `reference` for floating tensors (the change
    since a model both ends hold); other tensors as they are in `state`."""
    return {
        name: t - reference[name] if t.is_floating_point() else t.clone()
        for name, t in state.items()
    }


def add_back(change: State, reference: State) -> State:
    """The state a receiver rebuilds from a delta message: `reference` + `change` for
    floating tensors (a non-finite change stays non-finite, for validation to see)."""
    return {
        name: reference[name] + t if t.is_floating_point() else t.clone()
        for name, t in change.items()
    }


# values per fp32 scale of the blocked codes (int4, int2, sign)
BLOCK = 256
COMPRESSIONS = ("none", "fp16", "int8", "int4", "int2", "sign")
# codes too coarse for whole weights: they are meant for changes (p2p.deltas), where the
# quantisation error of one round is carried into the next (p2p.error_feedback)
CHANGE_ONLY = ("int4", "int2", "sign")
BITS = {"int4": 4, "int2": 2}  # the blocked integer codes: bits a value


def _check_kind(kind: str) -> None:
    if kind not in COMPRESSIONS:
        raise ValueError(f"unknown compression {kind!r}: {', '.join(COMPRESSIONS)}")


def _kind_for(name: str, kind: str, stats: Collection[str]) -> str:
    """Running statistics (`stats`) go int8 where `kind` is a change-only code: a sign,
    int4 or int2 step of a block could turn a small variance negative. They are few values."""
    return "int8" if kind in CHANGE_ONLY and name in stats else kind


def compressed_size(state: State, kind: str, stats: Collection[str] = ()) -> int:
    """Bytes of `compress(state, kind, stats)`'s payload, which depend on the layout alone."""
    _check_kind(kind)
    total = 0
    for name, t in state.items():
        n = t.numel()
        kind_t = _kind_for(name, kind, stats)
        if not t.is_floating_point() or kind_t == "none":
            total += n * t.element_size()
        elif kind_t == "fp16":
            total += n * 2
        elif kind_t == "int8":
            total += n + 4  # one fp32 scale per tensor
        elif kind_t in BITS:  # 8 / bits codes a byte, a scale a block
            total += -(-n * BITS[kind_t] // 8) + 4 * -(-n // BLOCK)
        else:  # sign: one bit a value, a scale a block
            total += (n + 7) // 8 + 4 * -(-n // BLOCK)
    return total


def _blocks(t: torch.Tensor) -> torch.Tensor:
    """`t` flattened and zero-padded into rows of BLOCK values."""
    flat = t.reshape(-1)
    pad = -flat.numel() % BLOCK
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, BLOCK)


def _pack_int(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes q in [-L, L], L = 2^(bits-1) - 1, per block (scale = the block's max |x| / L),
    8 / bits of them to a byte (int4: [-7, 7]; int2: [-1, 1], ternary)."""
    levels, per_byte = 2 ** (bits - 1) - 1, 8 // bits
    blocks = _blocks(t)
    scales = blocks.abs().amax(dim=1) / levels
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))  # NaN stays NaN
    q = torch.round(blocks / safe[:, None]).clamp(-levels, levels).nan_to_num(0.0)
    n = -(-t.numel() // per_byte) * per_byte  # whole bytes (BLOCK is a multiple of 8)
    codes = (q.reshape(-1)[:n] + levels + 1).to(torch.uint8).view(-1, per_byte)
    packed = torch.zeros(codes.shape[0], dtype=torch.uint8)
    for i in range(per_byte):
        packed |= codes[:, i] << (bits * i)
    return packed, scales.float()


def _scaled(values: torch.Tensor, scales: torch.Tensor, shape, dtype) -> torch.Tensor:
    """Flat per-value codes times their block's scale, in `shape` and `dtype`."""
    n = values.numel()
    blocks = torch.nn.functional.pad(values.to(dtype), (0, -n % BLOCK)).view(-1, BLOCK)
    return (blocks * scales.to(dtype)[:, None]).reshape(-1)[:n].reshape(shape)


def _unpack_int(packed, scales, shape, dtype, bits: int) -> torch.Tensor:
    levels, per_byte = 2 ** (bits - 1) - 1, 8 // bits
    mask = (1 << bits) - 1
    codes = torch.stack([(packed >> (bits * i)) & mask for i in range(per_byte)], dim=1)
    values = codes.reshape(-1)[: math.prod(shape)].to(torch.float32) - (levels + 1)
    return _scaled(values, scales, shape, dtype)


def _pack_sign(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One bit per value (x >= 0) and each block's mean |x| (over its real values)."""
    flat = t.reshape(-1)
    blocks = _blocks(t)
    counts = torch.full((blocks.shape[0],), float(BLOCK))
    if flat.numel() % BLOCK:
        counts[-1] = flat.numel() % BLOCK
    scales = blocks.abs().sum(dim=1).float() / counts
    bits = np.packbits((flat >= 0).numpy())
    return torch.from_numpy(bits), scales


def _unpack_sign(packed: torch.Tensor, scales: torch.Tensor, shape, dtype) -> torch.Tensor:
    bits = np.unpackbits(packed.numpy(), count=math.prod(shape)).astype(np.float32)
    return _scaled(torch.from_numpy(bits) * 2.0 - 1.0, scales, shape, dtype)


def compress(state: State, kind: str, stats: Collection[str] = ()) -> tuple[dict, int]:
    """A message payload for `state` and its size in bytes on the wire.

    `none`: tensors as they are (4 bytes per fp32 value). `fp16`: floats as float16 (2
    bytes). `int8`: each floating tensor as int8 codes q = round(x / scale) with one fp32
    scale = max|x| / 127 per tensor (1 byte per value + 4 per tensor); error <= scale / 2.
    For changes only (CHANGE_ONLY, see `compress_with_feedback`): `int4`, codes in [-7, 7]
    with one fp32 scale = max|x| / 7 per block of BLOCK values, packed two to a byte;
    `int2`, ternary codes in [-1, 1] with scale = max|x| per block, four to a byte;
    `sign`, one bit per value (its sign) with one fp32 scale per block, the block's mean
    |x| (signSGD's scaled sign; Karimireddy et al. 2019). Integer tensors travel unchanged.
    Non-finite values survive fp16 (NaN stays NaN) and make the scale of their tensor
    (int8) or block (int4, int2, sign) non-finite, so validation still sees them after
    decompression. The tensors named in `stats` (running statistics) go int8 where
    `kind` is int4, int2 or sign.
    """
    _check_kind(kind)
    payload: dict = {"kind": kind, "tensors": {}}
    for name, t in state.items():
        kind_t = _kind_for(name, kind, stats)
        if not t.is_floating_point() or kind_t == "none":
            payload["tensors"][name] = t.clone()
        elif kind_t == "fp16":
            payload["tensors"][name] = (t.to(torch.float16), t.dtype)
        elif kind_t == "int8":
            scale = float(t.abs().max()) / 127.0 if t.numel() else 0.0
            if math.isfinite(scale) and scale > 0:
                q = torch.round(t / scale).clamp(-127, 127).to(torch.int8)
            else:
                q = torch.zeros(t.shape, dtype=torch.int8)
            payload["tensors"][name] = (q, scale, t.dtype)
        else:
            if kind_t in BITS:
                packed, scales = _pack_int(t.detach(), BITS[kind_t])
            else:
                packed, scales = _pack_sign(t.detach())
            payload["tensors"][name] = (kind_t, packed, scales, tuple(t.shape), t.dtype)
    return payload, compressed_size(state, kind, stats)


def decompress(payload: dict) -> State:
    """The state a receiver reconstructs from `compress`'s payload."""
    out: State = {}
    for name, item in payload["tensors"].items():
        if isinstance(item, torch.Tensor):
            out[name] = item.clone()
        elif len(item) == 2:
            half, dtype = item
            out[name] = half.to(dtype)
        elif len(item) == 5:
            kind, packed, scales, shape, dtype = item
            if kind in BITS:
                out[name] = _unpack_int(packed, scales, shape, dtype, BITS[kind])
            else:
                out[name] = _unpack_sign(packed, scales, shape, dtype)
        else:
            q, scale, dtype = item
            if math.isfinite(scale):
                out[name] = q.to(dtype) * scale
            else:
                out[name] = torch.full(q.shape, float("nan"), dtype=dtype)
    return out


def compress_with_feedback(
    change: State, residual: State | None, kind: str, stats: Collection[str] = ()
) -> tuple[dict, int, State]:
    """Error feedback (EF-SGD, Karimireddy et al. 2019; Seide et al.'s 1-bit SGD): compress
    `change` plus what earlier messages' compression left out (`residual`, None at first),
    and return the payload, its size and the new residual, what this message leaves out.
    Over rounds every part of the changes is sent, only late. A residual that is not finite
    (a non-finite change) is dropped, so one bad round does not spoil later messages."""
    target = {
        name: t + residual[name] if residual and t.is_floating_point() else t
        for name, t in change.items()
    }
    payload, nbytes = compress(target, kind, stats)
    sent = decompress(payload)
    left = {}
    for name, t in target.items():
        if t.is_floating_point():
            r = t - sent[name]
            left[name] = r if bool(torch.isfinite(r).all()) else torch.zeros_like(r)
    return payload, nbytes, left


# ----------------------------------------------------------------------------- faults


def corrupt(
    state: State,
    fault: str,
    scale: float,
    generator: torch.Generator,
    earlier: State | None = None,
) -> State:
    """What a faulty agent sends instead of its weights (robustness experiments).

    `nan` / `inf`: one value of every floating tensor replaced; `scale`: all floats times
    `scale`; `noise`: Gaussian noise with `scale` times each tensor's own std added;
    `random`: every floating tensor replaced by Gaussian values with its own mean and std
    (about the real norm, so a norm check cannot see it); `sign_flip`: all floats negated;
    `stale`: `earlier` (weights the agent held in an earlier round) sent again, integer
    tensors included; `wrong_shape`: every floating tensor flattened with one value appended.
    Integer tensors (BatchNorm's batch counter) are sent as they are, except by `stale`.
    """
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}: {', '.join(FAULTS)}")
    if fault == "stale":
        if earlier is None:
            raise ValueError("fault 'stale' needs the earlier state it replays")
        return {name: t.clone() for name, t in earlier.items()}
    out: State = {}
    for name, t in state.items():
        if not t.is_floating_point():
            out[name] = t.clone()
            continue
        x = t.clone()
        if fault in ("nan", "inf"):
            if x.numel():
                x.view(-1)[0] = float("nan") if fault == "nan" else float("inf")
        elif fault == "scale":
            x = x * scale
        elif fault == "noise":
            std = float(t.std()) if t.numel() > 1 else 1.0
            x = x + scale * max(std, 1e-3) * torch.randn(t.shape, generator=generator)
        elif fault == "random" and t.numel():
            mean, std = t.double().mean(), t.double().std(unbiased=False)  # a 1-value tensor: std 0
            noise = torch.randn(t.shape, generator=generator, dtype=torch.float64)
            x = (mean + std * noise).to(t.dtype)
        elif fault == "sign_flip":
            x = -x
        elif fault == "wrong_shape":
            x = torch.cat([x.reshape(-1), x.new_zeros(1)])
        out[name] = x
    return out
