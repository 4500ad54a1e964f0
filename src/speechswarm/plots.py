"""A run's training curves as PNG files: loss, dev WER/CER and learning rate.

    plots = plot_run(read_metrics("runs/demo/metrics.jsonl"), "runs/demo/plots")

Reads the records `report.MetricsLogger` writes; x-axes in steps and in wall time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speechswarm.report import DEV_CER, DEV_LOSS, DEV_WER, LR, TRAIN_LOSS, format_duration


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centered moving average over `window` points (odd; even is rounded up).

    Centered, unlike TensorBoard's EMA, so the smoothed curve does not lag behind a loss
    that is still falling fast. Near the ends the window shrinks symmetrically to what
    exists: point i averages values[i-h : i+h+1] with h = min(window // 2, i, n-1-i).
    """
    x = np.asarray(values, dtype=np.float64)
    n, half = len(x), max(0, int(window) // 2)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(n)
    h = np.minimum(half, np.minimum(i, n - 1 - i))
    return (csum[i + h + 1] - csum[i - h]) / (2 * h + 1)


def series(metrics: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, wall_times, values) of `key`, by step; a repeated step keeps its last value."""
    by_step = {}
    for r in metrics:
        if r.get(key) is not None:
            by_step[int(r["step"])] = (float(r.get("wall_time") or 0.0), float(r[key]))
    steps = np.array(sorted(by_step), dtype=np.int64)
    walls = np.array([by_step[s][0] for s in steps], dtype=np.float64)
    values = np.array([by_step[s][1] for s in steps], dtype=np.float64)
    return steps, walls, values


def _time_unit(max_seconds: float) -> tuple[float, str]:
    """Divisor and axis label that keep wall-time ticks short."""
    if max_seconds >= 2 * 3600:
        return 3600.0, "wall time (h)"
    if max_seconds >= 120:
        return 60.0, "wall time (min)"
    return 1.0, "wall time (s)"


def _x(steps, walls, by_time: bool, unit: float):
    return walls / unit if by_time else steps


def _draw_loss(ax, metrics, by_time: bool, unit: float) -> bool:
    key = TRAIN_LOSS if any(TRAIN_LOSS in r for r in metrics) else "loss"
    steps, walls, train = series(metrics, key)
    dev_steps, dev_walls, dev = series(metrics, DEV_LOSS)
    if len(train) == 0 and len(dev) == 0:
        return False
    if len(train):
        x = _x(steps, walls, by_time, unit)
        window = 2 * (len(train) // 60) + 1  # ~1/30 of the run
        marker = "o" if len(x) == 1 else None  # a lone point draws no line
        ax.plot(x, train, color="C0", alpha=0.25, lw=0.8, marker=marker, label="train (raw)")
        smooth = moving_average(train, window)
        ax.plot(x, smooth, color="C0", lw=2, label=f"train (mean of {window} points)")
    if len(dev):
        ax.plot(_x(dev_steps, dev_walls, by_time, unit), dev, "o-", color="C1", label="dev")
    values = np.concatenate([train, dev])
    if values.min() > 0 and values.max() / values.min() > 20:
        _log_y(ax)  # CTC loss falls by orders of magnitude early on
    ax.set_ylabel("CTC loss (nats, log scale)" if ax.get_yscale() == "log" else "CTC loss (nats)")
    ax.set_title("Loss")
    return True


def _log_y(ax) -> None:
    """Log y axis with plain numbers at 1, 2, 5 x 10^k (not only 10^k in sci notation)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda y, _: f"{y:g}" if f"{y:e}"[0] in "125" else "")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)


