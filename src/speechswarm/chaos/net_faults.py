"""Network faults against networked peers on loopback: does the swarm finish, and do the
honest peers' weights stay finite and equal where the averaging says they should be?

    python -m speechswarm.chaos.net_faults --trials 24 --out runs/chaos-net   # ~15 min, 2 cores

Each trial is a small swarm on 127.0.0.1 (`speechswarm peer` processes, hivemind): 3 honest
peers and a 4th that is the fault, kinds in turn (`KINDS`):
- `kill`: the 4th peer SIGKILLs its own process group just before its K-th outgoing message
  of its A-th all-reduce (A and K random; `chaos.net_fault_peer`): a kill while an
  all-reduce is in flight, aimed from inside because on loopback a round of this model takes
  tens of milliseconds, less than an outside observer's reaction time;
- `stall`: the 4th peer, an ordinary one, is SIGSTOPped (its process group: Python and its
  p2pd daemons) after a random number of rounds plus a random fraction of a second, for a
  random 3-15 s or for good;
- `garbage`: the 4th peer holds the run secret but corrupts every tensor part it sends, as
  a sender and as a reducer: NaN, 1e6, random bytes, a part one value too long or a NaN
  weight, in turn;
- `wrong_secret`: the 4th peer has another run secret (and 1e6 parts, should it get in) and
  tries to join through peer 0 at a random moment.
The honest peers must exit 0 after all their rounds; their final weights must be finite and
free of the faulty peer's values (`CONTAMINATION_BOUND`); rounds that honest peers completed
together (rows of rounds.jsonl with the same `group`, ok and not partial) must agree on the
averaged weights' checksum (`avg_sum`, up to `CHECKSUM_TOLERANCE` x `avg_abs`); no honest
group may hold a peer that is neither honest nor the trial's faulty one. `<out>/net_faults.json`
holds every trial, `<out>/net_faults.md` the table per fault kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

KINDS = ("kill", "stall", "garbage", "wrong_secret")
# |weight| an honest tiny model never reaches here (they stay within ~10); the faulty peer
# sends 1e6, which averaged into a group of <= 4 leaves values >= 2.5e5.
CONTAMINATION_BOUND = 1e3
HONEST = 3
PEER_TIMEOUT_S = 300.0


@dataclass
class NetFaultTrial:
    index: int
    kind: str
    fault: dict = field(default_factory=dict)  # what was injected, and when
    seconds: float = 0.0  # start of the first peer to the end of the last honest one
    honest_codes: list = field(default_factory=list)
    honest_rounds: list = field(default_factory=list)  # rows in each rounds.jsonl
    honest_steps: list = field(default_factory=list)
    finished: bool = False  # every honest peer exited 0 after all its rounds and steps
    finite: bool = False  # every honest final weight finite
    max_abs: float = math.nan  # the largest |weight| of the honest final models
    contaminated: bool = True  # an honest final weight at or above CONTAMINATION_BOUND
    groups_compared: int = 0  # groups that >= 2 honest peers completed together
    groups_equal: int = 0  # ... whose checksums agree
    unequal: list = field(default_factory=list)
    one_sided: int = 0  # complete rounds in which an honest groupmate has no complete row
    strangers: int = 0  # honest rows whose group holds an unknown peer
    flagged: dict = field(default_factory=dict)  # reason -> honest peers that caught the faulty one
    false_offenders: int = 0  # honest peers that an honest peer left out for a bad part
    rounds_ok: int = 0  # honest rounds averaged in full
    rounds_partial: int = 0  # averaged without a member for part of the vector
    rounds_failed: int = 0  # no group, timeout, failed, or rejected by validation
    reasons: dict = field(default_factory=dict)  # honest rounds' failure reasons
    max_round_s: float = 0.0  # the longest honest round (matchmaking + all-reduce)
    with_faulty: int = 0  # honest rounds whose group held the faulty peer
    with_faulty_ok: int = 0  # ... that were averaged and loaded (partial or not)
    faulty_code: int | None = None
    notes: list = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        return (
            self.finished
            and self.finite
            and not self.contaminated
            and self.groups_equal == self.groups_compared
            and not self.strangers
            and not self.false_offenders
            and not self.error
        )


# ---------------------------------------------------------------------- checks (pure)


def group_agreement(rows_by_peer: dict[str, list[dict]], tolerance: float) -> dict:
    """Rounds completed by >= 2 of these peers in one group, and whether they agree.

    `rows_by_peer`: peer ID -> its rounds.jsonl rows. A complete row is ok, not partial and
    has a `group`; rows of one group must have |avg_sum_a - avg_sum_b| <= tolerance x
    avg_abs. Returns {"compared", "equal", "unequal": [(group, sums)], "one_sided"}, where
    one_sided counts complete rows naming a groupmate (among these peers) that has no
    complete row of that group (it timed out, or its all-reduce failed on its side)."""
    by_group: dict[str, list[dict]] = defaultdict(list)
    complete = set()
    for peer, rows in rows_by_peer.items():
        for r in rows:
            if r.get("ok") and not r.get("partial") and r.get("group"):
                by_group[r["group"]].append(r)
                complete.add((peer, r["group"]))
    compared = equal = one_sided = 0
    unequal = []
    for group, rows in by_group.items():
        mates = {m for r in rows for m in r.get("members", []) if m in rows_by_peer}
        one_sided += sum((m, group) not in complete for m in mates)
        if len(rows) < 2:
            continue
        compared += 1
        sums = [r.get("avg_sum") for r in rows]
        scale = max((r.get("avg_abs") or 0.0) for r in rows)
        if None not in sums and max(sums) - min(sums) <= tolerance * scale:
            equal += 1
        else:
            unequal.append((group, sums))
    return {"compared": compared, "equal": equal, "unequal": unequal, "one_sided": one_sided}


def count_rounds(rows: list[dict], faulty: str, known: set[str]) -> dict:
    """One honest peer's rounds: outcomes, those with the faulty peer, those with strangers."""
    out = {"ok": 0, "partial": 0, "failed": 0, "with_faulty": 0, "with_faulty_ok": 0}
    out["strangers"], out["reasons"] = 0, {}
    for r in rows:
        if not r["ok"]:
            out["failed"] += 1
            out["reasons"][r["reason"]] = out["reasons"].get(r["reason"], 0) + 1
        else:
            out["partial" if r.get("partial") else "ok"] += 1
        members = set(r.get("members", []))
        if faulty and faulty in members:
            out["with_faulty"] += 1
            out["with_faulty_ok"] += bool(r["ok"])
        out["strangers"] += bool(members - known - {faulty})
    return out


