"""`speechswarm compare`: central, DDP and Hogwild training on the same data and wall-clock budget.

    speechswarm compare --config tiny --minutes 10 --processes 2 --out runs/compare
    speechswarm compare --config tiny --minutes 10 --target-cer 0.6 train.eval_every=20

Runs, one after the other, each in its own process (`speechswarm train ...`):
`central` (one process, `--processes` torch threads, or `--central-threads`: on a busy
machine one oneDNN pool of several threads can run many times slower than one thread),
`ddp` (`--processes` DDP workers, one thread each) and `hogwild` (`--processes` Hogwild workers, one thread each), all with
`train.time_budget_min=--minutes` into OUT/<mode>/. Then it reads their metrics.jsonl and
writes OUT/compare.md (the table), compare.json and compare.png (dev CER against wall time):
final and best dev CER, the wall time at which dev CER first reached the target (by default
the worst of the three best CERs, a level every mode reached), steps and audio seconds per
second. Wall time counts evaluations too, as a user waiting for the run sees it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from speechswarm.errors import UsageError
from speechswarm.report import read_metrics

MODES = ("central", "ddp", "hogwild")


@dataclass(frozen=True)
class ModeResult:
    mode: str
    final_cer: float | None
    best_cer: float | None
    seconds_to_target: float | None  # wall seconds until dev CER <= target; None: never
    steps: int | None
    audio_seconds_per_second: float | None
    wall_seconds: float | None  # wall time of the last metrics record
    ok: bool = True  # the run exited 0


def dev_curve(metrics: list[dict]) -> list[tuple[float, float]]:
    """(wall seconds, dev CER) of every evaluation, in order."""
    return [(float(r["wall_time"]), float(r["dev_cer"])) for r in metrics if "dev_cer" in r]


def seconds_to_target(curve: list[tuple[float, float]], target: float) -> float | None:
    """Wall seconds of the first evaluation with CER <= target; None if none reached it."""
    return next((t for t, cer in curve if cer <= target), None)


def default_target(curves: dict[str, list[tuple[float, float]]]) -> float | None:
    """The worst of the modes' best CERs: a level every mode reached at some point."""
    bests = [min(c for _, c in curve) for curve in curves.values() if curve]
    return max(bests) if bests else None


def summarise(mode: str, run_dir: Path, target: float | None, ok: bool) -> ModeResult:
    metrics_path = run_dir / "metrics.jsonl"
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else []
    curve = dev_curve(metrics)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return ModeResult(
        mode=mode,
        final_cer=curve[-1][1] if curve else None,
        best_cer=min(c for _, c in curve) if curve else None,
        seconds_to_target=seconds_to_target(curve, target) if target is not None else None,
        steps=summary.get("steps"),
        audio_seconds_per_second=summary.get("audio_seconds_per_second"),
        wall_seconds=float(metrics[-1]["wall_time"]) if metrics else None,
        ok=ok,
    )


def format_table(results: list[ModeResult], target: float | None, budget_min: float) -> str:
    """Markdown table, one row per mode."""

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f} %"

    def minutes(v):
        return "never" if v is None else f"{v / 60:.2f} min"

    target_text = "—" if target is None else f"{100 * target:.1f} %"
    lines = [
        f"Budget {budget_min:g} min per mode; target dev CER {target_text}.",
        "",
        "| mode | time to target CER | final dev CER | best dev CER | steps | audio s/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        speed = "—" if r.audio_seconds_per_second is None else f"{r.audio_seconds_per_second:.0f}"
        name = r.mode if r.ok else f"{r.mode} (failed)"
        lines.append(
            f"| {name} | {minutes(r.seconds_to_target)} | {pct(r.final_cer)} | "
            f"{pct(r.best_cer)} | {r.steps if r.steps is not None else '—'} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def mode_command(mode: str, config: str, overrides: list[str], run_dir: Path, minutes: float,
                 processes: int, central_threads: int | None = None) -> list[str]:  # fmt: skip
    """The `python -m speechswarm train ...` command line of one mode."""
    common = [*overrides, f"train.out_dir={run_dir}", f"train.time_budget_min={minutes}"]
    base = [sys.executable, "-m", "speechswarm", "train", "--config", config]
    if mode == "central":
        return [*base, *common, f"train.num_threads={central_threads or processes}"]
    if mode == "ddp":
        return [*base, "--nproc", str(processes), *common, "train.num_threads=1"]
    if mode == "hogwild":
        return [*base, "--hogwild", str(processes), *common, "train.num_threads=1"]
    raise UsageError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")


def compare(
    config: str,
    overrides: list[str],
    out_dir: Path,
    *,
    minutes: float,
    processes: int = 2,
    target_cer: float | None = None,
    modes: tuple[str, ...] = MODES,
    central_threads: int | None = None,
) -> tuple[list[ModeResult], float | None]:
    """Run `modes` one after the other and write compare.md/json/png into `out_dir`."""
    if minutes <= 0 or processes < 1:
        raise UsageError("--minutes must be > 0 and --processes >= 1")
    from speechswarm.config import load_config

    load_config(config, overrides)  # a bad key fails now, not three runs later
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    status = {}
    for mode in modes:
        command = mode_command(
            mode, config, overrides, out_dir / mode, minutes, processes, central_threads
        )
        print(f"compare: {mode}: {' '.join(command[1:])}", file=sys.stderr)
        status[mode] = subprocess.run(command, env=env).returncode == 0
    curves = {m: dev_curve(_metrics(out_dir / m)) for m in modes}
    target = target_cer if target_cer is not None else default_target(curves)
    results = [summarise(m, out_dir / m, target, status[m]) for m in modes]
    table = format_table(results, target, minutes)
    (out_dir / "compare.md").write_text(table)
    (out_dir / "compare.json").write_text(
        json.dumps(
            {
                "target_cer": target,
                "minutes": minutes,
                "processes": processes,
                "results": [asdict(r) for r in results],
            },
            indent=1,
        )  # fmt: skip
    )
    plot_curves(curves, target, out_dir / "compare.png")
    return results, target


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_metrics(path) if path.is_file() else []


def plot_curves(curves: dict[str, list[tuple[float, float]]], target, path: Path) -> Path:
    """Dev CER (%) against wall time (min), one line per mode, the target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, curve in curves.items():
        if curve:
            ax.plot([t / 60 for t, _ in curve], [100 * c for _, c in curve], "o-", label=mode)
    if target is not None:
        ax.axhline(100 * target, color="grey", ls="--", lw=1, label="target")
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("dev CER (%)")
    ax.set_title("central vs DDP vs Hogwild, same data and budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
