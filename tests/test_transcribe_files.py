"""Transcribing files: batches by length, answers in the order given, errors per file.

    .venv/bin/python -m pytest tests/test_transcribe_files.py -q

The command as a user types it (with a trained checkpoint) is in tests/test_cli.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechswarm.errors import UsageError
from speechswarm.transcribe import open_recognizer, transcribe_paths


class LengthRecognizer:
    """Stands in for a Recognizer: 'transcribes' a wave as its sample count; records batches."""

    sample_rate = 16000

    def __init__(self):
        self.batches: list[list[int]] = []

    def transcribe_batch(self, waves):
        self.batches.append([len(w) for w in waves])
        return [str(len(w)) for w in waves]


def test_transcribe_paths_batches_by_length_and_answers_in_the_given_order(tmp_path):
    seconds = [0.5, 0.2, 0.9, 0.1, 0.7]
    paths = []
    for i, s in enumerate(seconds):
        paths.append(str(tmp_path / f"{i}.flac"))
        sf.write(paths[-1], np.zeros(int(s * 16000), np.float32), 16000, format="FLAC")
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    given = [paths[0], str(tmp_path / "missing.flac"), *paths[1:3], str(corrupt), *paths[3:]]
    asr = LengthRecognizer()
    rows = list(transcribe_paths(asr, given, batch_size=2))
    assert [r[0] for r in rows] == given
    samples = [int(s * 16000) for s in seconds]
    # shortest first, two at a time: 0.1 s + 0.2 s, 0.5 s + 0.7 s, then 0.9 s
    assert asr.batches == [[1600, 3200], [8000, 11200], [14400]]
    texts = {path: text for path, text, _, error in rows if error is None}
    assert texts == {p: str(n) for p, n in zip(paths, samples, strict=True)}
    for _, text, secs, error in rows:
        if error is None:
            assert secs == pytest.approx(int(text) / 16000)
    errors = {path: error.reason for path, _, _, error in rows if error is not None}
    assert errors == {given[1]: "missing_file", str(corrupt): "unreadable_audio"}
    # Nothing readable: every error still comes out, in order.
    assert [r[0] for r in transcribe_paths(asr, [given[1], str(corrupt)], 4)] == [
        given[1],
        str(corrupt),
    ]


def test_arguments_that_do_not_fit_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="--batch-size must be >= 1"):
        list(transcribe_paths(LengthRecognizer(), [], batch_size=0))
    with pytest.raises(UsageError, match="not both or neither"):
        open_recognizer()
    with pytest.raises(UsageError, match="--precision applies to --checkpoint"):
        open_recognizer(onnx=tmp_path / "model.onnx", precision="bf16")
