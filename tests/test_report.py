"""Metrics file, TensorBoard mirror, plots and the run summary."""

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from speechswarm import report
from speechswarm.plots import moving_average, plot_run, series
from speechswarm.report import MetricsLogger, format_duration, read_metrics, write_summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def _strict_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_logger_writes_flushed_strict_jsonl(tmp_path, monkeypatch):
    monkeypatch.setattr(report.time, "monotonic", FakeClock(100.0, 101.5, 104.0, 104.25))
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(10, epoch=0.5, train_loss=torch.tensor(41.5), lr=np.float32(0.5))
    logger.log(20, epoch=1, train_loss=float("nan"), skipped=2)
    logger.log(20, dev_wer=0.25, dev_cer=0.125)
    records = _strict_lines(tmp_path / "metrics.jsonl")  # before close: already flushed
    assert logger.read() == records
    logger.close()
    assert logger.read() == records  # the loop reads them back after closing
    assert records == [
        {"step": 10, "wall_time": 1.5, "epoch": 0.5, "train_loss": 41.5, "lr": 0.5},
        {"step": 20, "wall_time": 4.0, "epoch": 1, "train_loss": None, "skipped": 2},
        {"step": 20, "wall_time": 4.25, "epoch": None, "dev_wer": 0.25, "dev_cer": 0.125},
    ]
    walls = [r["wall_time"] for r in records]
    assert walls == sorted(walls)


def test_logger_refuses_bad_scalars(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(TypeError, match="'note' must be a number"):
            logger.log(1, note="hello")
        with pytest.raises(ValueError, match="reserved"):
            logger.log(1, wall_time=3.0)


def test_resume_drops_redone_steps_and_continues_wall_time(tmp_path, monkeypatch):
    monkeypatch.setattr(report.time, "monotonic", FakeClock(0.0, 1.0, 2.0, 3.0, 50.0, 52.0))
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in (1, 2, 3):
            logger.log(step, train_loss=float(step))
    with MetricsLogger(tmp_path, tensorboard=False, resume_step=2) as logger:
        logger.log(3, train_loss=30.0)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["wall_time"], r["train_loss"]) for r in records] == [
        (1, 1.0, 1.0),
        (2, 2.0, 2.0),
        (3, 4.0, 30.0),  # 2.0 from before the resume + 2.0 after it
    ]


def test_tensorboard_mirror_holds_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as logger:
        logger.log(5, train_loss=2.5)
        logger.log(9, train_loss=1.25)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(5, 2.5), (9, 1.25)]


def test_tensorboard_thread_write_errors_are_one_warning_line(tmp_path, caplog, monkeypatch):
    """TensorBoard's own writer thread fails (a read-only folder, a full disk): one warning,
    no thread traceback; other threads' errors still reach the hook that was there."""
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    before = []
    monkeypatch.setattr(threading, "excepthook", lambda args: before.append(args.exc_type))
    with MetricsLogger(tmp_path):  # wraps the hook that is there
        pass

    class Failing(_AsyncWriterThread):
        def __init__(self) -> None:
            threading.Thread.__init__(self, daemon=True)

        def run(self) -> None:
            raise PermissionError(13, "Permission denied", str(tmp_path / "tb" / "events"))

    with caplog.at_level(logging.WARNING, logger="speechswarm.report"):
        for thread in (Failing(), threading.Thread(target=lambda: 1 / 0)):
            thread.start()
            thread.join()
    warnings = [r.getMessage() for r in caplog.records]
    events = tmp_path / "tb" / "events"
    assert warnings == [f"TensorBoard stopped writing: [Errno 13] Permission denied: '{events}'"]
    assert before == [ZeroDivisionError]


def test_missing_tensorboard_is_said_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    monkeypatch.setattr(report, "_tb_warned", False)
    with caplog.at_level(logging.WARNING, logger="speechswarm.report"):
        for name in ("a", "b"):
            with MetricsLogger(tmp_path / name) as logger:
                logger.log(1, train_loss=1.0)
    assert [r.message.startswith("TensorBoard logging off") for r in caplog.records] == [True]
    assert read_metrics(tmp_path / "b" / "metrics.jsonl")[0]["train_loss"] == 1.0


