"""What a newcomer downloads from a live peer, and the checks it passes before it is used.

    averager.share_state(*pack_state(model, names, optimizer, step=40, round=10))   # a donor
    joined = load_from_peers(averager, run, state, names, p2p, timeout=15.0)         # a newcomer

A donor offers the swarm's position, not just its weights: the averaged model tensors
(`names`), its optimizer's per-parameter state (Adam's moments and step counts, SGD's momentum
buffers) and its step and round. A newcomer that adopts all of it continues the swarm's LR
schedule at the donor's step with the donor's moments, instead of warming up again from step
0 with empty moments on weights that are already trained. It then trains until its own
`train.max_steps` (p2p.rounds x every), so it ends with the swarm, and averages at the same
steps as the others.

Everything downloaded is checked as any received tensor is (`check_download`: metadata,
tensor count, names, shapes, dtypes, finite values, magnitudes, optimizer layout and bounds,
the step). A download that fails is refused, logged with its reason and counted, and the
next donor is asked (up to `MAX_DONORS`); when none passes the newcomer starts from its own
state. Metadata is msgpack and tensors protobuf (`averager.GatedAverager`): nothing unpickled.
"""

from __future__ import annotations

import math

import torch

from speechswarm.p2p import mixing
from speechswarm.p2p.net.part_check import rms

FORMAT = 1  # of the offered state; another value is refused ("metadata")
MAX_DONORS = 3  # donors asked in turn when a download is refused
# A downloaded tensor's RMS may be at most this many times the larger of the newcomer's own
# (freshly initialised) tensor's RMS and the RMS of its whole parameter vector. A trained model
# is far from its initialisation: on `tiny` after 2,183 steps (runs/demo-v2) learned tensors
# stood at most 9.3x (a conv BatchNorm bias), BatchNorm running statistics at most 236x (a
# conv running mean). Garbage of 1e6 is ~1e7x.
MAX_SCALE = {"learned": 100.0, "statistics": 1000.0}
ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq")


def optimizer_keys(optimizer: torch.optim.Optimizer) -> tuple[str, ...] | None:
    """The per-parameter state keys `optimizer` keeps once it has stepped; None for an
    optimizer whose state is not transferred (only weights and position are, then)."""
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        amsgrad = any(g.get("amsgrad") for g in optimizer.param_groups)
        return ADAM_KEYS + (("max_exp_avg_sq",) if amsgrad else ())
    if isinstance(optimizer, torch.optim.SGD):
        momentum = any(g.get("momentum", 0.0) for g in optimizer.param_groups)
        return ("momentum_buffer",) if momentum else ()
    return None


