"""Word timestamps through the public API and `speechswarm transcribe --json`.

    .venv/bin/python -m pytest tests/test_word_timestamps.py -q

The hand-computed math is in tests/decode/test_timestamps.py; here the `overfit_run` model
(tests/conftest.py), which reads its 6 memorised utterances as words, checks that timed
transcripts agree with plain ones for greedy and beam search, and that the times make sense.
"""

from __future__ import annotations

import json

import pytest

import speechswarm
from speechswarm.data.manifest import read_manifest
from speechswarm.decode import DecoderOptions
from speechswarm.transcribe import transcribe_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def files(overfit_run):
    return [u.audio for u in read_manifest(overfit_run.manifest)]


def check_timed(timed, texts):
    assert [t.text for t in timed] == texts
    for t in timed:
        assert [w.word for w in t.words] == t.text.split()
        ends = [0.0] + [x for w in t.words for x in (w.start, w.end)] + [t.duration]
        assert ends == sorted(ends)  # words in order, inside the audio, none overlapping
        assert all(w.end > w.start and 0 < w.confidence <= 1 for w in t.words)


@pytest.mark.parametrize("kind", ["greedy", "beam"])
def test_recognize_batch_times_the_words_of_transcribe_batch(overfit_run, files, kind):
    asr = speechswarm.load(overfit_run.checkpoint, decoder=DecoderOptions(kind))
    assert asr.frame_seconds == pytest.approx(0.02)  # 10 ms hop x time strides 2 x 1
    texts = asr.transcribe_batch(files)
    assert all(texts)
    check_timed(asr.recognize_batch(files), texts)


def test_beam_search_with_an_lm_times_its_words(overfit_run, files, tmp_path):
    from speechswarm.decode.lm import build_lm

    utts = read_manifest(overfit_run.manifest)
    build_lm([u.text.split() for u in utts], 3, tmp_path / "lm.arpa")
    options = DecoderOptions("beam", lm=tmp_path / "lm.arpa")
    asr = speechswarm.load(overfit_run.checkpoint, decoder=options)
    greedy = speechswarm.load(overfit_run.checkpoint).recognize_batch(files)
    timed = asr.recognize_batch(files)
    check_timed(timed, asr.transcribe_batch(files))
    for a, b in zip(timed, greedy, strict=True):  # where both hear a word, about the same time
        same = [(x, y) for x, y in zip(a.words, b.words, strict=False) if x.word == y.word]
        assert all(abs(x.start - y.start) <= 0.1 for x, y in same)


def test_memorised_words_are_confident(overfit_run, files):
    asr = speechswarm.load(overfit_run.checkpoint)
    words = [w for t in asr.recognize_batch(files) for w in t.words]
    assert sum(w.confidence for w in words) / len(words) > 0.5


def test_transcribe_json_lines_carry_words(overfit_run, files, capsys):
    assert transcribe_files(files[:2], checkpoint=overfit_run.checkpoint, as_json=True)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in rows] == files[:2]
    for r in rows:
        assert set(r) == {"file", "text", "words", "duration"}
        assert [w["word"] for w in r["words"]] == r["text"].split()
        assert set(r["words"][0]) == {"word", "start", "end", "confidence"}


def test_eval_writes_one_line_per_utterance_with_timings(overfit_run, tmp_path):
    from speechswarm.evaluate import evaluate_checkpoint

    out = tmp_path / "utts.jsonl"
    kwargs = {"device": "cpu", "precision": "fp32"}
    plain = evaluate_checkpoint(overfit_run.checkpoint, str(overfit_run.manifest), **kwargs)
    timed = evaluate_checkpoint(
        overfit_run.checkpoint, str(overfit_run.manifest), utterances_out=out, **kwargs
    )
    assert (timed.wer, timed.cer) == (plain.wer, plain.cer)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(s.id for s in plain.scores)
    for r in rows:
        assert {"ref", "hyp", "wer", "cer", "timings"} <= set(r)
        assert [w["word"] for w in r["timings"]] == r["hyp"].split()
