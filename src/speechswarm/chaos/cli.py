"""`speechswarm chaos`: fault-injection campaigns, counted (docs/reliability.md).

speechswarm chaos kill --trials 20 --out runs/chaos
speechswarm chaos ddp --trials 10
speechswarm chaos corpus --manifest data/synth/train.jsonl
sudo .venv/bin/speechswarm chaos disk --trials 10
speechswarm chaos p2p --trials 10
speechswarm chaos hostile --out runs/hostile
speechswarm chaos poison --trials 24
speechswarm chaos net --trials 24
"""

from __future__ import annotations

import argparse
import importlib

from speechswarm.errors import UsageError

# Campaigns that share the options below.
CHAOS_CAMPAIGNS = {
    "kill": "SIGKILL training anywhere, then resume; final weights compared bit for bit",
    "ddp": "SIGKILL one rank of a 2-process DDP run, then restart or resume",
    "corpus": "a tenth of --manifest broken in 15 ways: validate and train report each",
    "disk": "a full disk, a read-only folder at a checkpoint (root)",
    "p2p": "SIGKILL a P2P simulation mid-round, then resume",
}
# Campaigns with options of their own (`speechswarm chaos NAME --help`): module, help.
OWN_OPTIONS = {
    "hostile": ("hostile", "hostile inputs: pickle payloads, TAR traversal, bad hooks and ARPA"),
    "poison": ("poison", "a P2P agent that lies (NaN, x1e6, random, ...) under mean/median/trim"),
    "net": (
        "net_faults",
        "networked peers on loopback: one killed, stalled, sending garbage, "
        "or holding another run secret",
    ),
}


def add_parser(sub) -> None:
    s = sub.add_parser("chaos", help="fault-injection campaigns (docs/reliability.md)")
    campaigns = s.add_subparsers(dest="campaign", required=True, metavar="CAMPAIGN")
    for name, text in CHAOS_CAMPAIGNS.items():
        c = campaigns.add_parser(name, help=text, description=text)
        c.add_argument("--out", default=None, help="campaign folder (default: runs/chaos-NAME)")
        c.add_argument("--trials", type=int, default=None, help="default: kill 20, others 10")
        c.add_argument("--steps", type=int, default=None, help="kill/ddp/disk: steps (24/16/12)")
        c.add_argument("--rounds", type=int, default=8, help="p2p: rounds of each simulation")
        c.add_argument("--seed", type=int, default=0, help="seed of the fault moments")
        c.add_argument("--corpus", default=None, help="manifests folder (default: synthesise one)")
        c.add_argument("--manifest", default=None, help="corpus: the manifest to break")
        c.add_argument("--fraction", type=float, default=0.1, help="corpus: share broken")
        c.set_defaults(func=_chaos)
    for name, (module, text) in OWN_OPTIONS.items():
        # prefix "+": every argument after the name, options included, goes to its own main
        c = campaigns.add_parser(name, help=text, add_help=False, prefix_chars="+")
        c.add_argument("args", nargs=argparse.REMAINDER)
        c.set_defaults(func=_own_main(module))


def _own_main(module: str):
    def run(args) -> int:
        main = importlib.import_module(f"speechswarm.chaos.{module}").main
        if module == "hostile":  # it runs commands through the CLI, which it may not import
            from speechswarm.cli import main as cli_main

            return main(args.args, run_cli=cli_main)
        return main(args.args)

    return run


def _chaos(args) -> int:
    from speechswarm import chaos

    out = args.out or f"runs/chaos-{args.campaign}"
    if args.campaign == "kill":
        campaign = chaos.run_kill_campaign(
            args.out or "runs/chaos", trials=args.trials or 20, steps=args.steps or 24,
            seed=args.seed, corpus=args.corpus,
        )  # fmt: skip
        print(campaign.table())
        s = campaign.summary()
        ok = s["bit_identical"] == s["trials"] == s["finished_resume_ok"]
        return 0 if ok and not s["unreadable_checkpoints"] else 1
    if args.campaign == "ddp":
        from speechswarm.chaos import ddp_kill

        trials = ddp_kill.run_ddp_kill_campaign(
            out, trials=args.trials or 10, steps=args.steps or 16, seed=args.seed,
            corpus=args.corpus,
        )  # fmt: skip
        print(ddp_kill.table(trials))
        return 0 if ddp_kill.passed(trials) else 1
    if args.campaign == "corpus":
        if not args.manifest:
            raise UsageError("chaos corpus: give --manifest M, the manifest to break a tenth of")
        result = chaos.run_corpus_campaign(args.manifest, out, args.fraction, args.seed)
        return 0 if chaos.corpus_passed(result) else 1
    if args.campaign == "disk":
        trials = chaos.run_disk_campaign(
            out, args.trials or 10, args.steps or 12, seed=args.seed, corpus=args.corpus
        )
        return 0 if chaos.disk_passed(trials) else 1
    trials = chaos.run_p2p_kill_campaign(
        out, args.trials or 10, args.rounds, args.seed, args.corpus
    )
    return 0 if chaos.p2p_kill_passed(trials) else 1