def offences(log_text: str) -> list[tuple[str, str]]:
    """(peer ID, reason) for each member a peer's log says it left out for a bad part."""
    return re.findall(r"(\S+) sent a bad all-reduce part \(([^)]*)\)", log_text)


def final_weights(peer_dir: Path) -> tuple[bool, float]:
    """(all finite, largest |value|) of the floating tensors of a peer's final checkpoint."""
    import torch

    from speechswarm.checkpoint import load_checkpoint

    model = load_checkpoint(peer_dir / "checkpoints" / "last.pt")["model"]
    tensors = [t for t in model.values() if t.is_floating_point()]
    finite = all(bool(torch.isfinite(t).all()) for t in tensors)
    return finite, max(float(t.abs().max()) for t in tensors if t.numel())


def peer_id(peer_dir: Path) -> str:
    """The base58 peer ID in a peer's address.txt ("" if it never wrote one)."""
    path = peer_dir / "address.txt"
    text = path.read_text().split() if path.is_file() else []
    return text[0].rsplit("/p2p/", 1)[-1] if text else ""


# ---------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class Swarm:
    """What every trial shares: the config file, the 4 agents' folders, network settings."""

    config: Path
    agents: list
    rounds: int
    settings: object  # p2p.net.settings.NetSettings
    secret: str


