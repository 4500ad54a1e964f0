"""Choosing the LM weights: the grid's order by WER or by CER (`tune-lm --by`).

.venv/bin/python -m pytest tests/test_tune_lm.py -q
"""

from __future__ import annotations

import pytest

from speechswarm.errors import UsageError
from speechswarm.evaluate import TunePoint, best_first

# Fewer word errors at a higher LM weight, fewer character errors at a lower one: what the
# demo's dev split showed (alpha 2: WER 59.1 %, CER 31.0 %; alpha 1.5: 59.8 %, 30.3 %).
GRID = [
    TunePoint(1.0, 0.0, wer=0.615, cer=0.304),
    TunePoint(1.5, 0.0, wer=0.598, cer=0.303),
    TunePoint(2.0, 0.0, wer=0.591, cer=0.310),
    TunePoint(2.0, 1.0, wer=0.591, cer=0.314),
]


def test_by_wer_then_cer():
    assert [(p.alpha, p.beta) for p in best_first(GRID, "wer")] == [
        (2.0, 0.0), (2.0, 1.0), (1.5, 0.0), (1.0, 0.0)
    ]  # fmt: skip


def test_by_cer_then_wer():
    assert [(p.alpha, p.beta) for p in best_first(GRID, "cer")] == [
        (1.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 1.0)
    ]  # fmt: skip


def test_another_metric_is_refused():
    with pytest.raises(UsageError, match="wer or cer"):
        best_first(GRID, "loss")
