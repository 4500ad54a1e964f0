"""`speechswarm slurm` and `speechswarm compare` (DDP and Hogwild training are `speechswarm train
--nproc N` / `--hogwild N`, in speechswarm.train.cli).

    speechswarm slurm --nodes 2 --gpus-per-node 4 --config small > job.sbatch
    speechswarm compare --config tiny --minutes 10 --processes 2 --out runs/compare
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    s = sub.add_parser("slurm", help="write an sbatch script (1 GPU, DDP on one or more nodes)")
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=1)
    s.add_argument("--cpus-per-gpu", type=int, default=8)
    s.add_argument("--time", default="24:00:00", help="wall-clock limit, HH:MM:SS")
    s.add_argument("--partition", default="")
    s.add_argument("--account", default="")
    s.add_argument("--job-name", default="speechswarm")
    s.add_argument("--config", default="small", help="preset name or YAML file")
    s.add_argument("--out", default="runs/slurm", help="run folder (train.out_dir)")
    s.add_argument("--venv", default="", help="virtual environment to activate in the job")
    s.add_argument("--max-restarts", type=int, default=0, help="torchrun worker-group restarts")
    s.add_argument("--monitor-seconds", type=int, default=30, help="device log interval")
    s.add_argument("--port", type=int, default=29500, help="rendezvous port (several nodes)")
    s.add_argument("overrides", nargs="*", help="section.key=value overrides")
    s.set_defaults(func=_slurm)

    s = sub.add_parser("compare", help="central vs DDP vs Hogwild on one budget: table + plot")
    s.add_argument("--config", default="tiny", help="preset name or YAML file")
    s.add_argument("--minutes", type=float, required=True, help="wall-clock budget per mode")
    s.add_argument("--processes", type=int, default=2, help="threads / DDP ranks / workers")
    s.add_argument(
        "--central-threads",
        type=int,
        default=None,
        help="torch threads of the central run (default: --processes); 1 on a busy machine",
    )
    s.add_argument("--target-cer", type=float, default=None, help="0-1; default: see --help")
    s.add_argument("--modes", default="central,ddp,hogwild", help="comma-separated subset")
    s.add_argument("--out", default="runs/compare")
    s.add_argument("overrides", nargs="*", help="section.key=value overrides for every mode")
    s.set_defaults(func=_compare)


def _slurm(args) -> int:
    from speechswarm.distributed.slurm import SlurmJob, render_sbatch

    job = SlurmJob(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpus_per_gpu=args.cpus_per_gpu,
        time=args.time,
        partition=args.partition,
        account=args.account,
        job_name=args.job_name,
        config=args.config,
        overrides=tuple(args.overrides),
        out_dir=args.out,
        venv=args.venv,
        max_restarts=args.max_restarts,
        monitor_seconds=args.monitor_seconds,
        port=args.port,
    )
    sys.stdout.write(render_sbatch(job))
    return 0


def _compare(args) -> int:
    from speechswarm.distributed.compare import MODES, compare

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"--modes {args.modes}: choose from {', '.join(MODES)}")
    out = Path(args.out)
    results, _ = compare(
        args.config,
        list(args.overrides),
        out,
        minutes=args.minutes,
        processes=args.processes,
        target_cer=args.target_cer,
        modes=modes,
        central_threads=args.central_threads,
    )
    print((out / "compare.md").read_text(), end="")
    print(f"table {out / 'compare.md'}, plot {out / 'compare.png'}, data {out / 'compare.json'}")
    return 0 if all(r.ok for r in results) else 1
