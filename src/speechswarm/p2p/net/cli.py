"""`speechswarm peer` and `speechswarm swarm`: peer-to-peer training over a real network.

speechswarm peer --config CFG --data MANIFEST [--initial-peers ADDR ...] [--out DIR] [key=value ...]
speechswarm swarm --config CFG --agents N [key=value ...]
python -m speechswarm.p2p.net.cli peer ...      (the same, without the top-level command)
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from speechswarm.errors import UsageError, run_command


def _net_arguments(s) -> None:
    from speechswarm.p2p.net.settings import NetSettings

    d = NetSettings()
    g = s.add_argument_group("network (see docs/p2p-network.md for when to change them)")
    g.add_argument("--group-size", type=int, default=d.group_size, help="peers per averaging group (2: pairwise gossip; p2p.aggregation=median or trimmed_mean needs 3+)")  # fmt: skip
    g.add_argument("--every", type=int, default=d.every, help="local steps between averaging rounds (0: p2p.local_steps)")  # fmt: skip
    g.add_argument("--matchmaking-s", type=float, default=d.matchmaking_s, help="seconds a group leader waits for peers")  # fmt: skip
    g.add_argument("--timeout-s", type=float, default=d.timeout_s, help="seconds one averaging round may take before training goes on alone")  # fmt: skip
    g.add_argument("--chunk-timeout-s", type=float, default=d.chunk_timeout_s, help="seconds without data before a group member is dropped")  # fmt: skip
    g.add_argument("--compression", choices=("none", "fp16", "int8"), default=None, help="on the wire (default: p2p.compression)")  # fmt: skip
    g.add_argument("--topology", action="store_true", help="average with graph neighbours (p2p.topology over p2p.agents peers, this one --index), falling back to whoever is reachable")  # fmt: skip
    g.add_argument("--background", action="store_true", help="average in the background: training goes on during the all-reduce; the average lands with the local steps made meanwhile kept")  # fmt: skip
    g.add_argument("--max-staleness", type=int, default=d.max_staleness, help="with --background: steps after its snapshot by which an average must land; the peer waits for it there (0: --every)")  # fmt: skip
    g.add_argument("--wait-peers", type=int, default=0, help="before training, wait for this many peers (swarm: all)")  # fmt: skip
    g.add_argument("--secret-file", default="", help="file with the run secret (else $SPEECHSWARM_RUN_SECRET)")  # fmt: skip
    g.add_argument("--allow", default="", help="file of allowed peer IDs, one per line")
    g.add_argument("--prefix", default="speechswarm", help="run name on the DHT (peers of one run share it)")  # fmt: skip


def add_parser(sub) -> None:
    s = sub.add_parser("peer", help="one peer of a networked peer-to-peer run (hivemind)")
    s.add_argument("--config", default="p2p-tiny", help="preset name or YAML file")
    s.add_argument("--data", required=True, help="this peer's manifest (its own speech)")
    s.add_argument("--test", default="", help="own test manifest (default: cut p2p.test_fraction of --data)")  # fmt: skip
    s.add_argument("--global-test", default="", help="also score this manifest at the end")
    s.add_argument("--out", default="", help="output folder (default: train.out_dir)")
    s.add_argument("--initial-peers", nargs="+", default=[], metavar="ADDR", help="addresses of running peers (as they print them)")  # fmt: skip
    s.add_argument("--identity", default="", help="private key file: created if missing, kept so a restarted peer keeps its ID")  # fmt: skip
    s.add_argument("--print-id", action="store_true", help="print --identity's peer ID and exit")
    s.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: all interfaces)")
    s.add_argument("--port", type=int, default=0, help="listen port (0: any free one)")
    s.add_argument("--announce", default="", help="multiaddr to announce, e.g. /ip4/PUBLIC_IP/tcp/PORT")  # fmt: skip
    s.add_argument("--no-load-state", action="store_true", help="do not start from a live peer's state (weights, optimizer state, step and LR; checked before use)")  # fmt: skip
    s.add_argument("--resume", default="", metavar="CKPT", help="continue from a checkpoint; auto: the last in --out (a finished peer trains nothing)")  # fmt: skip
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--index", type=int, default=-1, help="with --topology: this peer's number on the graph, 0..p2p.agents-1")  # fmt: skip
    _net_arguments(s)
    s.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. p2p.rounds=5")
    s.set_defaults(func=_peer)

    s = sub.add_parser("swarm", help="N peers as separate processes on 127.0.0.1, one report")
    s.add_argument("--config", default="p2p-tiny", help="preset name or YAML file")
    s.add_argument("--agents", type=int, default=None, help="peers (default: p2p.agents)")
    s.add_argument("--out", default="", help="output folder (default: train.out_dir)")
    s.add_argument("--dashboard", action="store_true", help="serve `speechswarm dashboard` on --out while the swarm runs")  # fmt: skip
    s.add_argument("--dashboard-port", type=int, default=None, help="its port (implies --dashboard; default 8050, else a free one)")  # fmt: skip
    _net_arguments(s)
    s.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. p2p.rounds=5")
    s.set_defaults(func=_swarm)


def settings_from(args, cfg):
    from speechswarm.p2p.net.settings import NetSettings

    return NetSettings(
        group_size=args.group_size,
        every=args.every,
        matchmaking_s=args.matchmaking_s,
        timeout_s=args.timeout_s,
        chunk_timeout_s=args.chunk_timeout_s,
        compression=args.compression or cfg.p2p.compression,
        topology=args.topology,
        background=args.background,
        max_staleness=args.max_staleness,
        load_state=not getattr(args, "no_load_state", False),
        wait_peers=args.wait_peers,
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", 0),
        announce=getattr(args, "announce", ""),
    )


def gate_from(args):
    from speechswarm.p2p.net.auth import Gate, load_allow_list, load_secret

    allowed = load_allow_list(args.allow) if args.allow else frozenset()
    return Gate(secret=load_secret(args.secret_file), allowed=allowed)


def _peer(args) -> int:
    from speechswarm.p2p.net.auth import ensure_identity

    if args.print_id:
        if not args.identity:
            raise UsageError("--print-id needs --identity KEY_FILE")
        print(ensure_identity(args.identity))
        return 0
    from speechswarm.config import check_p2p, load_config
    from speechswarm.p2p.net.peer import run_peer

    cfg = load_config(args.config, args.overrides)
    check_p2p(cfg.p2p)
    gate = gate_from(args)
    if not gate.closed:
        print(
            "warning: open run (no run secret, no allow-list): any peer that reaches this one "
            "can take part; set $SPEECHSWARM_RUN_SECRET",
            file=sys.stderr,
        )
    run_peer(
        cfg,
        args.data,
        args.out or cfg.train.out_dir,
        test=args.test,
        global_test=args.global_test,
        initial_peers=tuple(args.initial_peers),
        settings=settings_from(args, cfg),
        gate=gate,
        identity=args.identity,
        prefix=args.prefix,
        progress=not args.no_progress,
        resume=args.resume,
        index=args.index,
    )
    return 0


def _swarm(args) -> int:
    from speechswarm.config import load_config
    from speechswarm.p2p.net.swarm import run_swarm

    overrides = list(args.overrides)
    if args.agents is not None:
        overrides.append(f"p2p.agents={args.agents}")
    cfg = load_config(args.config, overrides)
    out = args.out or cfg.train.out_dir
    with _dashboard(args, out):
        result = run_swarm(
            cfg,
            out=out,
            settings=settings_from(args, cfg),
            config_source=args.config,
            overrides=overrides,
            secret_file=args.secret_file,
            allow=args.allow,
            prefix=args.prefix,
        )
    return 0 if result["ok"] else 1


def _dashboard(args, out: str):
    """`--dashboard`: the dashboard on `out`, served from this process while the swarm runs."""
    if not (args.dashboard or args.dashboard_port is not None):
        return contextlib.nullcontext()
    from speechswarm.dashboard.cli import missing_dependency

    try:
        from speechswarm.dashboard.server import DashboardThread

        board = DashboardThread(out, port=args.dashboard_port)
    except ModuleNotFoundError as e:
        raise missing_dependency(e) from None
    print(f"dashboard: {board.url} (until the swarm ends; then `speechswarm dashboard {out}`)", flush=True)  # fmt: skip
    return board


def main(argv: list[str] | None = None) -> int:
    """`python -m speechswarm.p2p.net.cli peer|swarm ...` (how `swarm` starts its peers), with
    the top-level command's error handling (`errors.run_command`)."""
    parser = argparse.ArgumentParser(prog="speechswarm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_parser(sub)
    return run_command(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
