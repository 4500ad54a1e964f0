"""A corpus with broken entries of every kind: `validate` names each, loading skips and lists
each, `train` trains on the rest (the slow test runs the commands as a user types them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechswarm.chaos.corpus import EXPECTED, FAULTS, corrupt_manifest, run_corpus_campaign
from speechswarm.data.dataset import SpeechDataset
from speechswarm.data.manifest import read_manifest
from speechswarm.data.tokenizer import CharTokenizer
from speechswarm.data.validate import validate_utterances

AUDIO_FAULTS = {"truncated_flac", "zero_byte_file", "missing_file", "non_audio_bytes",
                "nan_samples", "header_rate_lie"}  # fmt: skip


@pytest.fixture(scope="module")
def broken(synth_corpus, tmp_path_factory):
    """(manifest path, corruptions): the synth corpus's train split, one entry per fault."""
    return corrupt_manifest(synth_corpus.train, tmp_path_factory.mktemp("broken"), fraction=0.1)


def test_every_fault_is_dealt_once_and_the_source_is_untouched(broken, synth_corpus):
    path, corruptions = broken
    assert sorted(c.fault for c in corruptions) == sorted(FAULTS)
    source = {u.id: u for u in read_manifest(synth_corpus.train)}
    file_faults = AUDIO_FAULTS | {"rate_8k", "silence"}
    changed = {c.id for c in corruptions if c.fault in file_faults}
    for u in read_manifest(path):
        assert (u.audio.startswith(str(path.parent / "bad"))) == (u.id in changed), u.id
    assert all(Path(u.audio).stat().st_size > 100 for u in source.values())


def test_validate_names_each_fault_by_its_reason(broken):
    path, corruptions = broken
    utts = read_manifest(path)
    report = validate_utterances(utts, CharTokenizer(), max_duration=20.0, workers=1)
    by_id = {}
    for p in report.problems:
        by_id.setdefault(p.id, []).append(p.reason)
    for c in corruptions:
        got = by_id.get(c.id, [])
        if c.expected == "ok":
            assert not got, (c.fault, got)
        else:
            assert c.expected in got, (c.fault, got)
    broken_ids = {c.id for c in corruptions}
    assert set(by_id) <= broken_ids  # nothing good reported
    assert len(report.ok) == len(utts) - sum(e != "ok" for e in EXPECTED.values())


def test_a_nan_or_negative_duration_is_a_problem_not_a_crash(broken):
    path, corruptions = broken
    ids = {c.id for c in corruptions if c.fault in ("duration_nan", "duration_negative")}
    utts = [u for u in read_manifest(path) if u.id in ids]
    for check_audio in (True, False):
        report = validate_utterances(utts, CharTokenizer(), check_audio=check_audio, workers=1)
        assert [p.reason for p in report.problems] == ["bad_duration"] * 2
        assert "not a finite number >= 0" in report.problems[0].detail


def test_the_dataset_skips_and_lists_every_file_that_fails_to_load(broken, tmp_path):
    path, corruptions = broken
    fault_of = {c.id: c.fault for c in corruptions if c.fault in AUDIO_FAULTS}
    utts = [u for u in read_manifest(path) if u.id in fault_of or u.id.endswith("-0000")]
    log = tmp_path / "skipped.jsonl"
    dataset = SpeechDataset(utts, CharTokenizer(), 16000, skip_log=log)
    samples = [dataset[i] for i in range(len(dataset))]
    failed = {u.id for u, s in zip(utts, samples, strict=True) if s is None}
    assert failed == set(fault_of)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    reasons = {r["id"]: r["reason"] for r in records}
    assert reasons == {i: EXPECTED[f] for i, f in fault_of.items()}
    assert all(r["detail"] and r["epoch"] == 0 for r in records)


@pytest.mark.slow  # ~30 s: validate and two one-epoch training runs, as subprocesses
def test_commands_on_a_broken_corpus_report_every_fault_and_lose_nothing(synth_corpus, tmp_path):
    result = run_corpus_campaign(synth_corpus.train, tmp_path / "c", log=lambda *_: None)
    usable = result["utterances"] - result["expected_unusable"]
    names = [c["name"] for c in result["commands"]]
    assert names == ["validate", "train (data.validate=true)", "train (data.validate=false)"]
    for command in result["commands"]:
        assert not command["traceback"], command["name"]
        assert command["caught"] == result["broken"], (command["name"], command["found"])
        assert command["lost_good"] == [] and command["used"] == usable, command["name"]
        assert command["nonfinite_losses"] == 0
    assert [c["returncode"] for c in result["commands"]] == [1, 0, 0]
    assert (tmp_path / "c" / "train-validate-false" / "skipped_train.jsonl").is_file()
