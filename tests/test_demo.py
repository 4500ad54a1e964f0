"""`speechswarm demo` end to end on the smallest built-in corpus and a ~30k-parameter model.

.venv/bin/python -m pytest tests/test_demo.py -q
"""

from __future__ import annotations

import json

import pytest

from speechswarm.data.manifest import Utterance, read_manifest, write_manifest
from speechswarm.decode.lm import read_arpa
from speechswarm.demo import LM_ALPHAS, build_demo_lm, run_demo


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
    assert results["lm"]["beta"] in (0.0, 1.0)
    assert (out / "checkpoints" / "best.pt").is_file()
    # The demo tests the final weights (the one-cycle schedule ends with the budget).
    assert results["checkpoint"] == str(out / "checkpoints" / "last.pt")


def test_demo_lm_never_sees_a_dev_or_test_sentence(tmp_path, monkeypatch):
    import speechswarm.data.sentences as sentences

    texts = ["the cat sat", "a dog ran far", "birds sing loud", "the dog sat"]
    monkeypatch.setattr(sentences, "load_sentences", lambda: texts)
    manifests = {}
    for split, text in (("dev", "a dog ran far"), ("test", "birds sing loud")):
        utt = Utterance(f"{split}1", "x.flac", 1.0, text, "spk")
        write_manifest(tmp_path / f"{split}.jsonl", [utt])
        manifests[split] = tmp_path / f"{split}.jsonl"
    lm = read_arpa(build_demo_lm(tmp_path / "lm.arpa", manifests))
    words = set(lm.vocabulary)
    assert {"the", "cat", "sat", "dog"} <= words
    assert not {"ran", "far", "birds", "sing", "loud"} & words
