"""One peer of a networked run: trains on its own data, averages weights with live peers.

    speechswarm peer --config p2p-tiny --data mine.jsonl --out runs/me
    speechswarm peer --config p2p-tiny --data mine.jsonl --initial-peers /ip4/10.0.0.5/tcp/4100/p2p/12D3...

`run_peer()` builds the ordinary training run (`train.assemble.build_run`), joins the run's
hivemind DHT, and trains through the ordinary loop (`train.loop.run_steps`) with a
`HivemindSync` (hivemind_sync.py) at the loop's sync point: every `every` local steps it averages the model's
floating tensors with whichever peers are looking for a group at that moment (hivemind
`DecentralizedAverager`, groups of up to `group_size`, weights = training-set sizes), checks
the result (`p2p.mixing.check_received`: names, shapes, dtypes, finite, norm bound) and only
then loads it into the model. A round that finds no group, times out or fails the check
leaves the model as it was: training goes on locally. A peer that joins with
`--initial-peers` first downloads a live peer's weights, optimizer state and position (its
step, hence the LR schedule and round counter), checked before use (`state_transfer`).

Writes to `--out`: `address.txt` (how others join), `rounds.jsonl` (one row per averaging
attempt), `metrics.jsonl` (the loop's training log), `summary.json` (own-test WER/CER,
rounds joined, group sizes, bytes, averaging vs training time).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from speechswarm.config import Config
from speechswarm.data.manifest import read_manifest, write_manifest
from speechswarm.errors import InputNotFoundError
from speechswarm.p2p.net.auth import Gate, run_secret_authorizer
from speechswarm.p2p.net.hivemind_sync import (
    HivemindSync,
    averaged_names,
    hivemind_compression,
    read_rows_file,
)
from speechswarm.p2p.net.neighbour_groups import NeighbourPlan
from speechswarm.p2p.net.settings import NetSettings, staleness_bound
from speechswarm.p2p.net.state_transfer import load_from_peers, pack_state
from speechswarm.report import pct


def start_dht(settings: NetSettings, gate: Gate, initial_peers, identity: str):
    import hivemind

    kwargs = {}
    if gate.secret:
        kwargs["authorizer"] = run_secret_authorizer(gate.secret)
    if settings.announce:
        kwargs["announce_maddrs"] = [settings.announce]
    try:
        return hivemind.DHT(
            initial_peers=list(initial_peers) or None,
            host_maddrs=[f"/ip4/{settings.host}/tcp/{settings.port}"],
            identity_path=identity or None,
            start=True,
            **kwargs,
        )
    except Exception as e:
        hint = (
            "check --initial-peers (a peer's printed address) and, in a closed run, that this "
            "peer has the same run secret ($SPEECHSWARM_RUN_SECRET or --secret-file)"
        )
        raise RuntimeError(f"could not join the run's DHT: {e}; {hint}") from e


def _finished_summary(run, state, out_dir: Path, test_path: Path, global_test: str) -> dict:
    """The summary a finished peer wrote, printed again. A peer stopped after its last
    checkpoint but before its summary is scored now; its network figures come from its
    rounds.jsonl (bytes, rounds joined), the rest of hivemind's counters are lost."""
    path = out_dir / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
    else:
        rows = read_rows_file(out_dir / "rounds.jsonl")
        joined = [r for r in rows if r["ok"]]
        summary = {
            "peer_id": "(resumed)",
            "steps": state.step,
            **_score(run, test_path, global_test),
            "rounds": len(rows),
            "rounds_joined": len(joined),
            "partial_rounds": sum(bool(r.get("partial")) for r in rows),
            "mean_group_size": (
                sum(r["group_size"] for r in joined) / len(joined) if joined else 0.0
            ),
            "bytes_sent": sum(int(r.get("bytes_sent", 0)) for r in rows),
            "bytes_recv": sum(int(r.get("bytes_recv", 0)) for r in rows),
            "averaging_seconds": round(sum(_blocked(r) for r in rows), 3),
            "training_seconds": round(state.train_seconds, 3),
            "train_utts": len(run.sampler.durations),
        }
        path.write_text(json.dumps(summary, indent=1) + "\n")
    print(summary_line(summary), flush=True)
    return summary


