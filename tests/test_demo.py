"""`speechswarm demo` end to end on the smallest built-in corpus and a ~30k-parameter model.

.venv/bin/python -m pytest tests/test_demo.py -q
"""

from __future__ import annotations

import json
import sys

import pytest

from speechswarm.data.manifest import Utterance, read_manifest, write_manifest
from speechswarm.decode.lm import read_arpa
from speechswarm.demo import LM_ALPHAS, LM_BEAM_SIZE, LM_BETAS, build_demo_lm, run_demo


@pytest.mark.slow
def test_demo_trains_tests_on_unseen_voices_and_reports_greedy_and_lm(
    synth_corpus, tiny_overrides, tmp_path, capsys
):
    out = tmp_path / "demo"
    code = run_demo(
        out,
        synth_corpus.dir,
        minutes=0.1,
        hours=0.02,  # the fixture's corpus: cached, nothing is synthesised again
        extra_overrides=(*tiny_overrides, "train.max_steps=3"),
    )
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "demo_results.json").read_text())
    assert results["steps"] == 3 and results["stop_reason"] == "max_steps"
    assert results["test_utterances"] == len(read_manifest(synth_corpus.test))
    for key in ("test_cer", "test_wer", "greedy_cer", "greedy_wer"):
        assert results[key] >= 0
    persons = results["by_person"]
    assert len(persons) >= len(results["by_engine"])  # each engine has one or more persons
    assert sum(r["utterances"] for r in persons.values()) == results["test_utterances"]
    assert "by person (all test persons unseen" in printed
    engines = set(results["by_engine"])
    assert {"espeak", "flite", "festival"} <= engines <= {"espeak", "flite", "festival", "kokoro", "piper"}  # fmt: skip
    assert f"CER {results['test_cer']:.1%} with the LM" in printed
    assert "heard:" in printed and "model:" in printed
    assert read_arpa(results["lm"]["path"]).order == 3
    assert results["lm"]["alpha"] in LM_ALPHAS  # tuned on dev from the grid
    assert results["lm"]["beta"] in LM_BETAS and results["lm"]["beam_size"] == LM_BEAM_SIZE
    assert (out / "checkpoints" / "best.pt").is_file()
    # The demo tests the final weights (the one-cycle schedule ends with the budget).
    assert results["checkpoint"] == str(out / "checkpoints" / "last.pt")


def _held_out_manifests(tmp_path) -> dict:
    manifests = {}
    for split, text in (("dev", "a dog ran far"), ("test", "birds sing loud")):
        utt = Utterance(f"{split}1", "x.flac", 1.0, text, "spk")
        write_manifest(tmp_path / f"{split}.jsonl", [utt])
        manifests[split] = tmp_path / f"{split}.jsonl"
    return manifests


def test_demo_lm_never_sees_a_dev_or_test_sentence(tmp_path, monkeypatch, capsys):
    import speechswarm.data.sentences as sentences
    import speechswarm.demo as demo

    texts = ["the cat sat", "a dog ran far", "birds sing loud", "the dog sat"]
    monkeypatch.setattr(sentences, "load_sentences", lambda: texts)
    # The word prior may hold a held-out sentence's words, never its word sequences.
    (tmp_path / "prior.tsv").write_text("birds\t9\nsing\t3\nzebra\t1\n")
    monkeypatch.setattr(demo, "LM_PRIOR", str(tmp_path / "prior.tsv"))
    lm = read_arpa(build_demo_lm(tmp_path / "lm.arpa", _held_out_manifests(tmp_path)))
    words = set(lm.vocabulary)
    assert {"the", "cat", "sat", "dog", "birds", "sing", "zebra"} <= words
    assert not {"ran", "far", "loud"} & words
    assert ("birds", "sing") not in lm.log10_probs[1] and ("dog", "ran") not in lm.log10_probs[1]
    assert "a prior of 3 words" in capsys.readouterr().out


def test_demo_lm_is_made_without_the_prior_when_wordfreq_is_missing(tmp_path, monkeypatch, capsys):
    import speechswarm.data.sentences as sentences
    import speechswarm.decode.word_prior as word_prior

    monkeypatch.setattr(sentences, "load_sentences", lambda: ["the cat sat", "the dog sat"])
    monkeypatch.setitem(sys.modules, "wordfreq", None)  # import wordfreq raises ImportError
    lm = read_arpa(build_demo_lm(tmp_path / "lm.arpa", _held_out_manifests(tmp_path)))
    assert set(lm.vocabulary) == {"<s>", "</s>", "<unk>", "the", "cat", "dog", "sat"}
    printed = capsys.readouterr().out
    assert "no word prior" in printed and word_prior.WORDFREQ_HINT in printed
