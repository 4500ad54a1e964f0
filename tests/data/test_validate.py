"""validate_utterances on a tree with one file per failure: each gets exactly its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from speechswarm.data.manifest import Utterance
from speechswarm.data.tokenizer import CharTokenizer
from speechswarm.data.validate import (
    ctc_min_frames,
    output_frames,
    validate_utterances,
)

SR = 16000


def _tone(seconds: float, rate: int = SR) -> np.ndarray:
    return (0.3 * np.sin(np.arange(round(seconds * rate)) * 0.05)).astype(np.float32)


@pytest.fixture
def tree(tmp_path):
    """(utterances, expected reason per id; None = ok)."""
    d = tmp_path
    sf.write(d / "good.wav", _tone(1.0), SR, subtype="PCM_16")
    sf.write(d / "good.flac", _tone(0.5), SR, subtype="PCM_16")
    sf.write(d / "cd.wav", np.stack([_tone(1.0, 44100)] * 2, 1), 44100, subtype="PCM_16")
    for name, fmt in (("cut.flac", "FLAC"), ("cut.wav", "WAV")):
        sf.write(d / f"full_{name}", _tone(1.0), SR, format=fmt, subtype="PCM_16")
        data = (d / f"full_{name}").read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    (d / "zero_bytes.wav").write_bytes(b"")
    sf.write(d / "no_frames.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")
    nan = _tone(0.5)
    nan[10] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(d / "short.wav", _tone(0.1), SR, subtype="PCM_16")  # T' = ceil(10 / 2) = 5

    cases = [  # (id, file, duration, text, expected reason)
        ("good", "good.wav", 1.0, "hello world", None),
        ("good2", "good.flac", 0.5, "a b", None),
        ("cd", "cd.wav", 1.0, "stereo at forty four k", None),
        ("trim", "good.wav", 0.5, "first half", None),  # note: trimmed
        ("boundary", "short.wav", 0.1, "aaa", None),  # 3 tokens + 2 repeats = 5 = T'
        ("missing", "nope.wav", 1.0, "x", "missing_file"),
        ("cutflac", "cut.flac", 1.0, "x", "unreadable_audio"),
        ("cutwav", "cut.wav", 1.0, "x", "unreadable_audio"),
        ("zerobytes", "zero_bytes.wav", 1.0, "x", "unreadable_audio"),
        ("noframes", "no_frames.wav", 0.0, "x", "empty_audio"),
        ("nan", "nan.wav", 0.5, "x", "nonfinite_samples"),
        ("digits", "good.wav", 1.0, "room 101", "text_out_of_alphabet"),
        ("umlaut", "good.wav", 1.0, "über", "text_out_of_alphabet"),
        ("empty", "good.wav", 1.0, "  ", "empty_text"),
        ("good", "good.flac", 0.5, "again", "duplicate_id"),
        ("tooshort", "short.wav", 0.1, "abcdef", "too_short_for_ctc"),
        ("repeats", "short.wav", 0.1, "aaaa", "too_short_for_ctc"),  # 4 + 3 = 7 > 5
        ("stale", "good.flac", 3.0, "x", "duration_mismatch"),
    ]
    utts = [Utterance(uid, str(d / f), dur, text) for uid, f, dur, text, _ in cases]
    return utts, [c[4] for c in cases]


def test_each_bad_utterance_gets_exactly_its_reason(tree):
    utts, expected = tree
    report = validate_utterances(utts, CharTokenizer(), workers=2)
    for k, u in enumerate(utts):
        got = [p.reason for p in report.problems if (p.id, p.audio) == (u.id, u.audio)]
        assert got == ([expected[k]] if expected[k] else []), u.id
    assert len(report.problems) == sum(e is not None for e in expected)
    assert [u.id for u in report.ok] == ["good", "good2", "cd", "trim", "boundary"]
    assert report.notes == {"resampled": 1, "downmixed": 1, "trimmed": 1}


def test_details_name_what_is_wrong(tree):
    utts, _ = tree
    report = validate_utterances(utts, CharTokenizer(), workers=1)
    detail = {p.id: p.detail for p in report.problems if p.reason != "duplicate_id"}
    assert "'0' '1'" in detail["digits"] and "'ü'" in detail["umlaut"]
    assert "5 output frames" in detail["tooshort"] and "needs 6" in detail["tooshort"]
    assert "needs 7" in detail["repeats"]
    assert "3.00 s" in detail["stale"] and "0.50 s" in detail["stale"]
    dup = next(p for p in report.problems if p.reason == "duplicate_id")
    assert dup.audio.endswith("good.flac") and "record 1" in dup.detail


def test_summary_json_and_atomic_write(tree, tmp_path):
    utts, _ = tree
    report = validate_utterances(utts, CharTokenizer())
    assert report.summary() == (
        "5 utts (3.1 s) ok, 13 skipped: unreadable_audio 3, text_out_of_alphabet 2, "
        "too_short_for_ctc 2, missing_file 1, empty_audio 1, nonfinite_samples 1, "
        "empty_text 1, duplicate_id 1, duration_mismatch 1; "
        "notes: resampled 1, downmixed 1, trimmed 1"
    )
    report.write(tmp_path / "out" / "report.json")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["num_utts"] == 18 and data["num_ok"] == 5 and data["num_skipped"] == 13
    assert data["problem_counts"]["unreadable_audio"] == 3
    assert {p["reason"] for p in data["problems"]} >= {"missing_file", "duplicate_id"}
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "report.json"]


def test_without_audio_checks_only_text_and_ids(tree):
    utts, _ = tree
    report = validate_utterances(utts, CharTokenizer(), check_audio=False)
    assert sorted(report.problem_counts()) == [
        "duplicate_id",
        "empty_text",
        "text_out_of_alphabet",
        "too_short_for_ctc",
    ]
    assert report.notes == {"resampled": 0, "downmixed": 0, "trimmed": 0}


def test_output_frames_hand_computed():
    assert output_frames(1.0, 100.0, 2) == 50
    assert output_frames(0.3, 100.0, 2) == 15  # 0.3 * 100 is 30.000000000000004 in floats
    assert output_frames(0.105, 100.0, 2) == 6  # ceil(10.5 / 2)
    assert output_frames(0.01, 100.0, 4) == 1
    assert output_frames(2.0, 50.0, 3) == 34  # ceil(100 / 3)


def test_ctc_min_frames_hand_computed():
    tok = CharTokenizer()
    assert ctc_min_frames(tok.encode("hello")) == 6  # l,l repeat needs a blank between
    assert ctc_min_frames([1, 1, 1]) == 5
    assert ctc_min_frames([1, 2, 1]) == 3
    assert ctc_min_frames([]) == 0


class _SubwordLike:
    """A tokenizer without `alphabet` that maps unknown characters to <unk> (id 1)."""

    tokens = ["<blank>", "<unk>", "▁", "a", "b"]

    def encode(self, text):
        table = {" ": 2, "a": 3, "b": 4}
        return [table.get(c, 1) for c in text]


def test_out_of_alphabet_for_subword_tokenizers(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(1.0), SR, subtype="PCM_16")
    utts = [
        Utterance("x", str(tmp_path / "a.wav"), 1.0, "ab ba"),
        Utterance("y", str(tmp_path / "a.wav"), 1.0, "abc é"),
    ]
    report = validate_utterances(utts, _SubwordLike(), check_audio=False)
    assert [u.id for u in report.ok] == ["x"]
    (p,) = report.problems
    assert p.reason == "text_out_of_alphabet" and "'c' 'é'" in p.detail
