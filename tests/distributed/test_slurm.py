"""sbatch scripts: every variant passes `bash -n`, and runs against stand-in Slurm/torchrun/
nvidia-smi commands that record how they were called.

    .venv/bin/python -m pytest tests/distributed/test_slurm.py -q
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from speechswarm.distributed import cli as distributed_cli
from speechswarm.distributed.slurm import SlurmJob, render_sbatch

VARIANTS = {
    "one-gpu": SlurmJob(nodes=1, gpus_per_node=1),
    "one-node-ddp": SlurmJob(nodes=1, gpus_per_node=4, max_restarts=2),
    "two-nodes": SlurmJob(nodes=2, gpus_per_node=8, partition="gpu", account="asr",
                          overrides=("optim.lr=3e-4", "data.train_manifest=a b.jsonl")),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_valid_bash(name, tmp_path):
    script = tmp_path / f"{name}.sbatch"
    script.write_text(render_sbatch(VARIANTS[name]))
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_headers_and_launchers_fit_the_variant():
    one = render_sbatch(VARIANTS["one-gpu"])
    assert "#SBATCH --gpus-per-node=1" in one and "#SBATCH --cpus-per-task=8" in one
    assert "python -m speechswarm train --config small --resume auto --device cuda" in one
    assert "torchrun" not in one and "srun" not in one
    node = render_sbatch(VARIANTS["one-node-ddp"])
    assert "torchrun --standalone --nproc-per-node=4 --max-restarts=2 -m speechswarm" in node
    assert "#SBATCH --cpus-per-task=32" in node
    two = render_sbatch(VARIANTS["two-nodes"])
    for line in ("#SBATCH --nodes=2", "#SBATCH --partition=gpu", "#SBATCH --account=asr",
                 "--rdzv-backend=c10d", "srun --ntasks-per-node=1 torchrun"):  # fmt: skip
        assert line in two, line
    assert "'data.train_manifest=a b.jsonl'" in two  # quoted: one argument


def fake_commands(bin_dir: Path, record: Path) -> None:
    """srun (runs its command once per 'node'), scontrol, torchrun, nvidia-smi stand-ins."""
    bin_dir.mkdir()
    scripts = {
        "srun": 'while [[ "$1" == --* ]]; do shift; done\n'
        'for node in node1 node2; do HOSTNAME_OVERRIDE=$node "$@" & done; wait',
        "scontrol": "printf 'node1\\nnode2\\n'",
        # Training outlasts the monitors' start: wait (at most 10 s) until every node's log
        # is there, so the EXIT trap cannot kill srun before it has started them all.
        "torchrun": f'printf "%s\\n" "$@" > {record}.torchrun.$$; '
        f'echo "$TORCH_DISABLE_SHARE_RDZV_TCP_STORE" > {record}.store.$$; '
        'out="${@: -1}"; out="${out#train.out_dir=}"; '
        'for _ in $(seq 100); do n=$(ls "$out"/devices-*.csv 2>/dev/null | wc -l); '
        '[ "$n" -ge "${SLURM_NNODES:-1}" ] && break; sleep 0.1; done',
        "nvidia-smi": 'echo "timestamp, index, name"; echo "2026/01/01, 0, H100"',
        "hostname": 'echo "${HOSTNAME_OVERRIDE:-node1}"',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)


def test_two_node_script_runs_one_torchrun_per_node_with_monitoring(tmp_path):
    fake_commands(tmp_path / "bin", tmp_path / "record")
    run_dir = tmp_path / "run"
    job = SlurmJob(nodes=2, gpus_per_node=4, out_dir=str(run_dir), max_restarts=1,
                   overrides=("optim.lr=3e-4",))  # fmt: skip
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(job))
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
               SLURM_JOB_ID="4242", SLURM_NNODES="2", SLURM_JOB_NODELIST="node[1-2]")  # fmt: skip
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    calls = [p.read_text().split("\n")[:-1] for p in tmp_path.glob("record.torchrun.*")]
    assert len(calls) == 2  # one launcher per node
    stores = [p.read_text() for p in tmp_path.glob("record.store.*")]
    assert stores == ["1\n", "1\n"]  # a fresh rendezvous store per restart
    args = calls[0]
    assert "--nnodes=2" in args and "--nproc-per-node=4" in args and "--max-restarts=1" in args
    assert "--rdzv-endpoint=node1:29500" in args and "--rdzv-id=4242" in args
    tail = args[args.index("-m") :]
    assert tail == ["-m", "speechswarm", "train", "--config", "small", "--resume", "auto",
                    "--device", "cuda", "optim.lr=3e-4", f"train.out_dir={run_dir}"]  # fmt: skip
    deadline = time.monotonic() + 10  # the monitors run in the background
    while len(list(run_dir.glob("devices-*.csv"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    logs = sorted(p.name for p in run_dir.glob("devices-*.csv"))
    assert logs == ["devices-node1.csv", "devices-node2.csv"]
    assert "H100" in (run_dir / "devices-node1.csv").read_text()


def test_cli_prints_the_script_and_refuses_bad_overrides(capsys):
    parser = argparse.ArgumentParser()
    distributed_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["slurm", "--gpus-per-node", "2", "--config", "tiny", "optim.lr=1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash\n") and "--nproc-per-node=2" in out
    assert "optim.lr=1" in shlex.split(out.splitlines()[-1])
    args = parser.parse_args(["slurm", "train.out_dir=x"])
    with pytest.raises(ValueError, match="the run folder is --out"):
        args.func(args)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_monitor_falls_back_to_load_average_without_gpu_tools(tmp_path):
    script = render_sbatch(SlurmJob(out_dir=str(tmp_path), monitor_seconds=1))
    start = script.index("monitor_devices() {")
    function = script[start : script.index("\n}", start) + 2]
    empty_path = tmp_path / "nobin"
    empty_path.mkdir()
    for tool in ("hostname", "cut", "tr", "date", "sleep", "kill"):
        found = shutil.which(tool)
        if found:
            (empty_path / tool).symlink_to(found)
    probe = f"{function}\nRUN_DIR={tmp_path}\nmonitor_devices 1 & pid=$!; sleep 1.5; kill $pid"
    subprocess.run(["/bin/bash", "-c", probe], env={"PATH": str(empty_path)}, timeout=20)
    log = next(tmp_path.glob("devices-*.csv")).read_text().splitlines()
    assert log[0] == "timestamp,load1,load5,load15"
    assert len(log[1].split(",")) == 4