def _blocked(row: dict) -> float:
    """Seconds a round held training up: all of it, unless it ran in the background."""
    return float(row.get("blocked_s", row["seconds"]))


def _split(data: str, test: str, cfg: Config, out: Path) -> tuple[Path, Path]:
    """(train manifest, own test manifest): `test` as given, else p2p.test_fraction of data."""
    from speechswarm.p2p.partition import split_agents

    for path, flag in ((data, "--data"), (test, "--test")):
        if path and not Path(path).is_file():
            raise InputNotFoundError(f"{flag} {path}: no such manifest")
    if test:
        return Path(data), Path(test)
    agent = split_agents([read_manifest(data)], cfg.p2p.test_fraction, 0.0, seed=cfg.p2p.seed)[0]
    write_manifest(out / "train.jsonl", agent.train)
    write_manifest(out / "test.jsonl", agent.test)
    return out / "train.jsonl", out / "test.jsonl"


def peer_config(cfg: Config, train: Path, test: Path, out: Path, every: int) -> Config:
    """The peer's training config: its own data, p2p.rounds rounds of `every` steps."""
    rounds_steps = cfg.p2p.rounds * every
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, train_manifest=str(train), dev_manifest=str(test)),
        train=dataclasses.replace(
            cfg.train,
            out_dir=str(out),
            max_steps=rounds_steps,
            epochs=max(cfg.train.epochs, 10**6),
            eval_every=0,
            log_every=max(1, min(cfg.train.log_every, every)),
        ),
    )


def steps_per_round(cfg: Config, settings: NetSettings, batches_per_epoch: int) -> int:
    if settings.every:
        return settings.every
    if cfg.p2p.local_steps:
        return cfg.p2p.local_steps
    return max(1, cfg.p2p.local_epochs * batches_per_epoch)


