"""Run reporting: a metrics file for tools, TensorBoard, plots and a summary for people.

    speechswarm train --config configs/demo.yaml   # writes runs/demo/{metrics.jsonl,plots/,summary.md}

`MetricsLogger.log(step, epoch=..., **scalars)` appends one JSON line per call to
`<run>/metrics.jsonl`:

    {"step": 120, "wall_time": 84.2, "epoch": 1.5, "train_loss": 41.7, "lr": 0.00031}

`wall_time` is seconds of training since the run began, summed over resumes. Scalar names
the plots know: `train_loss` (or `loss`) and `dev_loss` (CTC loss, nats), `dev_wer` and
`dev_cer` (fractions as `metrics.wer` returns them: 0.25 is 25 %, plotted in %), `lr`. Any
other name is stored and mirrored to TensorBoard (`<run>/tb`) too. Non-finite values are written
as `null`, so the file is strict JSON that jq and pandas read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from speechswarm.atomic import atomic_open
from speechswarm.errors import DataError

log = logging.getLogger(__name__)

TRAIN_LOSS, DEV_LOSS, DEV_WER, DEV_CER, LR = "train_loss", "dev_loss", "dev_wer", "dev_cer", "lr"
_RESERVED = ("step", "wall_time", "epoch")
_tb_warned = False


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def _json_number(key: str, value) -> int | float | None:
    """A scalar as a JSON number: tensors/numpy scalars unwrapped, non-finite as None."""
    if hasattr(value, "item"):  # 0-d tensor, numpy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Append-only metrics.jsonl (flushed every call) plus optional TensorBoard and MLflow
    (`speechswarm.tracking`) mirrors.

    `resume_step`: when continuing a run from a checkpoint at that step, records after it
    (logged before the interruption, about to be redone) are dropped from metrics.jsonl and
    TensorBoard. Without it an existing file is appended to. Either way `wall_time`
    continues from the file's last record.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        tensorboard: bool = True,
        resume_step: int | None = None,
        mlflow=None,
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous = read_metrics(self.path) if self.path.is_file() else []
        if resume_step is not None and previous:
            previous = [r for r in previous if r["step"] <= resume_step]
            _write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in previous))
        self._offset = float(previous[-1]["wall_time"]) if previous else 0.0
        self._start = time.monotonic()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._tb = _open_tensorboard(self.run_dir / "tb", resume_step) if tensorboard else None
        self._mlflow = mlflow  # a tracking.MlflowMirror (train.tracking=mlflow) or None

    def log(self, step: int, *, epoch: float | None = None, **scalars) -> dict:
        """Write one record `{step, wall_time, epoch, **scalars}` and return it."""
        clash = [k for k in scalars if k in _RESERVED]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record's own fields")
        record = {
            "step": int(step),
            "wall_time": round(self._offset + time.monotonic() - self._start, 3),
            "epoch": None if epoch is None else _json_number("epoch", epoch),
        }
        record.update({k: _json_number(k, v) for k, v in scalars.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()  # a crash loses no logged line
        if self._tb is not None:
            for key, value in scalars.items():
                value = value.item() if hasattr(value, "item") else value
                self._tb.add_scalar(key, float(value), int(step), walltime=time.time())
        if self._mlflow is not None:
            self._mlflow.log(int(step), {k: record[k] for k in scalars})
        return record

    def read(self) -> list[dict]:
        """All records of this run's metrics.jsonl (see `read_metrics`); also after close()."""
        if not self._file.closed:
            self._file.flush()
        return read_metrics(self.path)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self, status: str = "FINISHED") -> None:
        """Close the files; `status` (FINISHED, FAILED, KILLED) ends the MLflow run."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow is not None:
            self._mlflow.close(status)
            self._mlflow = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_tensorboard(log_dir: Path, resume_step: int | None):
    """A SummaryWriter, or None (said once per process) if tensorboard is not installed."""
    global _tb_warned
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        if not _tb_warned:
            log.warning("TensorBoard logging off (%s); metrics.jsonl is still written", e)
            _tb_warned = True
        return None
    purge = None if resume_step is None else resume_step + 1
    _quiet_tensorboard_thread_errors()
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge, flush_secs=30)


def _quiet_tensorboard_thread_errors() -> None:
    """TensorBoard writes its event files from a thread of its own; when the run folder turns
    read-only or the disk fills, that thread died with a traceback printed beside the run's
    own one-line error. Its OSErrors become one warning line (metrics.jsonl, written by the
    run itself, reports the failure as it happens); any other thread's errors print as before."""
    previous = threading.excepthook
    if getattr(previous, "_speechswarm", False):
        return

    def hook(args) -> None:
        classes = type(args.thread).__mro__
        if isinstance(args.exc_value, OSError) and any(
            c.__module__.startswith("tensorboard") for c in classes
        ):
            log.warning("TensorBoard stopped writing: %s", args.exc_value)
            return
        previous(args)

    hook._speechswarm = True
    threading.excepthook = hook


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl, in file order.

    A last line cut short by a crash is dropped with a warning; a bad line elsewhere is an
    error naming the file and line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not an object with a 'step'")
        except ValueError as e:
            if number == len(lines):
                log.warning("%s:%d: dropping a cut-short last line (%s)", path, number, e)
                continue
            raise DataError(f"{path}:{number}: not a metrics record ({e}); fix or delete it") from e
        records.append(record)
    return records


