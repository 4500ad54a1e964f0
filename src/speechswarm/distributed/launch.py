"""`speechswarm train --nproc N`: DDP on this machine through torch's own elastic launcher.

    speechswarm train --nproc 2 --config tiny train.out_dir=runs/ddp
    speechswarm train --nproc 2 --max-restarts 3 --config tiny    # survive a crashed worker

This is `torchrun --standalone --nproc_per_node=N --max-restarts=R -m speechswarm train ...`
run in-process (`torch.distributed.run`): the same launcher, rendezvous and restart logic.
For several machines use torchrun itself with its rendezvous flags (docs/distributed.md).
"""

from __future__ import annotations

import os
import sys

from speechswarm.train.ddp import FRESH_STORE_PER_RESTART


def torchrun_args(
    worker_argv: list[str], nproc: int, max_restarts: int = 0, monitor_interval: float = 1.0
) -> list[str]:
    """torchrun's command line (without `torchrun`) running `python -m speechswarm
    <worker_argv>` in `nproc` local workers."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    return [
        "--standalone",  # one node: a local rendezvous on a free port
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        f"--monitor-interval={monitor_interval}",
        "-m",
        "speechswarm",
        *worker_argv,
    ]


def launch(worker_argv: list[str], nproc: int, max_restarts: int = 0) -> int:
    """Run the workers through torch.distributed.run; 0 when every worker succeeded, else 1
    (torchrun has printed which rank failed and why)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(torchrun_args(worker_argv, nproc, max_restarts))
    os.environ.setdefault(FRESH_STORE_PER_RESTART, "1")  # read by the agent and the workers
    try:
        run(args)
    except ChildFailedError as e:
        failures = ", ".join(  # keyed by global rank
            f"rank {rank} (exit code {f.exitcode})" for rank, f in sorted(e.failures.items())
        )
        print(
            f"speechswarm train: DDP worker(s) failed: {failures}; see the traceback above"
            + ("" if max_restarts else "; --max-restarts N restarts them from the last checkpoint"),
            file=sys.stderr,
        )
        return 1
    return 0