def run_peer(
    cfg: Config,
    data: str,
    out: str,
    *,
    test: str = "",
    global_test: str = "",
    initial_peers: tuple[str, ...] = (),
    settings: NetSettings | None = None,
    gate: Gate | None = None,
    identity: str = "",
    prefix: str = "speechswarm",
    progress: bool = True,
    resume: str = "",
    index: int = -1,
) -> dict:
    """Train one peer to p2p.rounds averaging rounds; returns (and writes) its summary.

    `resume`: a checkpoint, or "auto" for the last one in `out`'s checkpoints/ (none there:
    a fresh start). A peer that had already finished its rounds trains nothing, joins no
    swarm, and returns the summary it wrote then. `index`: this peer's number on the graph
    with `settings.topology`."""
    from speechswarm.checkpoint import load_checkpoint
    from speechswarm.p2p.workspace import batchnorm_stat_names
    from speechswarm.train.assemble import build_run, schedule_for
    from speechswarm.train.loop import (
        FINISHED,
        RunLimits,
        TrainState,
        log_finished,
        restore,
        resume_path,
        run_steps,
        save,
    )

    settings = settings or NetSettings()
    gate = gate or Gate()
    settings.check()
    plan = NeighbourPlan.from_config(cfg.p2p, index, settings.group_size) if settings.topology else None  # fmt: skip
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = _split(data, test, cfg, out_dir)
    run = build_run(peer_config(cfg, train_path, test_path, out_dir, 1), progress=progress)
    every = steps_per_round(cfg, settings, len(run.sampler))
    if settings.background:  # before joining anyone: a bound beyond a round is refused
        staleness_bound(settings.max_staleness, every)
    if every != 1:  # p2p.rounds rounds of `every` steps: the schedule spans them
        run.cfg = peer_config(cfg, train_path, test_path, out_dir, every)
        run.scheduler = schedule_for(run.cfg, run.optimizer, len(run.sampler), run.accumulate)
    if index > 0:
        run = draw_as_agent(run, index)
    state, rng = TrainState(), None
    path = resume_path(run, resume or None)
    if path is not None:
        rng = restore(run, state, path)
        run.log.info(f"resumed from {path} at step {state.step}")
        finished = RunLimits(run, state)(state)
        if finished in FINISHED:
            log_finished(run, state, finished)
            return _finished_summary(run, state, out_dir, test_path, global_test)
    names = averaged_names(run.model, cfg.p2p.bn_stats)
    weight = float(len(run.sampler.durations)) if cfg.p2p.weights == "data_size" else 1.0
    dht = start_dht(settings, gate, initial_peers, identity)
    averager = None
    try:
        averager = _start_averager(run.model, names, dht, gate, settings, prefix, cfg.p2p)
        address = _announce(dht, gate, prefix, out_dir)
        averager.share_state(*pack_state(run.model, names, run.optimizer, step=0, round=0))
        present = wait_for_peers(dht, prefix, settings.wait_peers, settings.wait_s, run.log)
        joined = {"loaded": False, "from_step": None, "reason": "first peer", "refused": []}
        if path is not None:
            joined["reason"] = "resumed"
        elif initial_peers and settings.load_state:
            # the swarm's weights, optimizer state and position (state.step, the schedule)
            joined = load_from_peers(
                averager, run.model, run.optimizer, run.scheduler, state, names,
                grad_clip=cfg.optim.grad_clip, max_steps=run.cfg.train.max_steps,
                timeout=settings.timeout_s, log=run.log,
            )  # fmt: skip
        start_step = state.step
        sync = HivemindSync(
            averager, names, every=every, weight=weight, settings=settings, p2p=cfg.p2p,
            rounds_path=out_dir / "rounds.jsonl", log=run.log, first_round=state.step // every,
            bn_names=batchnorm_stat_names(run.model), optimizer=run.optimizer, plan=plan,
            background=settings.background, max_staleness=settings.max_staleness,
            last_step=run.cfg.train.max_steps,
        )  # fmt: skip
        if path is not None:
            sync.outer.update(load_checkpoint(path).get("outer") or {})
        sync.set_anchor(run.model)
        sync.share(run.model, state.step)
        extra = {**run.checkpoint_extra, "outer": sync.outer}  # saved as it is then
        run = dataclasses.replace(run, sync=sync, checkpoint_extra=extra)
        from speechswarm.report import MetricsLogger

        run.metrics = MetricsLogger(
            out_dir, tensorboard=False, resume_step=state.step if path is not None else None
        )
        started = time.perf_counter()
        run_steps(run, state, RunLimits(run, state), rng_to_restore=rng, progress=progress)
        sync.finish(run.model, state)  # a background round still in flight (a time budget)
        wall = time.perf_counter() - started
        save(run, state)  # checkpoints/: the peer's final model, for eval, transcribe, export
        scores = _score(run, test_path, global_test)
        summary = _summary(run, state, sync, averager, joined, scores, wall, address, every)
        summary["peers_at_start"] = present
        summary["start_step"] = start_step  # a newcomer's first step is the swarm's
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(summary_line(summary), flush=True)
        return summary
    finally:
        if averager is not None:
            averager.shutdown()
        dht.shutdown()


def draw_as_agent(run, index: int):
    """`run` drawing as the simulation's agent `index` (`p2p.workspace`: rank `index` of a
    `speechswarm train` run): batch order and speed perturbation from train.seed + index,
    dropout from `seed_everything(train.seed, index)`, augmentation from rank index's
    generator seed. Without it every peer of a swarm draws as agent 0, and a swarm's peer k
    sees its batches in another order than the simulated agent k on the same data."""
    from speechswarm.data.dataset import SpeechDataset, make_loader
    from speechswarm.data.sampler import BucketBatchSampler
    from speechswarm.train.rng import seed_everything
    from speechswarm.train.run import RANK_SEED_STRIDE

    cfg, old = run.cfg, run.dataset
    seed = cfg.train.seed + index
    dataset = SpeechDataset(
        old.utts, old.tokenizer, old.sample_rate, speed_factors=old.speed_factors, seed=seed,
        skip_log=old.skip_log,
    )  # fmt: skip
    sampler = BucketBatchSampler(
        [u.duration for u in old.utts], cfg.data.max_batch_seconds,
        max_batch_size=cfg.data.max_batch_size, sortagrad=cfg.data.sortagrad, seed=seed,
        speed_factors=cfg.data.speed_factors,
    )  # fmt: skip
    loader = make_loader(dataset, sampler, num_workers=cfg.data.num_workers)
    seed_everything(cfg.train.seed, index)
    run.generator.manual_seed(cfg.train.seed + 1 + RANK_SEED_STRIDE * index)
    return dataclasses.replace(run, dataset=dataset, sampler=sampler, loader=loader)