def pack_state(model, names, optimizer, *, step: int, round: int) -> tuple[dict, list]:
    """(metadata, tensors) a donor offers: `names`' tensors of `model`, then the optimizer's
    per-parameter tensors in the order `metadata["optimizer"]` lists ([param index, key])."""
    sd = model.state_dict()
    tensors = [sd[n].detach() for n in names]
    layout = []
    if optimizer is not None and optimizer_keys(optimizer) is not None:
        for index, entry in sorted(optimizer.state_dict()["state"].items()):
            for key, value in sorted(entry.items()):
                if isinstance(value, torch.Tensor):
                    layout.append([int(index), key])
                    tensors.append(value.detach())
    lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None
    metadata = {"format": FORMAT, "step": int(step), "round": int(round), "lr": lr,
                "optimizer": layout}  # fmt: skip
    return metadata, tensors


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_download(
    metadata, tensors, *, own: dict, params: list, keys, stat_names=(), grad_clip: float = 0.0
) -> tuple[str, dict]:
    """Why a download must be refused ("" if it may be used), and what it holds:
    {"weights": name -> tensor, "optimizer": param index -> {key: tensor}, "step", "round",
    "lr"}.

    `own`: the newcomer's tensors of the averaged names (their names, shapes, dtypes and
    scale); `params`: its optimizer's parameters in state-dict index order; `keys`:
    `optimizer_keys` of its optimizer; `stat_names`: BatchNorm statistics among `own`;
    `grad_clip`: optim.grad_clip (0: none). Reasons: `metadata`, `count` (tensors other than
    the metadata announces), then for the weights `keys`, `shape`, `dtype`, `nonfinite`,
    `scale` (RMS above `MAX_SCALE`), `negative` (a negative running variance), and for the
    optimizer `optimizer keys`, `optimizer shape`, `optimizer nonfinite`, `optimizer scale`
    (Adam's moments beyond what clipped gradients can give: |m| <= grad_clip, 0 <= v <=
    grad_clip^2), `optimizer step` (a step count that is not a whole number in [0, step])."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        return "metadata", {}
    step, round_, layout = metadata.get("step"), metadata.get("round"), metadata.get("optimizer")
    if not (_count(step) and _count(round_) and isinstance(layout, list)):
        return "metadata", {}
    names = list(own)
    if len(tensors) != len(names) + len(layout):
        return "count", {}
    weights = dict(zip(names, tensors[: len(names)], strict=True))
    reason = _weights_problem(weights, own, stat_names)
    if reason:
        return reason, {}
    optimizer, reason = _optimizer_state(
        layout, tensors[len(names) :], params, keys, step, grad_clip
    )
    if reason:
        return reason, {}
    lr = metadata.get("lr")
    lr = float(lr) if isinstance(lr, (int, float)) and math.isfinite(lr) else None
    return "", {"weights": weights, "optimizer": optimizer, "step": step, "round": round_, "lr": lr}


def _weights_problem(weights: dict, own: dict, stat_names) -> str:
    reason = mixing.check_layout(weights, own)
    if reason:
        return reason
    if any(weights[n].dtype != t.dtype for n, t in own.items()):
        return "dtype"
    stats = set(stat_names)
    learned = [t for n, t in own.items() if n not in stats]
    squares = sum(float(t.double().pow(2).sum()) for t in learned)
    floor = math.sqrt(squares / max(1, sum(t.numel() for t in learned)))
    for name, t in weights.items():
        if not bool(torch.isfinite(t).all()):
            return "nonfinite"
        bound = MAX_SCALE["statistics" if name in stats else "learned"]
        if rms(t) > bound * max(rms(own[name]), floor):
            return "scale"
        if name.endswith("running_var") and bool((t < 0).any()):
            return "negative"
    return ""


def _optimizer_state(layout, tensors, params, keys, step: int, grad_clip: float):
    """(param index -> {key: tensor}, reason) from the optimizer part of a download."""
    state: dict[int, dict] = {}
    for entry, value in zip(layout, tensors, strict=True):
        ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)
        if not (ok and _count(entry[0]) and entry[0] < len(params)) or keys is None:
            return {}, "optimizer keys"
        index, key = entry
        if key not in keys or key in state.setdefault(index, {}):
            return {}, "optimizer keys"
        state[index][key] = value
    for index, entry in state.items():
        if set(entry) != set(keys):
            return {}, "optimizer keys"
        for key, value in entry.items():
            reason = _moment_problem(key, value, params[index], step, grad_clip)
            if reason:
                return {}, reason
    return state, ""


def _moment_problem(key: str, value, param, step: int, grad_clip: float) -> str:
    shape = torch.Size([]) if key == "step" else param.shape
    if value.shape != shape or not value.is_floating_point():
        return "optimizer shape"
    if not bool(torch.isfinite(value).all()):
        return "optimizer nonfinite"
    if key == "step":
        count = float(value)
        return "" if count == int(count) and 0 <= count <= step else "optimizer step"
    if not value.numel():
        return ""
    limit = grad_clip * (1 + 1e-3)  # clip_grad_norm_ leaves a norm a hair above grad_clip
    if key == "exp_avg" and grad_clip and float(value.abs().max()) > limit:
        return "optimizer scale"
    squares = key in ("exp_avg_sq", "max_exp_avg_sq")
    if squares and (float(value.min()) < 0 or (grad_clip and float(value.max()) > limit**2)):
        return "optimizer scale"
    return ""


def state_sum(tensors) -> float:
    """Sum of all values in float64, in order: equal sums identify the same weights here."""
    return float(sum(float(t.double().sum()) for t in tensors))


def set_position(scheduler, optimizer, step: int) -> None:
    """Put a LambdaLR schedule (and the optimizer's LRs) at optimizer step `step`, as if it had
    taken `step` steps: the next update uses base LR x factor(step)."""
    if scheduler is None:
        return
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]  # fmt: skip
    sd = scheduler.state_dict()
    scheduler.load_state_dict({**sd, "last_epoch": step, "_step_count": step + 1, "_last_lr": lrs})
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def adopt(parsed: dict, model, optimizer, scheduler, state, max_steps: int, log) -> bool:
    """Load a checked download; returns whether its position (optimizer state, schedule, step)
    was taken too. A donor at or past this peer's last step (`max_steps`) gives weights only:
    its position would leave this peer nothing to train."""
    model.load_state_dict({**model.state_dict(), **parsed["weights"]})
    step = parsed["step"]
    if max_steps and step >= max_steps:
        log.warning(
            f"the donor is at step {step}, at or past this peer's last step ({max_steps}): "
            "its weights loaded, its optimizer state and schedule position not"
        )
        return False
    if parsed["optimizer"]:
        # copies: torch's load_state_dict keeps tensors that already have the right dtype
        state_ = {i: {k: v.clone() for k, v in e.items()} for i, e in parsed["optimizer"].items()}
        optimizer.load_state_dict({**optimizer.state_dict(), "state": state_})
    set_position(scheduler, optimizer, step)
    state.step = step
    return True


def load_from_peers(
    averager, model, optimizer, scheduler, state, names, *, grad_clip, max_steps, timeout, log
) -> dict:
    """Download a live peer's state, check it (`check_download`) and load it: weights, optimizer
    state, schedule position and step. A refused download is logged and the next donor asked
    (at most MAX_DONORS). `averager.download_state(timeout, exclude)` gives (metadata, tensors,
    donor's peer ID) or None. Returns {"loaded", "from_step", "reason", "refused" (reasons of the
    downloads refused), and when loaded "state_sum", "position" (whether the optimizer state
    and schedule position were taken), "lr" (this peer's LR now), "donor_lr"}."""
    from speechswarm.p2p.workspace import batchnorm_stat_names

    sd = model.state_dict()
    own = {n: sd[n].detach().clone() for n in names}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    keys = optimizer_keys(optimizer)
    refused, tried = [], []
    while len(tried) < MAX_DONORS:
        got = averager.download_state(timeout=timeout, exclude=tried)
        if got is None:
            break
        metadata, tensors, donor = got
        tried.append(donor)
        reason, parsed = check_download(
            metadata, tensors, own=own, params=params, keys=keys,
            stat_names=batchnorm_stat_names(model), grad_clip=grad_clip,
        )  # fmt: skip
        if reason:
            refused.append(reason)
            log.warning(f"state downloaded from {donor} refused: {reason}")
            continue
        position = adopt(parsed, model, optimizer, scheduler, state, max_steps, log)
        lr = float(optimizer.param_groups[0]["lr"])
        log.info(
            f"loaded a peer's state: its step {parsed['step']}"
            + (f", optimizer state and LR {lr:.3g}" if position else " (weights only)")
        )
        if (
            position
            and parsed["lr"] is not None
            and not math.isclose(lr, parsed["lr"], rel_tol=1e-6)
        ):
            log.warning(
                f"the donor's LR at step {parsed['step']} was {parsed['lr']:.3g}, this peer's "
                f"schedule gives {lr:.3g}: do their optim settings differ?"
            )
        return {
            "loaded": True, "from_step": parsed["step"], "reason": "", "refused": refused,
            "state_sum": state_sum(parsed["weights"][n] for n in names), "position": position,
            "lr": lr, "donor_lr": parsed["lr"],
        }  # fmt: skip
    reason = refused[-1] if refused else "no peer shared its state"
    if refused:
        log.warning(f"{len(refused)} download(s) refused: starting from this peer's own state")
    return {"loaded": False, "from_step": None, "reason": reason, "refused": refused}
