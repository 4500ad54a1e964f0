"""What a peer-to-peer experiment shows a person: metrics files, plots, a markdown report.

    speechswarm p2p --config p2p-tiny   # writes <out>/report.md, <out>/plots/*.png,
                                        # <out>/<run>/{metrics.jsonl,topology.png,agents_*.png}

Each run's `metrics.jsonl` has one row per agent per round:
    {"run": "gossip-ring", "round": 3, "agent": 0, "train_loss": 61.2, "steps": 48,
     "own_wer": 0.93, "own_cer": 0.58, "global_wer": 0.97, "global_cer": 0.61,
     "msgs_sent": 6, "bytes_sent": 39321624, ..., "wall_time": 80.4}
WER/CER are fractions (0.25 = 25 %) and present only in evaluated rounds; bytes are what
the messages would weigh on the wire (after compression; `bytes_from_server`: a FedAvg
server's downloads, in no agent's `bytes_sent`); `steps` are the agent's optimizer
steps so far (the central model's for every agent of a `central` run).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from speechswarm.report import format_duration, pct


class MetricsFile:
    """Append-only JSONL of per-agent rows; on resume, rows after `keep_rounds` (logged
    before an interruption and about to be redone) are dropped first."""

    def __init__(self, path: str | os.PathLike, keep_rounds: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [r for r in read_rows(self.path) if r["round"] <= keep_rounds]
        self.path.write_text("".join(_dumps(r) for r in rows))

    def write(self, rows: Sequence[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(_dumps(r) for r in rows))


def _dumps(row: dict) -> str:
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }
    return json.dumps(clean, allow_nan=False) + "\n"


def read_rows(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line ({e}); delete the line") from e
    return rows


# ---------------------------------------------------------------------- summaries


def _value(row: dict, key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)


def per_round(
    rows: Sequence[dict], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, min, max) of `key` over agents, for rounds where it was measured."""
    rounds = sorted({r["round"] for r in rows if r.get(key) is not None})
    stats = []
    for rd in rounds:
        vals = np.array([_value(r, key) for r in rows if r["round"] == rd])
        vals = vals[np.isfinite(vals)]
        stats.append((vals.mean(), vals.min(), vals.max()) if len(vals) else (np.nan,) * 3)
    arr = np.array(stats).reshape(-1, 3)
    return np.array(rounds), arr[:, 0], arr[:, 1], arr[:, 2]


def wire_bytes(row: dict) -> int:
    """Bytes on the wire for one agent so far: what it sent, plus what it downloaded from
    a FedAvg server (which is no agent, so those bytes are in no agent's bytes_sent)."""
    return int(row.get("bytes_sent") or 0) + int(row.get("bytes_from_server") or 0)


def total_bytes(rows: Sequence[dict]) -> dict[int, float]:
    """round -> bytes on the wire so far (`wire_bytes` over all agents)."""
    out: dict[int, float] = {}
    for r in rows:
        out[r["round"]] = out.get(r["round"], 0.0) + wire_bytes(r)
    return out


# Scores summarised over agents (mean, median, min, max): the headline view (p2p.score) and
# both views, on each agent's own test split, a sample of its own train split, global test.
SCORE_KEYS = tuple(
    f"{split}_{metric}{view}"
    for split in ("own", "train", "global")
    for metric in ("wer", "cer")
    for view in ("", "_premix", "_postmix", "_tuned")
)


def summarize(rows: Sequence[dict]) -> dict:
    """Final numbers of one run: the last evaluated round's agent scores, totals."""
    if not rows:
        return {}
    scored = [r for r in rows if r.get("own_cer") is not None]
    last = max(r["round"] for r in rows)
    final = [r for r in rows if r["round"] == last]
    summary = {"run": rows[0]["run"], "rounds": last, "agents": len(final)}
    if scored:
        at = max(r["round"] for r in scored)
        best = [r for r in scored if r["round"] == at]
        for key in SCORE_KEYS:
            vals = np.array([_value(r, key) for r in best])
            if np.isnan(vals).all():
                continue
            summary[f"{key}_mean"] = float(np.nanmean(vals))
            summary[f"{key}_median"] = float(np.nanmedian(vals))
            summary[f"{key}_min"] = float(np.nanmin(vals))
            summary[f"{key}_max"] = float(np.nanmax(vals))
        summary["scored_round"] = at
    central = rows[0]["run"] == "central"
    summary["total_steps"] = (
        int(final[0]["steps"]) if central else sum(int(r["steps"]) for r in final)
    )
    summary["messages"] = sum(int(r["msgs_sent"]) for r in final)
    summary["bytes"] = sum(wire_bytes(r) for r in final)
    summary["rejected"] = sum(int(r["rejected"]) for r in final)
    for key in ("poisoned_recv", "poisoned_refused", "poisoned_outvoted"):  # planted faults
        if key in final[0]:
            summary[key] = sum(int(r[key]) for r in final)
    summary["wall_time"] = max(float(r["wall_time"]) for r in final)
    # each agent on a machine of its own: the cluster's training time is the slowest
    # agent's sum of local training (communication and scoring not included)
    per_agent: dict[int, float] = {}
    for r in rows:
        per_agent[r["agent"]] = per_agent.get(r["agent"], 0.0) + float(r.get("train_seconds", 0))
    summary["agent_train_seconds"] = max(per_agent.values(), default=0.0)
    return summary