def _start_averager(model, names, dht, gate, settings, prefix, p2p):
    from speechswarm.p2p.net.averager import GatedAverager

    sd = model.state_dict()
    return GatedAverager(
        [sd[n].detach().clone().float() for n in names],
        dht,
        gate=gate,
        # every incoming part is checked (shape, finite, weight); with p2p.validate also its norm
        max_norm_ratio=p2p.max_norm_ratio if p2p.validate else None,
        aggregation=p2p.aggregation,  # the parts this peer reduces: mean, median, trimmed mean
        trim=p2p.trim_fraction,
        prefix=prefix,
        start=True,
        target_group_size=settings.group_size,
        min_group_size=2,
        min_matchmaking_time=settings.matchmaking_s,
        request_timeout=max(0.1, settings.matchmaking_s / 3),
        allreduce_timeout=settings.timeout_s,
        next_chunk_timeout=settings.chunk_timeout_s,
        compression=hivemind_compression(settings.compression),
        declare_state_period=10.0,
        allow_state_sharing=False,  # on at the first share_state: no donor without a state
    )


def _announce(dht, gate: Gate, prefix: str, out_dir: Path) -> list[str]:
    """Publish this peer's membership record; print and write its address."""
    from hivemind.utils.timed_storage import get_dht_time

    from speechswarm.p2p.net.averager import members_key

    peer = dht.peer_id.to_bytes()
    expiry = get_dht_time() + 24 * 3600
    if gate.secret:
        dht.store(members_key(prefix), gate.tag(peer), expiry, subkey=peer)
    dht.store(f"{prefix}_present", True, expiry, subkey=peer)
    addresses = [str(a) for a in dht.get_visible_maddrs()]
    (out_dir / "address.txt").write_text("\n".join(addresses) + "\n")
    print(f"peer {dht.peer_id.to_base58()} listening; others join with:", flush=True)
    for a in addresses:
        print(f"  --initial-peers {a}", flush=True)
    return addresses


def wait_for_peers(dht, prefix: str, count: int, timeout: float, log) -> int:
    """Block until `count` peers have announced themselves (or `timeout` s); returns how many."""
    deadline = time.monotonic() + timeout
    seen = 1
    while count > 1:
        found = dht.get(f"{prefix}_present", latest=True)
        seen = len(found.value) if found is not None and isinstance(found.value, dict) else 1
        if seen >= count or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if count > 1:
        log.info(f"{seen} of {count} peers present; training starts")
    return seen


def _score(run, test_path: Path, global_test: str) -> dict:

    out = {}
    for key, path in (("own", test_path), ("global", global_test)):
        if not path:
            continue
        utts = read_manifest(path)
        if not utts:
            continue
        result = run.score(utts)
        out[f"{key}_wer"], out[f"{key}_cer"] = result.wer, result.cer
    return out