def prepare(out: Path, corpus: Path, rounds: int):
    """The config (p2p-tiny cut to a ~30k-parameter model, 4 agents by speaker, `rounds`
    rounds of 2 steps) and its agents' manifests, written once under `out`."""
    from speechswarm.config import check_p2p, dump_yaml, load_config
    from speechswarm.p2p.experiment import make_agents, write_agents
    from speechswarm.p2p.net.auth import new_secret
    from speechswarm.p2p.net.settings import NetSettings

    cfg = load_config("p2p-tiny", [
        f"data.train_manifest={corpus / 'train.jsonl'}", f"data.dev_manifest={corpus / 'dev.jsonl'}",
        f"data.test_manifest={corpus / 'test.jsonl'}", "data.validate=false", "data.max_batch_size=4",
        "model.conv_channels=[4,4]", "model.rnn_hidden=32", "model.rnn_layers=1", "train.inter_ctc_layers=[]",
        "train.precision=fp32", "train.num_threads=1", "optim.schedule=constant",
        "p2p.agents=4", f"p2p.rounds={rounds}", "p2p.local_steps=2", f"train.out_dir={out}",
    ])  # fmt: skip
    check_p2p(cfg.p2p)
    agents = make_agents(cfg, out)
    write_agents(agents, out)
    config = out / "config.yaml"
    config.write_text(dump_yaml(cfg))
    settings = NetSettings(
        group_size=4, matchmaking_s=0.5, timeout_s=4.0, chunk_timeout_s=2.0, wait_peers=4
    )
    return Swarm(config, [out / "agents" / a.name for a in agents], rounds, settings, new_secret())


