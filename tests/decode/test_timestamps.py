"""Word timestamps from a CTC frame path, against hand-computed answers.

.venv/bin/python -m pytest tests/decode/test_timestamps.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from speechswarm.decode import GreedyDecoder
from speechswarm.decode.timestamps import (
    WordTiming,
    frame_seconds,
    timed_transcripts,
    token_runs,
    word_spans,
    word_timings,
)

CHARS = ["<blank>", "a", "b", " "]
PATH = [0, 1, 1, 0, 2, 3, 3, 0, 1, 0]  # "ab a" at 20 ms frames


def chosen_log_probs() -> np.ndarray:
    """(10, 4) log-posteriors: 0.25 everywhere except the peaks the tests read."""
    probs = np.full((10, 4), 0.25)
    probs[1, 1], probs[2, 1] = 0.6, 0.8  # 'a' of "ab": peak 0.8
    probs[4, 2] = 0.5  # 'b'
    probs[8, 1] = 0.9  # the lone 'a'
    return np.log(probs)


def test_frame_seconds_is_hop_times_reduction_over_rate():
    assert frame_seconds(160, 16000, 2) == pytest.approx(0.02)
    assert frame_seconds(160, 16000, 4) == pytest.approx(0.04)
    with pytest.raises(ValueError):
        frame_seconds(0, 16000, 2)


def test_token_runs_merge_repeats_and_split_at_blanks():
    assert token_runs(PATH) == [(1, 1, 3), (2, 4, 5), (3, 5, 7), (1, 8, 9)]
    assert token_runs([0, 3, 3, 0, 3, 5]) == [(3, 1, 3), (3, 4, 5), (5, 5, 6)]
    assert token_runs([]) == [] and token_runs([0, 0]) == []


def test_word_spans_split_at_spaces_and_sentencepiece_word_starts():
    assert word_spans([1, 2, 3, 1], CHARS) == [("ab", [0, 1]), ("a", [3])]
    assert word_spans([3, 1, 3, 3], CHARS) == [("a", [1])]  # leading, doubled spaces
    pieces = ["<blank>", "\u2581he", "llo", "\u2581wor", "ld", "<unk>"]
    assert word_spans([1, 2, 3, 5, 4], pieces) == [("hello", [0, 1]), ("world", [2, 4])]


def test_word_timings_hand_computed():
    words = word_timings(PATH, chosen_log_probs(), CHARS, 0.02)
    assert [w.word for w in words] == ["ab", "a"]
    ab, a = words
    # "ab": first frame of 'a' (1) to the end of 'b' (5): 0.02 .. 0.10 s
    assert (ab.start, ab.end) == pytest.approx((0.02, 0.10))
    assert ab.confidence == pytest.approx(math.sqrt(0.8 * 0.5))  # geometric mean of peaks
    assert (a.start, a.end, a.confidence) == pytest.approx((0.16, 0.18, 0.9))


def test_word_timings_clip_to_the_duration_and_ignore_padding_ids():
    a = word_timings(PATH, chosen_log_probs(), CHARS, 0.02, duration=0.17)[-1]
    assert a.end == pytest.approx(0.17)
    padded = [*PATH[:9], -1]  # flashlight-style padding id
    assert [w.word for w in word_timings(padded, chosen_log_probs(), CHARS, 0.02)] == ["ab", "a"]


def test_timed_transcripts_from_the_greedy_path_match_its_text():
    log_probs = np.full((1, 10, 4), np.log(0.1))
    for t, tok in enumerate(PATH):  # the argmax path is PATH
        log_probs[0, t, tok] = np.log(0.7)

    class Chars:
        blank, tokens = 0, CHARS

        def decode(self, ids):
            return " ".join("".join(CHARS[i] for i in ids).split())

    (got,) = timed_transcripts(GreedyDecoder(), Chars(), log_probs, np.array([10]), 0.02, [0.2])
    assert got.text == "ab a" and got.duration == 0.2
    assert got.words == [
        WordTiming("ab", 0.02, 0.10, pytest.approx(0.7)),
        WordTiming("a", 0.16, 0.18, pytest.approx(0.7)),
    ]
    assert got.to_json()["words"][0] == {"word": "ab", "start": 0.02, "end": 0.1, "confidence": 0.7}
