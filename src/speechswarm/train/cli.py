"""`speechswarm train`: one run from a preset or YAML config plus key=value overrides."""

from __future__ import annotations


def add_parser(sub) -> None:
    s = sub.add_parser("train", help="train a model (see configs: tiny, small, mlperf-ds2, ...)")
    s.add_argument("--config", default="tiny", help="preset name or YAML file")
    s.add_argument(
        "--resume", default=None, help="checkpoint to resume, or 'auto' for the run's last"
    )
    s.add_argument(
        "--init-from", default=None, help="initialise weights from a checkpoint (fine-tuning)"
    )
    s.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    s.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=3e-4")
    s.set_defaults(func=_train)


def _train(args) -> int:
    from speechswarm.config import load_config
    from speechswarm.train.loop import train

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    print(
        f"stopped: {result.stop_reason}; run folder {result.run_dir}; best checkpoint {result.best_checkpoint}"
    )
    return 0