def _summary(run, state, sync, averager, joined, scores, wall, address, every) -> dict:
    losses = [r["train_loss"] for r in run.metrics.read() if r.get("train_loss") is not None]
    tail = losses[-max(1, every) :]
    sizes = sync.group_sizes
    return {
        "peer_id": averager.peer_id.to_base58(),
        "address": address,
        "steps": state.step,
        "train_loss": sum(tail) / len(tail) if tail else math.nan,
        **scores,
        "rounds": sync.round,
        "rounds_joined": sync.joined,
        "partial_rounds": sync.partial,
        "round_outcomes": sync.reasons,
        "mean_group_size": sum(sizes) / len(sizes) if sizes else 0.0,
        "bytes_sent": int(averager.counter("bytes_sent")),
        "bytes_recv": int(averager.counter("bytes_recv")),
        "state_bytes_sent": int(averager.counter("state_bytes_sent")),
        "rejected_joins": int(averager.counter("rejected_joins")),
        "rejected_groups": int(averager.counter("rejected_groups")),
        "rejected_downloads": int(averager.counter("rejected_downloads")),
        "rejected_parts": int(averager.counter("rejected_parts")),
        "offenders": int(averager.counter("offenders")),  # members left out after a bad part
        "loaded_state": joined,
        "rejected_states": len(joined.get("refused", [])),  # downloads that failed the checks
        "aggregation": sync.p2p.aggregation,
        "aggregation_fallbacks": sync.fallbacks,  # averaged rounds that used the mean instead
        "topology": sync.p2p.topology if sync.plan is not None else "",
        "neighbour_rounds": sync.neighbour_rounds,  # averaged with the planned neighbours
        "topology_fallbacks": sync.topology_fallbacks,  # rounds that looked for anyone instead
        "robust_parts": int(averager.counter("robust_parts")),  # parts it reduced robustly
        "fallback_parts": int(averager.counter("fallback_parts")),  # ... by the mean instead
        **_background_fields(sync),
        # seconds training stood still for averaging (--background: snapshot, waits, merge)
        "averaging_seconds": round(sync.averaging_seconds, 3),
        "training_seconds": round(state.train_seconds - sync.averaging_seconds, 3),
        "wall_time": round(wall, 3),
        "train_utts": len(run.sampler.durations),
    }


def _background_fields(sync) -> dict:
    """--background: how late averages landed and what overlapping training saved."""
    stale = sync.staleness
    return {
        "background": sync.background,
        "max_staleness": sync.max_staleness if sync.background else 0,
        "background_rounds": sync.overlapped,  # rounds whose all-reduce overlapped training
        "mean_staleness": sum(stale) / len(stale) if stale else 0.0,  # steps, applied rounds
        "staleness_max": max(stale, default=0),
        "overlap_seconds": round(sync.overlap_seconds, 3),  # all-reduce while training went on
        "background_waits": sync.waits,  # rounds the loop waited for (bound reached, run end)
        "wait_seconds": round(sync.wait_seconds, 3),
        "background_gave_up": sync.gave_up,  # rounds given up when --timeout-s ran out
    }


def _background(s: dict) -> str:
    if not s.get("background"):
        return ""
    return (
        f"; background: {s['background_rounds']} rounds overlapped "
        f"{s['overlap_seconds']:.1f} s of averaging, staleness {s['mean_staleness']:.1f} steps "
        f"on average (max {s['staleness_max']}, bound {s['max_staleness']}), "
        f"{s['background_waits']} waited {s['wait_seconds']:.1f} s, "
        f"{s['background_gave_up']} given up"
    )


def _partial(s: dict) -> str:
    n = s.get("partial_rounds", 0)
    return f", {n} of them partial (a member stalled mid-round)" if n else ""


def _aggregation(s: dict) -> str:
    rule = s.get("aggregation", "mean")
    if rule == "mean":
        return ""
    n = s.get("aggregation_fallbacks", 0)
    return f", by {rule}" + (f" ({n} of them by the mean: groups under 3)" if n else "")


def _topology(s: dict) -> str:
    if not s.get("topology"):
        return ""
    return (
        f", {s['neighbour_rounds']} with {s['topology']} neighbours, "
        f"{s['topology_fallbacks']} fell back to any peer"
    )


def summary_line(s: dict) -> str:
    return (
        f"peer {s['peer_id'][-8:]}: {s['steps']} steps, own WER {pct(s.get('own_wer'))} CER "
        f"{pct(s.get('own_cer'))}; joined {s['rounds_joined']}/{s['rounds']} rounds"
        f"{_partial(s)}{_aggregation(s)}{_topology(s)} (mean group "
        f"{s['mean_group_size']:.1f}), {s['bytes_sent'] / 1e6:.2f} MB sent, "
        f"{s['bytes_recv'] / 1e6:.2f} MB received; {s['averaging_seconds']:.1f} s averaging, "
        f"{s['training_seconds']:.1f} s training{_background(s)}"
    )
