"""`speechswarm slurm`: sbatch scripts for one GPU, one node with several GPUs, or several nodes.

    speechswarm slurm --gpus-per-node 1 --config small > one-gpu.sbatch
    speechswarm slurm --gpus-per-node 4 --config small > ddp-4.sbatch
    speechswarm slurm --nodes 2 --gpus-per-node 4 --max-restarts 3 --config small > ddp-2x4.sbatch
    sbatch ddp-2x4.sbatch

One GPU runs `python -m speechswarm train`; one node with G GPUs runs `torchrun --standalone
--nproc-per-node=G`; K nodes run one torchrun per node through `srun`, meeting at a c10d
rendezvous on the job's first node. Every variant passes `--resume auto`, so a requeued or
restarted job continues from the run's last checkpoint, and logs device use next to
train.log: `devices-<host>.csv` from nvidia-smi every `--monitor-seconds` (gpustat's text
when only that is installed, else the load average), one file per node.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from speechswarm.errors import UsageError
from speechswarm.train.ddp import FRESH_STORE_PER_RESTART


@dataclass(frozen=True)
class SlurmJob:
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_gpu: int = 8  # data-loader workers + the training process per GPU
    time: str = "24:00:00"
    partition: str = ""
    account: str = ""
    job_name: str = "speechswarm"
    config: str = "small"
    overrides: tuple[str, ...] = ()
    out_dir: str = "runs/slurm"
    venv: str = ""  # a virtual environment to activate first (its folder)
    max_restarts: int = 0  # torchrun restarts of a failed worker group
    monitor_seconds: int = 30
    port: int = 29500  # the rendezvous port on the first node (several nodes)

    def check(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1 or self.cpus_per_gpu < 1:
            raise UsageError("--nodes, --gpus-per-node and --cpus-per-gpu must be >= 1")
        if self.max_restarts < 0 or self.monitor_seconds < 1:
            raise UsageError("--max-restarts must be >= 0 and --monitor-seconds >= 1")
        bad = [o for o in self.overrides if "=" not in o or o.startswith("train.out_dir=")]
        if bad:
            raise UsageError(f"override(s) {bad}: give section.key=value; the run folder is --out")


_MONITOR = r"""monitor_devices() {  # device use every $1 s into $RUN_DIR/devices-<host>.csv
    local log="$RUN_DIR/devices-$(hostname -s).csv"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=timestamp,index,name,utilization.gpu,utilization.memory,memory.used,memory.total,power.draw,temperature.gpu \
            --format=csv -l "$1" >> "$log"
    elif command -v gpustat >/dev/null 2>&1; then
        while true; do gpustat --no-color >> "$log"; sleep "$1"; done
    else
        echo "timestamp,load1,load5,load15" >> "$log"
        while true; do echo "$(date +%FT%T),$(cut -d' ' -f1-3 /proc/loadavg | tr ' ' ,)" >> "$log"; sleep "$1"; done
    fi
}"""


def render_sbatch(job: SlurmJob) -> str:
    """The sbatch script for `job` (a bash script; `bash -n` accepts it)."""
    job.check()
    total_gpus = job.nodes * job.gpus_per_node
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --nodes={job.nodes}",
        "#SBATCH --ntasks-per-node=1",  # one launcher per node; torchrun forks the workers
        f"#SBATCH --gpus-per-node={job.gpus_per_node}",
        f"#SBATCH --cpus-per-task={job.cpus_per_gpu * job.gpus_per_node}",
        f"#SBATCH --time={job.time}",
        f"#SBATCH --output={job.out_dir}/slurm-%j.out",
        *([f"#SBATCH --partition={job.partition}"] if job.partition else []),
        *([f"#SBATCH --account={job.account}"] if job.account else []),
    ]
    kind = "1 GPU" if total_gpus == 1 else f"{job.nodes} node(s) x {job.gpus_per_node} GPUs, DDP"
    body = [
        f"# speechswarm: {kind}. Written by `speechswarm slurm`; submit with sbatch.",
        "set -euo pipefail",
        f"RUN_DIR={shlex.quote(job.out_dir)}",
        'mkdir -p "$RUN_DIR"',
        *([f"source {shlex.quote(job.venv)}/bin/activate"] if job.venv else []),
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # per worker; data workers use 1",
        "",
        _MONITOR,
        "",
        *_monitor_start(job),
        "",
        *_train_command(job),
    ]
    return "\n".join(header + [""] + body) + "\n"


def _monitor_start(job: SlurmJob) -> list[str]:
    if job.nodes == 1:
        return [
            f"monitor_devices {job.monitor_seconds} &",
            "MONITOR_PID=$!",
            "trap 'kill $MONITOR_PID 2>/dev/null || true' EXIT",
        ]
    # One monitor per node, beside the training step (--overlap shares the allocation).
    return [
        'srun --overlap --ntasks-per-node=1 bash -c "$(declare -f monitor_devices); '
        f'RUN_DIR=$RUN_DIR monitor_devices {job.monitor_seconds}" &',
        "MONITOR_PID=$!",
        "trap 'kill $MONITOR_PID 2>/dev/null || true' EXIT",
    ]


def _train_command(job: SlurmJob) -> list[str]:
    args = " ".join(
        shlex.quote(a)
        for a in (
            "train",
            "--config",
            job.config,
            "--resume",
            "auto",
            "--device",
            "cuda",
            *job.overrides,
        )
    )
    args += ' "train.out_dir=$RUN_DIR"'
    if job.nodes == 1 and job.gpus_per_node == 1:
        return [f"python -m speechswarm {args}"]
    # A fresh rendezvous store per restart (see train.ddp.FRESH_STORE_PER_RESTART).
    fresh_store = f"export {FRESH_STORE_PER_RESTART}=1"
    if job.nodes == 1:
        return [
            fresh_store,
            f"torchrun --standalone --nproc-per-node={job.gpus_per_node} "
            f"--max-restarts={job.max_restarts} -m speechswarm {args}",
        ]
    return [
        fresh_store,
        # sed reads all of scontrol's output: `head -n 1` may exit first, and under pipefail
        # scontrol's SIGPIPE (exit 141) ended the job (seen once in the two-node test).
        'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        "srun --ntasks-per-node=1 torchrun \\",
        f'    --nnodes="$SLURM_NNODES" --nproc-per-node={job.gpus_per_node} \\',
        f'    --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$HEAD_NODE:{job.port}" \\',
        f"    --max-restarts={job.max_restarts} -m speechswarm {args}",
    ]
