"""`speechswarm bench train|target|transcribe|profile`: speed against a plain PyTorch loop.

    speechswarm bench train --config small [--json] [--quick] [section.key=value ...]
    speechswarm bench target --target-cer 60 [--budget-min 20] [--slice-s 60] [--json] [...]
    speechswarm bench transcribe [--config tiny | --checkpoint C] [--json]
    speechswarm bench profile [--config small] [--compare packed,aten] [--json]

Human-readable tables go to stdout; with --json, stdout holds exactly one JSON object and
progress lines stay on stderr.
"""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    s = sub.add_parser("bench", help="measure training and transcription speed")
    bsub = s.add_subparsers(
        dest="bench", required=True, metavar="{train,target,transcribe,profile}"
    )

    t = bsub.add_parser(
        "train",
        help="speechswarm's training loop against a plain PyTorch loop, interleaved",
    )
    t.add_argument("--config", default="small", help="preset name or YAML file (default: small)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--rounds", type=int, default=None, help="alternations (default 2; quick 1)")
    t.add_argument("--steps", type=int, default=None, help="steps per loop per round (default 2)")
    t.add_argument(
        "--quick", action="store_true", help="short synthetic utterances, small GEMM: seconds"
    )
    t.add_argument("--json", action="store_true", help="print one JSON object")
    t.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    t.set_defaults(func=_bench_train)

    g = bsub.add_parser(
        "target",
        help="training time to a dev CER: speechswarm's loop against a plain PyTorch loop",
    )
    g.add_argument("--config", default="tiny", help="preset name or YAML file (default: tiny)")
    g.add_argument(
        "--target-cer", type=float, required=True, help="dev CER to reach, percent (0, 100]"
    )
    g.add_argument(
        "--budget-min", type=float, default=20.0, help="training minutes per loop (default 20)"
    )
    g.add_argument(
        "--slice-s", type=float, default=60.0, help="training seconds per turn (default 60)"
    )
    g.add_argument(
        "--reference-order",
        default="shuffled",
        help="the plain loop's batch order: shuffled (each epoch) or manifest (default shuffled)",
    )
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    g.set_defaults(func=_bench_target)

    r = bsub.add_parser("transcribe", help="real-time factor of greedy transcription")
    r.add_argument("--config", default="tiny", help="preset whose model to time (untrained)")
    r.add_argument("--checkpoint", default=None, help="time this trained model instead")
    r.add_argument("--seconds", type=float, default=120.0, help="audio to transcribe (s)")
    r.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    r.add_argument("--repeats", type=int, default=2, help="timed passes; the best is kept")
    r.add_argument("--device", default="cpu")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.add_argument("overrides", nargs="*", help="section.key=value overrides of --config")
    r.set_defaults(func=_bench_transcribe)

    p = bsub.add_parser("profile", help="where one training step's time goes; kernel variants")
    p.add_argument("--config", default="small", help="preset name or YAML file (default: small)")
    p.add_argument("--steps", type=int, default=1, help="profiled steps (default 1)")
    p.add_argument(
        "--compare",
        default="",
        help="comma-separated variants to time side by side instead: "
        "packed (fused GRU, packed AMX recurrent GEMM), unpacked (fused, ATen mm), aten",
    )
    p.add_argument("--rounds", type=int, default=3, help="--compare: interleaved rounds")
    p.add_argument(
        "--lengths",
        type=float,
        nargs="+",
        default=[1.0],
        help="--compare: utterance length scales, each its own batch of the same padded seconds",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    p.set_defaults(func=_bench_profile)


def _bench_train(args) -> int:
    from speechswarm.benchmark.train import format_train_report, run_train_bench

    result = run_train_bench(
        args.config,
        args.overrides,
        rounds=args.rounds,
        steps=args.steps,
        quick=args.quick,
        device=args.device,
    )
    print(json.dumps(result) if args.json else format_train_report(result))
    return 0


def _bench_target(args) -> int:
    from speechswarm.benchmark.to_target import format_target_report, run_target_bench

    result = run_target_bench(
        args.config,
        args.overrides,
        target_cer=args.target_cer,
        budget_min=args.budget_min,
        slice_s=args.slice_s,
        reference_order=args.reference_order,
        device=args.device,
    )
    print(json.dumps(result) if args.json else format_target_report(result))
    return 0


def _bench_transcribe(args) -> int:
    from speechswarm.benchmark.transcribe import format_transcribe_report, run_transcribe_bench

    result = run_transcribe_bench(
        args.config,
        args.overrides,
        checkpoint=args.checkpoint,
        seconds=args.seconds,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        repeats=args.repeats,
        device=args.device,
    )
    print(json.dumps(result) if args.json else format_transcribe_report(result))
    return 0


def _bench_profile(args) -> int:
    from speechswarm.benchmark.profile import format_profile_report, run_profile_bench

    result = run_profile_bench(
        args.config,
        args.overrides,
        steps=args.steps,
        variants=[v for v in args.compare.split(",") if v],
        rounds=args.rounds,
        lengths=args.lengths,
    )
    print(json.dumps(result) if args.json else format_profile_report(result))
    return 0