def _draw_errors(ax, metrics, by_time: bool, unit: float) -> bool:
    drew = False
    for key, name, style, color in ((DEV_WER, "WER", "o-", "C2"), (DEV_CER, "CER", "s-", "C3")):
        steps, walls, values = series(metrics, key)
        if len(values) == 0:
            continue
        x, pct = _x(steps, walls, by_time, unit), 100 * values
        best = int(np.argmin(pct))
        # The best value goes in the legend, not beside the point, where it would cross lines.
        label = f"dev {name} (best {pct[best]:.2f} % at step {steps[best]:,})"
        ax.plot(x, pct, style, color=color, ms=4, label=label)
        ax.plot(x[best], pct[best], "*", color=color, ms=14, mec="black", mew=0.6)
        drew = True
    if drew:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("error rate (%, lower is better)")
        ax.set_title("Dev WER and CER")
    return drew


def _draw_lr(ax, metrics, by_time: bool, unit: float) -> bool:
    from matplotlib.ticker import StrMethodFormatter

    steps, walls, lr = series(metrics, LR)
    if len(lr) == 0:
        return False
    ax.plot(_x(steps, walls, by_time, unit), lr, color="C4", lw=1.5, label="learning rate")
    ax.yaxis.set_major_formatter(StrMethodFormatter("{x:.1e}"))  # 3.0e-04, no offset text
    ax.set_ylim(bottom=0)
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedule")
    return True


def _finish_axes(ax, by_time: bool, time_label: str) -> None:
    from matplotlib.ticker import StrMethodFormatter

    ax.set_xlabel(time_label if by_time else "optimizer step")
    if not by_time:
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.grid(True, alpha=0.3)
    if sum(not line.get_label().startswith("_") for line in ax.get_lines()) > 1:
        ax.legend(fontsize=8)


_PLOTS = (  # file stem, drawer, by wall time?
    ("loss_vs_step", _draw_loss, False),
    ("loss_vs_time", _draw_loss, True),
    ("wer_cer_vs_step", _draw_errors, False),
    ("wer_cer_vs_time", _draw_errors, True),
    ("lr_vs_step", _draw_lr, False),
)


def plot_run(metrics: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """PNG plots of a run's metrics into `out_dir`; returns the files written.

    overview (2x2: loss, error rates and LR vs step, loss vs wall time), then loss_vs_step,
    loss_vs_time, wer_cer_vs_step, wer_cer_vs_time and lr_vs_step. A plot whose metrics
    were never logged is not written. Uses matplotlib's Figure directly (Agg canvas), so
    the global pyplot backend is left alone.
    """
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    walls = [float(r["wall_time"]) for r in metrics if r.get("wall_time") is not None]
    unit, time_label = _time_unit(max(walls, default=0.0))
    written = _plot_overview(metrics, out_dir / "overview.png", unit, time_label)
    for stem, draw, by_time in _PLOTS:
        fig = Figure(figsize=(8, 4.5), dpi=120, layout="constrained")
        ax = fig.subplots()
        if draw(ax, metrics, by_time, unit):
            _finish_axes(ax, by_time, time_label)
            ax.set_title(f"{ax.get_title()} vs {'wall time' if by_time else 'optimizer step'}")
            fig.savefig(out_dir / f"{stem}.png")
            written.append(out_dir / f"{stem}.png")
    return written


def _plot_overview(metrics, path: Path, unit: float, time_label: str) -> list[Path]:
    """One 2x2 figure to glance at; [] if nothing was logged."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8), dpi=100, layout="constrained")
    panels = (_PLOTS[0], _PLOTS[2], _PLOTS[4], _PLOTS[1])
    drew = []
    for ax, (_, draw, by_time) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        drew.append(draw(ax, metrics, by_time, unit))
        if drew[-1]:
            _finish_axes(ax, by_time, time_label)
            ax.set_title(f"{ax.get_title()} vs {'wall time' if by_time else 'step'}")
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", color="gray")
    if not any(drew):
        return []
    last_step = max(int(r["step"]) for r in metrics)
    wall = max((float(r.get("wall_time") or 0.0) for r in metrics), default=0.0)
    fig.suptitle(f"Training run: {last_step:,} steps, {format_duration(wall)} wall time")
    fig.savefig(path)
    return [path]