def test_read_metrics_drops_cut_last_line_and_names_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "wall_time": 0.1}\n{"step": 2, "wall_ti')
    assert read_metrics(path) == [{"step": 1, "wall_time": 0.1}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
        read_metrics(path)


def test_moving_average_hand_computed():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    np.testing.assert_allclose(moving_average(values, 3), [1, 2, 3, 17 / 3, 10])
    np.testing.assert_allclose(moving_average(values, 5), [1, 2, 4, 17 / 3, 10])
    np.testing.assert_allclose(moving_average(values, 1), values)


def test_series_sorts_by_step_and_keeps_last_repeat():
    metrics = [
        {"step": 2, "wall_time": 2.0, "dev_wer": 0.5},
        {"step": 1, "wall_time": 1.0, "dev_wer": 0.9},
        {"step": 2, "wall_time": 7.0, "dev_wer": 0.4},  # redone after a resume
        {"step": 3, "wall_time": 8.0, "train_loss": 1.0},
        {"step": 4, "wall_time": 9.0, "dev_wer": None},
    ]
    steps, walls, values = series(metrics, "dev_wer")
    assert steps.tolist() == [1, 2] and walls.tolist() == [1.0, 7.0]
    assert values.tolist() == [0.9, 0.4]


def _synthetic_run(n_steps: int = 400, dev: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    metrics = []
    for step in range(0, n_steps, 5):
        wall = 0.8 * step
        loss = 200 * math.exp(-step / 60) + 10 + rng.normal(0, 1)
        metrics.append({"step": step, "wall_time": wall, "train_loss": loss, "lr": 1e-3})
        if dev and step % 50 == 0 and step:
            wer = 0.3 + 0.6 * math.exp(-step / 100)
            metrics.append(
                {
                    "step": step,
                    "wall_time": wall + 1,
                    "dev_loss": loss + 5,
                    "dev_wer": wer,
                    "dev_cer": wer / 3,
                }
            )
    return metrics


def test_plot_run_writes_readable_pngs(tmp_path):
    paths = plot_run(_synthetic_run(), tmp_path / "plots")
    names = [
        "overview",
        "loss_vs_step",
        "loss_vs_time",
        "wer_cer_vs_step",
        "wer_cer_vs_time",
        "lr_vs_step",
    ]
    assert paths == [tmp_path / "plots" / f"{n}.png" for n in names]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000, path


def test_plot_run_skips_what_was_not_logged(tmp_path):
    metrics = _synthetic_run(60, dev=False)
    paths = plot_run(metrics, tmp_path)
    names = [
        "overview.png",
        "loss_vs_step.png",
        "loss_vs_time.png",
        "lr_vs_step.png",
    ]
    assert [p.name for p in paths] == names
    assert plot_run([], tmp_path / "empty") == []
    # The loop may log the train loss as plain `loss`.
    renamed = [{("loss" if k == "train_loss" else k): v for k, v in r.items()} for r in metrics]
    assert [p.name for p in plot_run(renamed, tmp_path / "renamed")] == names


def test_format_duration():
    assert format_duration(42.54) == "42.5 s"
    assert format_duration(125) == "2 min 05 s"
    assert format_duration(3723) == "1 h 02 min 03 s"


def test_write_summary_has_the_numbers(tmp_path):
    summary = {
        "data_hours": 12.4,
        "steps": 3102,
        "epochs": 10,
        "wall_time_s": 2705.0,
        "audio_sec_per_sec": 16.5,
        "best_dev_wer": 0.2612,
        "best_dev_cer": 0.1045,
        "test_wer": 0.2701,
        "test_cer": None,
        "best_checkpoint": Path("checkpoints/best.pt"),
        "plots": [tmp_path / "plots" / "overview.png"],  # linked relative to the run
        "device": "cpu",
    }
    md = write_summary(tmp_path, summary)
    text = md.read_text()
    for expected in [
        "| Training audio | 12.40 h |",
        "| Optimizer steps | 3,102 |",
        "| Epochs | 10 |",
        "| Wall time | 45 min 05 s (2,705 s) |",
        "| Throughput | 16.5 audio s / wall s |",
        "| Best dev WER | 26.12 % |",
        "| Best dev CER | 10.45 % |",
        "| Test WER | 27.01 % |",
        "| Test CER | n/a |",
        "| Best checkpoint | `checkpoints/best.pt` |",
        "| device | cpu |",
        "![overview](plots/overview.png)",
    ]:
        assert expected in text, expected
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == dict(
        summary,
        best_checkpoint="checkpoints/best.pt",
        plots=[str(tmp_path / "plots" / "overview.png")],
    )


def test_write_summary_knows_the_loop_keys(tmp_path):
    summary = {
        "stop_reason": "max_steps",
        "train_hours": 0.5,
        "train_minutes": 2.5,
        "audio_seconds_per_second": 1234.5,
        "skipped_utterances": 3,
    }
    text = write_summary(tmp_path, summary).read_text()
    assert "| Stopped because | max_steps |" in text
    assert "| Training audio | 0.50 h |" in text
    assert "| Training time | 2 min 30 s (2.5 min) |" in text
    assert "| Throughput | 1,234.5 audio s / wall s |" in text
    assert "| Skipped utterances | 3 |" in text


def test_pct_formats_fractions_and_says_when_there_is_none():
    assert report.pct(0.1234) == "12.3 %"
    assert report.pct(0.1234, 2) == "12.34 %"
    assert report.pct(1.0) == "100.0 %"
    assert report.pct(None) == report.pct(float("nan")) == report.pct(math.inf) == "n/a"