# ---------------------------------------------------------------------- plots


def _figure(figsize=(8, 4.5)):
    from matplotlib.figure import Figure  # Agg canvas: the global pyplot backend is left alone

    return Figure(figsize=figsize, dpi=110, layout="constrained")


def draw_topology(adj: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Agents on a circle, links as lines (arrows from sender to receiver if directed)."""
    n = len(adj)
    fig = _figure((5.5, 5.5))
    ax = fig.subplots()
    angle = 2 * np.pi * np.arange(n) / max(n, 1)
    xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    symmetric = bool(np.array_equal(adj, adj.T))
    for i, j in zip(*np.nonzero(adj), strict=True):
        if symmetric and i > j:
            continue
        if symmetric:
            ax.plot(*xy[[i, j]].T, color="0.55", lw=1, zorder=1)
        else:  # i pulls from j: the message goes j -> i
            ax.annotate(
                "",
                xy=xy[i] * 0.93,
                xytext=xy[j] * 0.93,
                arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8},
            )
    ax.scatter(xy[:, 0], xy[:, 1], s=260, color="tab:blue", zorder=2)
    for k in range(n):
        ax.text(*xy[k], str(k), ha="center", va="center", color="white", fontsize=8, zorder=3)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_agents(rows: Sequence[dict], path: str | os.PathLike) -> Path | None:
    """One line per agent: WER and CER on its own test split against rounds."""
    scored = [r for r in rows if r.get("own_cer") is not None]
    if not scored:
        return None
    fig = _figure((11, 4.2))
    axes = fig.subplots(1, 2)
    agents = sorted({r["agent"] for r in scored})
    for ax, key in zip(axes, ("own_wer", "own_cer"), strict=True):
        for k in agents:
            pts = sorted((r["round"], _value(r, key)) for r in scored if r["agent"] == k)
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], lw=1, alpha=0.8)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{key.split('_')[1].upper()} on own test split (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{rows[0]['run']}: each agent ({len(agents)}) on its own test split")
    fig.savefig(path)
    return Path(path)


def plot_comparison(runs: dict[str, list[dict]], out_dir: str | os.PathLike) -> list[Path]:
    """Mean (line) and min-max spread (band) over agents, per run: WER and CER on own test
    splits and CER on the global test set against rounds, and CER against bytes sent."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    fig = _figure((13, 4.2))
    axes = fig.subplots(1, 3)
    keys = (
        ("own_wer", "WER, own test split"),
        ("own_cer", "CER, own test split"),
        ("global_cer", "CER, global test set"),
    )
    for ax, (key, label) in zip(axes, keys, strict=True):
        for name, rows in runs.items():
            x, mean, lo, hi = per_round(rows, key)
            if len(x):
                line = ax.plot(x, 100 * mean, marker="o", ms=3, label=name)[0]
                ax.fill_between(x, 100 * lo, 100 * hi, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Agents' mean (line) and min-max (band) against rounds")
    fig.savefig(out_dir / "compare_rounds.png")
    written.append(out_dir / "compare_rounds.png")
    written.append(_plot_bytes(runs, out_dir / "compare_bytes.png"))
    written.append(_plot_steps_messages(runs, out_dir / "compare_steps_messages.png"))
    return written


def per_round_sum(rows: Sequence[dict], key: str, mean: bool = False) -> dict[int, float]:
    """round -> the sum (or mean) over agents of a cumulative counter (steps, messages)."""
    out: dict[int, list[float]] = {}
    for r in rows:
        out.setdefault(r["round"], []).append(float(r.get(key) or 0))
    return {k: (sum(v) / len(v) if mean else sum(v)) for k, v in out.items()}


def _plot_steps_messages(runs: dict[str, list[dict]], path: Path) -> Path:
    """Mean own-test CER against each agent's optimizer steps (the compute one machine
    spends) and against the messages sent by all agents."""
    fig = _figure((11, 4.2))
    axes = fig.subplots(1, 2)
    for name, rows in runs.items():
        x, mean, _, _ = per_round(rows, "own_cer")
        if not len(x):
            continue
        steps = per_round_sum(rows, "steps", mean=True)
        axes[0].plot([steps[r] for r in x], 100 * mean, marker="o", ms=3, label=name)
        msgs = per_round_sum(rows, "msgs_sent")
        if max(msgs[r] for r in x) > 0:
            axes[1].plot([msgs[r] for r in x], 100 * mean, marker="o", ms=3, label=name)
    axes[0].set_xlabel("optimizer steps per agent (central: its model's)")
    axes[1].set_xlabel("messages sent by all agents so far")
    for ax in axes:
        ax.set_ylabel("mean CER, own test split (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("Accuracy against per-agent compute and messages")
    fig.savefig(path)
    return path


def _plot_bytes(runs: dict[str, list[dict]], path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    for name, rows in runs.items():
        x, mean, _, _ = per_round(rows, "own_cer")
        if not len(x):
            continue
        sent = total_bytes(rows)
        mb = np.array([sent[r] for r in x]) / 1e6
        if mb.max() <= 0:  # no messages (central, local): its final level as a line
            ax.axhline(100 * mean[-1], ls="--", lw=1, color="0.4")
            ax.text(
                0.01,
                100 * mean[-1],
                f" {name}",
                transform=ax.get_yaxis_transform(),
                va="bottom",
                fontsize=8,
                color="0.3",
            )
            continue
        ax.plot(mb, 100 * mean, marker="o", ms=3, label=name)
    ax.set_xlabel("MB on the wire so far (all agents' messages, a FedAvg server's too)")
    ax.set_ylabel("mean CER, own test split (%)")
    ax.set_title("Accuracy against communication")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.savefig(path)
    return path


# ---------------------------------------------------------------------- markdown


def report_markdown(summaries: list[dict], agents: list[dict], notes: list[str], base: Path) -> str:
    """report.md: the runs table (with the gap to central when it ran), agents, plots."""
    central = next((s for s in summaries if s.get("run") == "central"), None)
    lines = ["# Peer-to-peer experiment", "", *notes, ""]
    lines += [
        "| run | mean agent WER (min-max) | mean agent CER (min-max) | median agent CER |"
        " WER gap to central | CER / central | CER before / after mixing | own train CER |"
        " global test WER / CER | total steps | messages | MB on the wire | rejected | wall time |"
        " train time per agent |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        gap = ratio = "n/a"
        if central and "own_wer_mean" in s and "own_wer_mean" in central:
            gap = f"{100 * (s['own_wer_mean'] - central['own_wer_mean']):+.1f} pts"
            ratio = f"{s['own_cer_mean'] / max(central['own_cer_mean'], 1e-12):.2f}x"
        lines.append(
            f"| {s['run']} | {pct(s.get('own_wer_mean'))} ({pct(s.get('own_wer_min'))}-"
            f"{pct(s.get('own_wer_max'))}) | {pct(s.get('own_cer_mean'))} "
            f"({pct(s.get('own_cer_min'))}-{pct(s.get('own_cer_max'))}) | "
            f"{pct(s.get('own_cer_median'))} | {gap} | {ratio} | "
            f"{pct(s.get('own_cer_premix_mean'))} / {pct(s.get('own_cer_postmix_mean'))}"
            + (f" / tuned {pct(s['own_cer_tuned_mean'])}" if "own_cer_tuned_mean" in s else "")
            + " | "
            f"{pct(s.get('train_cer_mean'))} | "
            f"{pct(s.get('global_wer_mean'))} / {pct(s.get('global_cer_mean'))} | "
            f"{s.get('total_steps', 0):,} | {s.get('messages', 0):,} | "
            f"{s.get('bytes', 0) / 1e6:,.1f} | {s.get('rejected', 0):,} | "
            f"{format_duration(s.get('wall_time', 0.0))} | "
            f"{format_duration(s.get('agent_train_seconds', 0.0))} |"
        )
    lines += [
        "",
        "Scores are corpus-level WER/CER of greedy decoding in the last scored round; "
        '"own" is each agent\'s held-out share of its own users\' speech, "own train" a '
        'sample of its training share, "global" the corpus test set (unseen voices). '
        '"Before mixing" scores each agent\'s model after its local training (its '
        'personalised model, the P2P seed\'s score), "after mixing" the averaged one, '
        '"tuned" (with p2p.finetune_steps) the averaged one after a few more local steps; '
        "the other columns use the view p2p.score names. Wall time is this machine's; "
        '"train time per agent" is the slowest agent\'s own training, what a cluster with '
        "one machine per agent would take to train (messages and scoring not included).",
        "",
    ]
    if agents:
        lines += [
            "## Agents",
            "",
            "| agent | train utts | test utts | train min | speakers | persons |",
            "|---|---|---|---|---|---|",
        ]
        for a in agents:
            persons = ", ".join(a.get("persons", [])) or "-"  # agents.json before persons: none
            lines.append(
                f"| {a['name']} | {a['train_utts']} | {a['test_utts']} | "
                f"{a['train_minutes']} | {a['speakers']} | {persons} |"
            )
        lines.append("")
    plots = sorted(base.glob("plots/*.png")) + sorted(base.glob("*/topology.png"))
    plots += sorted(base.glob("*/agents_wer_cer.png"))
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.parent.name}/{p.stem}]({p.relative_to(base).as_posix()})" for p in plots]
        lines.append("")
    return "\n".join(lines)