def _fault_for(kind: str, nth: int, rng: random.Random, rounds: int, marker: Path) -> dict:
    from speechswarm.chaos.net_fault_peer import GARBAGE_MODES

    if kind == "kill":
        return {"kind": "kill", "after": rng.randint(1, max(1, rounds // 2)),
                "message": rng.randint(1, 30), "marker": str(marker)}  # fmt: skip
    if kind == "garbage":
        return {"kind": "garbage", "mode": GARBAGE_MODES[nth % len(GARBAGE_MODES)],
                "seed": rng.randrange(2**31)}  # fmt: skip
    if kind == "wrong_secret":
        return {"kind": "garbage", "mode": "huge", "join_after_s": round(rng.uniform(0, 8), 2)}
    forever = rng.random() < 0.5
    return {"kind": "stall", "after_rounds": rng.randint(1, max(1, rounds // 2)),
            "extra_s": round(rng.uniform(0, 1.5), 2),
            "stall_s": None if forever else round(rng.uniform(3, 15), 1)}  # fmt: skip


def run_trial(
    index: int, kind: str, swarm: Swarm, run_dir: Path, rng: random.Random, nth: int = 0
) -> NetFaultTrial:
    """One swarm of 3 honest peers and a faulty 4th (the `nth` trial of its kind); the peers
    are gone when it returns."""
    from speechswarm.chaos.net_fault_peer import FAULT_ENV
    from speechswarm.p2p.net.auth import new_secret
    from speechswarm.p2p.net.swarm import PEER_MODULE, PeerProcess, peer_args, peer_env

    trial = NetFaultTrial(index, kind)
    shutil.rmtree(run_dir, ignore_errors=True)  # an old address.txt would send peers astray
    fault = _fault_for(kind, nth, rng, swarm.rounds, run_dir / "peer3" / "kill.json")
    trial.fault = {k: v for k, v in fault.items() if k != "marker"}
    settings = swarm.settings
    if kind == "wrong_secret":  # the honest peers do not wait for a peer that cannot join
        settings = dataclasses.replace(settings, wait_peers=HONEST)
    env = peer_env(swarm.secret)
    peers: list = []

    def start(k: int, initial, env=env, module=PEER_MODULE):
        args = peer_args(swarm.config, swarm.agents[k], run_dir / f"peer{k}", settings, initial=initial)  # fmt: skip
        peers.append(PeerProcess(args, run_dir / f"peer{k}", env, module=module))
        return peers[-1]

    started = time.perf_counter()
    try:
        first = start(0, ())
        address = [first.address()]
        for k in range(1, HONEST):
            start(k, address)
        if kind in ("kill", "garbage"):
            start(HONEST, address, {**env, FAULT_ENV: json.dumps(fault)}, "speechswarm.chaos.faulty_peer")  # fmt: skip
            codes = _wait(peers[:HONEST])
        elif kind == "stall":
            start(HONEST, address)
            codes = _stall(peers[:HONEST], peers[HONEST], fault, trial)
        else:
            time.sleep(fault["join_after_s"])
            intruder_env = {**peer_env(new_secret()), FAULT_ENV: json.dumps(fault)}
            start(HONEST, address, intruder_env, "speechswarm.chaos.faulty_peer")
            codes = _wait(peers[:HONEST])
        trial.seconds = round(time.perf_counter() - started, 1)
        if len(peers) > HONEST and kind != "stall":  # a stalled one was waited for, or not
            trial.faulty_code = peers[HONEST].wait(60.0)
    except Exception as e:  # a trial that breaks is recorded, the campaign goes on
        trial.error = f"{type(e).__name__}: {e}"
        codes = [p.proc.poll() for p in peers[:HONEST]]
    finally:
        for p in peers:
            if p.proc.poll() is None:
                p.kill()
            p.reap()
    trial.honest_codes = codes
    _check(trial, swarm, run_dir, fault)
    return trial


def _wait(honest, timeout: float = PEER_TIMEOUT_S) -> list:
    deadline = time.monotonic() + timeout
    return [p.wait(max(1.0, deadline - time.monotonic())) for p in honest]


def _stall(honest, victim, fault: dict, trial: NetFaultTrial) -> list:
    """SIGSTOP `victim` after its `after_rounds`-th round (+ `extra_s`), SIGCONT it after
    `stall_s` (None: never); returns the honest peers' exit codes."""
    deadline = time.monotonic() + PEER_TIMEOUT_S
    while len(victim.rounds()) < fault["after_rounds"] and victim.proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the victim did no {fault['after_rounds']} rounds")
        time.sleep(0.05)
    time.sleep(fault["extra_s"])
    if victim.proc.poll() is not None:
        trial.notes.append("the victim ended before its stall")
    victim.pause()
    trial.fault["stalled_after_rounds"] = len(victim.rounds())
    resume_at = None if fault["stall_s"] is None else time.monotonic() + fault["stall_s"]
    while any(p.proc.poll() is None for p in honest) and time.monotonic() < deadline:
        if resume_at is not None and time.monotonic() >= resume_at:
            victim.resume()
            resume_at = None
        time.sleep(0.1)
    if resume_at is not None:  # the honest peers finished first: let it go on now
        victim.resume()
    codes = _wait(honest, max(1.0, deadline - time.monotonic()))
    if fault["stall_s"] is not None:  # a peer stopped for a while should finish too
        try:
            trial.faulty_code = victim.wait(120.0)
        except subprocess.TimeoutExpired:
            trial.notes.append(f"trial {trial.index}: the resumed victim did not end in 120 s")
    return codes


def _check(trial: NetFaultTrial, swarm: Swarm, run_dir: Path, fault: dict) -> None:
    from speechswarm.p2p.net.hivemind_sync import CHECKSUM_TOLERANCE
    from speechswarm.p2p.report import read_rows

    dirs = [run_dir / f"peer{k}" for k in range(HONEST)]
    ids = [peer_id(d) for d in dirs]
    faulty = peer_id(run_dir / f"peer{HONEST}")
    rows = {pid: read_rows(d / "rounds.jsonl") for pid, d in zip(ids, dirs, strict=True)}
    summaries = [json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {} for d in dirs]  # fmt: skip
    trial.honest_rounds = [len(r) for r in rows.values()]
    trial.honest_steps = [s.get("steps", 0) for s in summaries]
    every = 2  # p2p.local_steps
    trial.finished = all(c == 0 for c in trial.honest_codes) and all(
        n == swarm.rounds and s == swarm.rounds * every
        for n, s in zip(trial.honest_rounds, trial.honest_steps, strict=True)
    )
    finite, max_abs = True, 0.0
    for d in dirs:
        if not (d / "checkpoints" / "last.pt").is_file():
            finite = False
            continue
        f, m = final_weights(d)
        finite, max_abs = finite and f, max(max_abs, m)
    trial.finite, trial.max_abs = finite, max_abs
    trial.contaminated = not finite or max_abs >= CONTAMINATION_BOUND
    agreement = group_agreement(rows, CHECKSUM_TOLERANCE[swarm.settings.compression])
    trial.groups_compared, trial.groups_equal = agreement["compared"], agreement["equal"]
    trial.unequal, trial.one_sided = agreement["unequal"][:5], agreement["one_sided"]
    for own in rows.values():
        c = count_rounds(own, faulty if trial.kind != "wrong_secret" else "", set(ids))
        trial.rounds_ok += c["ok"]
        trial.rounds_partial += c["partial"]
        trial.rounds_failed += c["failed"]
        trial.with_faulty += c["with_faulty"]
        trial.with_faulty_ok += c["with_faulty_ok"]
        trial.strangers += c["strangers"]
        trial.max_round_s = max([trial.max_round_s, *(float(r["seconds"]) for r in own)])
        for reason, n in c["reasons"].items():
            trial.reasons[reason] = trial.reasons.get(reason, 0) + n
    for d in dirs:
        log = (d / "peer.log").read_text(errors="replace") if (d / "peer.log").is_file() else ""
        for peer, reason in offences(log):
            if peer == faulty:
                trial.flagged[reason] = trial.flagged.get(reason, 0) + 1
            else:
                trial.false_offenders += 1
                trial.notes.append(f"trial {trial.index}: honest {peer[-8:]} left out ({reason})")
    _fault_notes(trial, run_dir / f"peer{HONEST}", fault)


def _fault_notes(trial: NetFaultTrial, faulty_dir: Path, fault: dict) -> None:
    if trial.kind == "kill":
        marker = Path(fault["marker"])
        if marker.is_file():
            trial.fault["killed"] = json.loads(marker.read_text())
        else:
            trial.notes.append("not killed: the armed all-reduce never came")
    if trial.kind == "wrong_secret":
        log = (faulty_dir / "peer.log").read_text() if (faulty_dir / "peer.log").is_file() else ""
        trial.fault["refused"] = "could not join the run's DHT" in log
        if not trial.fault["refused"]:
            trial.notes.append("the intruder was not refused at the DHT")


# ---------------------------------------------------------------------- campaign


def run_net_faults_campaign(out, trials: int = 24, rounds: int = 10, seed: int = 0, corpus=None,
                            kinds=KINDS, log=print) -> list[NetFaultTrial]:  # fmt: skip
    """Run `trials` trials, kinds in turn (see the module docstring); writes
    `out/net_faults.json` and `out/net_faults.md`."""
    from speechswarm.chaos.kill import _small_corpus

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(corpus).resolve() if corpus else _small_corpus(out / "corpus")
    for old in out.glob("trial-*"):
        shutil.rmtree(old, ignore_errors=True)
    swarm = prepare(out, corpus, rounds)
    rng = random.Random(seed)
    results: list[NetFaultTrial] = []
    for i in range(trials):
        kind = kinds[i % len(kinds)]
        trial = run_trial(i, kind, swarm, out / f"trial-{i:03d}-{kind}", rng, i // len(kinds))
        results.append(trial)
        log(f"trial {i + 1}/{trials} {kind} {trial.fault}: {trial.seconds:.0f} s, "
            f"finished {trial.finished}, finite {trial.finite}, groups equal "
            f"{trial.groups_equal}/{trial.groups_compared}, rounds ok/partial/failed "
            f"{trial.rounds_ok}/{trial.rounds_partial}/{trial.rounds_failed}"
            + (f"; {trial.error}" if trial.error else ""))  # fmt: skip
        _write(out, results)
    return results


def _write(out: Path, results: list[NetFaultTrial]) -> None:
    data = {"summary": summary(results), "trials": [{**asdict(t), "passed": t.passed} for t in results]}  # fmt: skip
    (out / "net_faults.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "net_faults.md").write_text(table(results) + "\n")


def summary(trials: list[NetFaultTrial]) -> dict:
    out = {}
    for kind in KINDS:
        mine = [t for t in trials if t.kind == kind]
        if not mine:
            continue
        out[kind] = {
            "trials": len(mine),
            "finished": sum(t.finished for t in mine),
            "finite": sum(t.finite and not t.contaminated for t in mine),
            "groups_compared": sum(t.groups_compared for t in mine),
            "groups_equal": sum(t.groups_equal for t in mine),
            "rounds_ok": sum(t.rounds_ok for t in mine),
            "rounds_partial": sum(t.rounds_partial for t in mine),
            "rounds_failed": sum(t.rounds_failed for t in mine),
            "with_faulty": sum(t.with_faulty for t in mine),
            "with_faulty_ok": sum(t.with_faulty_ok for t in mine),
            "strangers": sum(t.strangers for t in mine),
            "false_offenders": sum(t.false_offenders for t in mine),
            "mean_seconds": round(sum(t.seconds for t in mine) / len(mine), 1),
            "passed": sum(t.passed for t in mine),
        }
    return out


def _kind_notes(kind: str, mine: list[NetFaultTrial]) -> str:
    notes = []
    if kind == "kill":
        killed = [t.fault["killed"] for t in mine if "killed" in t.fault]
        where = ", ".join(f"msg {k['message']} ({k['what']}) of all-reduce {k['allreduce']}" for k in killed)  # fmt: skip
        notes.append(f"killed in flight {len(killed)}/{len(mine)}: {where}")
    if kind == "stall":
        spans = [
            "for good" if t.fault["stall_s"] is None else f"{t.fault['stall_s']} s" for t in mine
        ]
        notes.append("stalled " + ", ".join(spans))
    if kind == "garbage":
        caught = [f"{t.fault['mode']} ({', '.join(f'{r} x{n}' for r, n in t.flagged.items()) or 'never caught'})" for t in mine]  # fmt: skip
        notes.append("modes (honest peers that caught it) " + ", ".join(caught))
    if kind == "wrong_secret":
        notes.append(
            f"refused at the DHT {sum(bool(t.fault.get('refused')) for t in mine)}/{len(mine)}"
        )
    reasons: dict = {}
    for t in mine:
        for r, n in t.reasons.items():
            reasons[r] = reasons.get(r, 0) + n
        notes += t.notes
        notes += [f"trial {t.index}: {t.error}"] if t.error else []
    if reasons:
        notes.append("failed rounds: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
    notes.append(f"longest honest round {max(t.max_round_s for t in mine):.1f} s")
    if kind == "stall":
        resumed = [t for t in mine if t.fault["stall_s"] is not None]
        ended = sum(t.faulty_code == 0 for t in resumed)
        notes.append(f"resumed victims that finished {ended}/{len(resumed)}")
    one_sided = sum(t.one_sided for t in mine)
    if one_sided:
        notes.append(f"{one_sided} complete rows with a groupmate that did not complete")
    return "; ".join(notes)


def table(trials: list[NetFaultTrial]) -> str:
    rows = [
        "| fault | trials | swarm finished | honest weights finite, uncontaminated | averaged "
        "weights equal where they should be (groups) | honest rounds ok / partial / failed "
        "| honest rounds with the faulty peer (averaged) | mean s | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    s = summary(trials)
    for kind, m in s.items():
        mine = [t for t in trials if t.kind == kind]
        rows.append(
            f"| {kind} | {m['trials']} | {m['finished']}/{m['trials']} | {m['finite']}/{m['trials']} "
            f"| {m['groups_equal']}/{m['groups_compared']} | {m['rounds_ok']} / "
            f"{m['rounds_partial']} / {m['rounds_failed']} | {m['with_faulty']} "
            f"({m['with_faulty_ok']}) | {m['mean_seconds']} | {_kind_notes(kind, mine)} |"
        )
    return "\n".join(rows)


def net_faults_passed(trials: list[NetFaultTrial]) -> bool:
    """Every trial: the swarm finished, honest weights finite and uncontaminated, complete
    groups equal, no stranger in an honest group."""
    return bool(trials) and all(t.passed for t in trials)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechswarm chaos net", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=24, help="trials, fault kinds in turn (default 24: 6 each)")  # fmt: skip
    p.add_argument("--out", default="runs/chaos-net", help="campaign folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault moments and kinds' details")  # fmt: skip
    p.add_argument("--rounds", type=int, default=10, help="averaging rounds of each peer (2 steps each)")  # fmt: skip
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")  # fmt: skip
    p.add_argument("--corpus", default=None, help="manifests folder (default: synthesise one)")
    args = p.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or args.trials < 1 or args.rounds < 2:
        p.error(f"--kinds from {', '.join(KINDS)}, --trials >= 1, --rounds >= 2 (got {unknown or args})")  # fmt: skip
    trials = run_net_faults_campaign(args.out, args.trials, args.rounds, args.seed, args.corpus, kinds)  # fmt: skip
    print(table(trials))
    print(f"raw results: {Path(args.out) / 'net_faults.json'}")
    return 0 if net_faults_passed(trials) else 1


if __name__ == "__main__":
    sys.exit(main())
