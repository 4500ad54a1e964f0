"""DDP through torchrun: a thin layer that reads torchrun's environment.

    torchrun --nproc_per_node=2 -m speechswarm train --config tiny train.out_dir=runs/ddp
    speechswarm train --nproc 2 --config tiny train.out_dir=runs/ddp      # the same

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE (and MASTER_ADDR/PORT, TORCHELASTIC_RESTART_COUNT)
for every worker; `dist_env()` reads them, `init_distributed()` joins the process group
(gloo on CPU, nccl on CUDA, one GPU per local rank) and `DDPSync` is the loop's synchronizer:
gradients are averaged inside `backward()` by DistributedDataParallel, and three collectives
keep the ranks taking the same branches: `agree` (one int64 all-reduce per batch: skip a
non-finite batch everywhere, stop everywhere), `gather` (to rank 0: logged losses, per-rank
RNG states for checkpoints). Only rank 0 logs, evaluates and saves; the others wait for it in
the next collective.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from speechswarm.errors import ConfigError, UnavailableError, UsageError
from speechswarm.train.sync import FLAGS, check_flag

# torchrun (torch >= 2.4) shares its rendezvous TCPStore with the workers and keeps it across
# worker-group restarts, without a per-attempt key prefix: a restarted rank can read the
# failed attempt's gloo/NCCL addresses and die in "Gloo connectFullMesh failed" or hang
# (pytorch/pytorch#135712). With this variable set, every attempt gets a fresh store on a
# fresh port. Measured here: 4 of 6 restarts hit the stale address without it, 0 of 8 with it.
FRESH_STORE_PER_RESTART = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def restart_store_warning(environ: Mapping[str, str]) -> str | None:
    """Why restarts may fail under this torchrun environment, or None where they are safe."""
    restarts = environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    shared = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if not shared or restarts in ("", "0"):
        return None
    return (
        f"torchrun --max-restarts={restarts} with its shared rendezvous store: a restarted "
        "worker group may read the failed attempt's addresses and fail or hang in "
        f"init_process_group; export {FRESH_STORE_PER_RESTART}=1 before torchrun "
        "(`speechswarm train --nproc` and `speechswarm slurm` do)"
    )


@dataclass(frozen=True)
class DistEnv:
    """This process' place in a torchrun job (world_size 1: not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this node
    restart_count: int = 0  # how often torchrun restarted the worker group (--max-restarts)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """The DistEnv torchrun's variables describe (no variables: one process, rank 0)."""
    environ = os.environ if environ is None else environ
    values = {}
    for key, name in (
        ("rank", "RANK"),
        ("local_rank", "LOCAL_RANK"),
        ("world_size", "WORLD_SIZE"),
        ("local_world_size", "LOCAL_WORLD_SIZE"),
        ("restart_count", "TORCHELASTIC_RESTART_COUNT"),
    ):
        text = environ.get(name, "")
        if not text:
            continue
        try:
            values[key] = int(text)
        except ValueError:
            raise UsageError(f"environment variable {name}={text!r} is not an integer") from None
    env = DistEnv(**values)
    if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
        raise UsageError(
            f"RANK={env.rank}, LOCAL_RANK={env.local_rank}, WORLD_SIZE={env.world_size} do not "
            "describe a worker; launch with torchrun or `speechswarm train --nproc N`"
        )
    return env


def choose_backend(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for everything else (CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def worker_device(device_name: str, env: DistEnv) -> torch.device:
    """The device a worker trains on: for CUDA its own GPU, cuda:LOCAL_RANK."""
    if device_name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(device_name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UnavailableError(
            f"train.device={device_name} under DDP, but torch sees no GPU; use --device cpu"
        )
    if device.index is not None and env.world_size > 1:
        raise ConfigError(
            f"train.device={device_name}: under DDP each worker takes cuda:LOCAL_RANK; "
            "say --device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    count = torch.cuda.device_count()
    if env.local_rank >= count:
        raise UsageError(
            f"local rank {env.local_rank} needs GPU {env.local_rank}, but this node has {count}; "
            "set --nproc_per_node to at most the node's GPU count"
        )
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


def init_distributed(env: DistEnv, device: torch.device, timeout_min: float = 30.0) -> bool:
    """Join torchrun's process group (env:// rendezvous); returns whether this call created it.

    `timeout_min`: how long a collective waits for a slow rank before failing; rank 0's dev
    evaluation runs while the others wait, so it must exceed the longest evaluation.
    """
    if not env.is_distributed or dist.is_initialized():
        return False
    warning = restart_store_warning(os.environ)
    if warning and env.is_main:
        print(f"speechswarm train: warning: {warning}", file=sys.stderr)
    dist.init_process_group(
        backend=choose_backend(device),
        timeout=datetime.timedelta(minutes=timeout_min),
        device_id=device if device.type == "cuda" else None,
    )
    return True


def shutdown(created: bool, wait_for_all: bool = True) -> None:
    """Leave the process group `init_distributed` created. `wait_for_all`: first wait until
    every rank got here (rank 0 still writes plots and the summary when the others are done;
    a rank that tears its connections down early makes gloo abort the process)."""
    if not created or not dist.is_initialized():
        return
    if wait_for_all:
        dist.barrier()
    dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` (parameters broadcast from rank 0 here)."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled; for setup-time data such as kept utterance ids)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DDPSync:
    """The loop's synchronizer under DDP (see the module docstring)."""

    def __init__(self, env: DistEnv, device: torch.device):
        self.env, self.device = env, device
        self.is_main = env.is_main

    def after_step(self, model: torch.nn.Module, state: Any) -> None:
        return None  # DDP averaged the gradients inside backward(): the replicas stayed equal

    def agree(self, flag: str) -> str:
        code = torch.tensor([check_flag(flag)], dtype=torch.int64, device=self.device)
        dist.all_reduce(code, op=dist.ReduceOp.MAX)
        return FLAGS[int(code.item())]

    def gather(self, obj: Any) -> list[Any] | None:
        out = [None] * self.env.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out
