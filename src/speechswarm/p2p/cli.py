"""`speechswarm p2p`: simulate peer-to-peer training of agents on one machine.

speechswarm p2p --config p2p-tiny [--resume] [--clients mod:fn] [--workers N] [key=value ...]
"""

from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser(
        "p2p",
        help="simulate peer-to-peer training (gossip, async, FedAvg, central, local) on one machine",
    )
    s.add_argument("--config", default="p2p-tiny", help="preset name or YAML file")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs in train.out_dir from their checkpoints (finished runs are kept)",
    )
    s.add_argument(
        "--clients",
        default="",
        help="module:function or file.py:function returning load_clients_data()-style data",
    )
    s.add_argument("--workers", type=int, default=None, help="worker processes (0: in-process)")
    s.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. p2p.rounds=5")
    s.set_defaults(func=_p2p)


def _p2p(args) -> int:
    from speechswarm.config import load_config
    from speechswarm.p2p.experiment import run_experiment

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"p2p.workers={args.workers}")
    cfg = load_config(args.config, overrides)
    result = run_experiment(cfg, resume=args.resume, clients=args.clients)
    return 0 if not result["stopped"] else 1
