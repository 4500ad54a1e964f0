"""`speechswarm train`: one run from a preset or YAML config plus key=value overrides.

speechswarm train --config tiny optim.lr=1e-3
speechswarm train --nproc 2 --config tiny          # DDP, 2 processes (torchrun inside)
speechswarm train --hogwild 2 --config tiny        # Hogwild, 2 CPU workers
"""

from __future__ import annotations

import logging
import os
import sys

from speechswarm.errors import UsageError


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
    s.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="DDP: launch N worker processes on this machine through torch's elastic launcher "
        "(= torchrun --standalone --nproc-per-node N); one per GPU, or CPU processes with gloo",
    )
    s.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="with --nproc: restart the worker group up to N times after a worker fails; "
        "it resumes from the last checkpoint (set train.checkpoint_every)",
    )
    s.add_argument(
        "--hogwild",
        type=int,
        default=0,
        help="Hogwild: N CPU worker processes update one shared-memory model, each on its own "
        "share of the data (docs/distributed.md says when that helps)",
    )
    s.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=3e-4")
    s.set_defaults(func=_train)


def _train(args) -> int:
    from speechswarm.config import load_config

    _check_modes(args)
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    cfg = load_config(args.config, overrides)  # fails here, once, before any process starts
    if args.nproc > 1:
        from speechswarm.distributed.launch import launch

        worker = [
            "train",
            "--config",
            args.config,
            *(["--resume", args.resume] * bool(args.resume)),
        ]
        return launch(worker + overrides, args.nproc, args.max_restarts)
    if args.hogwild:
        from speechswarm.distributed.hogwild import train_hogwild

        result = train_hogwild(cfg, workers=args.hogwild, resume=args.resume)
    else:
        from speechswarm.train.loop import train

        result = train(cfg, resume=args.resume)
    if _is_main():
        print(
            f"stopped: {result.stop_reason}; run folder {result.run_dir}; "
            f"best checkpoint {result.best_checkpoint}"
        )
    _exit_if_torchrun_worker()
    return 0


def _exit_if_torchrun_worker() -> None:
    """A torchrun worker whose run is complete (checkpoints written, process group left)
    exits without Python's finalization: tearing down gloo's and DDP's C++ state in the
    interpreter's arbitrary order aborted a rank ("terminate called without an active
    exception", exit -6) in about 1 of 10 launches here, after the run had finished."""
    from speechswarm.train.ddp import dist_env

    if not dist_env().is_distributed:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _check_modes(args) -> None:
    if args.nproc < 0 or args.hogwild < 0 or args.max_restarts < 0:
        raise UsageError("--nproc, --hogwild and --max-restarts take counts >= 0")
    if args.nproc > 1 and args.hogwild:
        raise UsageError(
            "--nproc (DDP) and --hogwild are two ways to use several processes; pick one"
        )
    if args.max_restarts and args.nproc <= 1:
        raise UsageError(
            "--max-restarts needs --nproc N (N >= 2); under torchrun use its own --max-restarts"
        )


def _is_main() -> bool:
    from speechswarm.train.ddp import dist_env

    return dist_env().is_main