def format_duration(seconds: float) -> str:
    """`3723` -> `"1 h 02 min 03 s"`; `42.5` -> `"42.5 s"`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage for people: 0.1234 -> "12.3 %"; None or NaN -> "n/a"."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f} %"


def _percent(x: float | None) -> str:
    return pct(x, 2)


# key -> (label, formatter); these rows come first, in this order, then any other key.
_SUMMARY_ROWS = {
    "stop_reason": ("Stopped because", str),
    "data_hours": ("Training audio", lambda x: f"{x:,.2f} h"),
    "train_hours": ("Training audio", lambda x: f"{x:,.2f} h"),
    "train_utterances": ("Training utterances", lambda x: f"{x:,}"),
    "steps": ("Optimizer steps", lambda x: f"{x:,}"),
    "epochs": ("Epochs", lambda x: f"{x:g}"),
    "wall_time_s": ("Wall time", lambda x: f"{format_duration(x)} ({x:,.0f} s)"),
    "train_minutes": ("Training time", lambda x: f"{format_duration(60 * x)} ({x:,.1f} min)"),
    "audio_seconds": ("Audio trained on", lambda x: f"{x / 3600:,.2f} h ({x:,.0f} s)"),
    "audio_sec_per_sec": ("Throughput", lambda x: f"{x:,.1f} audio s / wall s"),
    "audio_seconds_per_second": ("Throughput", lambda x: f"{x:,.1f} audio s / wall s"),
    "best_dev_wer": ("Best dev WER", _percent),
    "best_dev_cer": ("Best dev CER", _percent),
    "best_step": ("Best dev WER at step", lambda x: f"{x:,}"),
    "test_wer": ("Test WER", _percent),
    "test_cer": ("Test CER", _percent),
    "best_checkpoint": ("Best checkpoint", lambda x: f"`{x}`"),
    "skipped_utterances": ("Skipped utterances", lambda x: f"{x:,}"),
    "nonfinite_losses": ("Non-finite losses", lambda x: f"{x:,}"),
    "oom_skipped_batches": ("Batches skipped: out of memory", lambda x: f"{x:,}"),
}


def _plain(value):
    """JSON-able copy: Paths to strings, tuples to lists, non-finite floats to None."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def summary_markdown(summary: dict, title: str = "Run summary", base: Path | None = None) -> str:
    """The markdown of summary.md: a table of key numbers, then the plots (`plots`: paths).

    Plot paths under `base` (the folder summary.md lives in) are linked relative to it.
    """
    summary = _plain(summary)
    rows = []
    keys = [k for k in _SUMMARY_ROWS if k in summary] + [
        k for k in summary if k not in _SUMMARY_ROWS and k != "plots"
    ]
    for key in keys:
        value = summary[key]
        label, fmt = _SUMMARY_ROWS.get(key, (key.replace("_", " "), str))
        text = "n/a" if value is None else fmt(value)
        rows.append(f"| {label} | {text.replace('|', '/')} |")
    lines = [f"# {title}", "", "| | |", "|---|---|", *rows, ""]
    plots = summary.get("plots") or []
    if plots:
        links = [_relative_to(Path(p), base) for p in plots]
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.as_posix()})" for p in links] + [""]
    return "\n".join(lines)


def _relative_to(path: Path, base: Path | None) -> Path:
    if base is None:
        return path
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:  # not under base: keep as given
        return path


def write_summary(run_dir: str | os.PathLike, summary: dict) -> Path:
    """Write run_dir/summary.md (for people) and summary.json (for tools); returns the .md.

    Known keys (all optional): stop_reason, data_hours or train_hours, train_utterances,
    steps, epochs, wall_time_s or train_minutes, audio_seconds (all processes), audio_sec_per_sec
    or audio_seconds_per_second, best_dev_wer, best_dev_cer, best_step, test_wer, test_cer
    (WER/CER as fractions), best_checkpoint, skipped_utterances, nonfinite_losses, plots
    (paths; those under run_dir are linked relative to it). Other keys are listed as given.
    """
    run_dir = Path(run_dir)
    _write_text_atomic(run_dir / "summary.json", json.dumps(_plain(summary), indent=2) + "\n")
    md = run_dir / "summary.md"
    _write_text_atomic(md, summary_markdown(summary, f"Run summary: {run_dir.name}", run_dir))
    return md


def summary_line(summary: dict, run_dir: str | os.PathLike) -> str:
    """One line for the console, e.g. `1,200 steps, 3 epochs in 12 min 04 s; best dev
    WER 23.45 % (CER 9.10 %) - see runs/demo/summary.md`."""
    parts = []
    if summary.get("steps") is not None:
        parts.append(f"{summary['steps']:,} steps")
    if summary.get("epochs") is not None:
        parts.append(f"{summary['epochs']:g} epochs")
    text = ", ".join(parts)
    if summary.get("wall_time_s") is not None:
        text += f" in {format_duration(summary['wall_time_s'])}"
    if summary.get("best_dev_wer") is not None:
        text += f"; best dev WER {_percent(summary['best_dev_wer'])}"
        if summary.get("best_dev_cer") is not None:
            text += f" (CER {_percent(summary['best_dev_cer'])})"
    return f"{text} - see {Path(run_dir) / 'summary.md'}"
