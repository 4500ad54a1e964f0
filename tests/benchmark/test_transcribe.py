"""`speechswarm bench transcribe`: batching arithmetic on a fake recognizer, and a real run
whose audio total and rates are checked against the files it wrote."""

from __future__ import annotations

import json

import pytest
import torch

import speechswarm.cli as cli
from speechswarm.benchmark.transcribe import (
    file_durations,
    format_transcribe_report,
    run_transcribe_bench,
    time_transcription,
    untrained_checkpoint,
)
from speechswarm.build import cpu_has_bf16
from speechswarm.inference import Recognizer

SMALL_MODEL = [
    "model.conv_channels=[4,4]",
    "model.rnn_hidden=32",
    "model.rnn_layers=1",
    "train.inter_ctc_layers=[]",
]


def test_file_durations_cover_the_total():
    d = file_durations(60.0, seed=3)
    assert d.sum() >= 60.0 and d[:-1].sum() < 60.0  # stops at the first file past the total
    assert d.min() >= 2.0 and d.max() <= 10.0


class FakeRecognizer:
    def __init__(self):
        self.calls: list[list[str]] = []

    def transcribe_batch(self, files):
        self.calls.append(list(files))
        return [""] * len(files)


def test_time_transcription_groups_files_and_warms_up_once():
    fake = FakeRecognizer()
    files = [f"f{i}" for i in range(5)]
    wall, cpu = time_transcription(fake, files, batch_size=2, repeats=2)
    assert wall >= 0 and cpu >= 0
    groups = [["f0", "f1"], ["f2", "f3"], ["f4"]]
    assert fake.calls == [groups[0]] + groups + groups  # warm-up, then two timed passes


def test_untrained_checkpoint_loads_into_the_recognizer():
    ckpt = untrained_checkpoint("tiny", SMALL_MODEL)
    asr = Recognizer(ckpt, device="cpu", precision="fp32")
    assert asr.model.settings()["rnn_hidden"] == 32
    assert isinstance(asr.transcribe(torch.zeros(16000).numpy(), sample_rate=16000), str)


def test_run_reports_consistent_rates(monkeypatch, capsys):
    if "speechswarm.benchmark.cli" not in cli.COMMAND_MODULES:  # until the lead registers it
        monkeypatch.setattr(
            cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "speechswarm.benchmark.cli")
        )
    threads = torch.get_num_threads()
    argv = ["bench", "transcribe", "--seconds", "8", "--batch-sizes", "1", "3", "--repeats", "1"]
    assert cli.main([*argv, "--json", *SMALL_MODEL]) == 0
    r = json.loads(capsys.readouterr().out)
    assert torch.get_num_threads() == threads  # restored after the one-thread run
    durations = file_durations(8.0)
    assert r["files"] == len(durations) and r["threads"] == 1
    assert r["audio_seconds"] == pytest.approx(durations.sum(), abs=1e-3 * len(durations))
    precisions = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]
    assert [(x["precision"], x["batch_size"]) for x in r["results"]] == [
        (p, b) for p in precisions for b in (1, 3)
    ]
    for x in r["results"]:
        assert x["rtf"] == pytest.approx(x["seconds"] / r["audio_seconds"])
        assert x["x_real_time"] == pytest.approx(1 / x["rtf"])
        assert x["x_real_time_cpu"] == pytest.approx(r["audio_seconds"] / x["cpu_seconds"])
        assert 0 < x["cpu_seconds"] <= x["seconds"] + 1e-3  # one thread: CPU <= wall
    assert r["best"] == max(r["results"], key=lambda x: x["x_real_time"])
    text = format_transcribe_report(r)
    assert f"best: {r['best']['x_real_time']:.0f}x real time, " in text


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint .*no such file"):
        run_transcribe_bench(checkpoint=str(tmp_path / "none.pt"))
    with pytest.raises(ValueError, match="--seconds must be > 0"):
        run_transcribe_bench(seconds=0)
