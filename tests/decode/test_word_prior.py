"""Word priors for the LM: files of counts, the wordfreq list, and their errors.

.venv/bin/python -m pytest tests/decode/test_word_prior.py -q
"""

from __future__ import annotations

import pytest

from speechswarm.cli import main
from speechswarm.decode.lm import read_arpa
from speechswarm.decode.word_prior import load_prior
from speechswarm.errors import DataError, InputNotFoundError, UsageError


def test_a_counts_file_sums_cases_and_drops_what_the_alphabet_cannot_spell(tmp_path):
    path = tmp_path / "counts.tsv"
    path.write_text("The\t10\nthe\t5\ncafé\t3\nrock'n'roll 2\n\nzebra\nx2\t4\nnil\t0\n")
    prior = load_prior(str(path))
    assert prior.weights == {"the": 15.0, "rock'n'roll": 2.0, "zebra": 1.0}
    assert prior.dropped == 3  # café (é), x2 (a digit), nil (count 0)
    assert prior.source == str(path)


def test_wordfreq_gives_the_most_frequent_spellable_words_with_frequencies():
    pytest.importorskip("wordfreq")
    prior = load_prior("wordfreq:2000")
    assert len(prior.weights) == 2000
    words = list(prior.weights)
    assert words[0] == "the" and "because" in prior.weights
    assert all(set(w) <= set("abcdefghijklmnopqrstuvwxyz'") for w in words)
    assert prior.weights["the"] > prior.weights["because"] > 0


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("wordfreq:0", UsageError, "N > 0"),
        ("wordfreq:many", UsageError, "N > 0"),
        ("missing.tsv", InputNotFoundError, "does not exist"),
    ],
)
def test_bad_specs_fail_clearly(tmp_path, monkeypatch, spec, error, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        load_prior(spec)


def test_a_file_without_one_usable_word_or_with_a_bad_count_fails_clearly(tmp_path):
    (tmp_path / "digits.tsv").write_text("123\t4\n")
    with pytest.raises(DataError, match="no word"):
        load_prior(str(tmp_path / "digits.tsv"))
    (tmp_path / "bad.tsv").write_text("cat\tmany\n")
    with pytest.raises(DataError, match=r"bad.tsv:1: expected"):
        load_prior(str(tmp_path / "bad.tsv"))


def test_lm_build_with_a_prior_from_the_command_line(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("the cat sat\nthe dog sat\n")
    (tmp_path / "prior.tsv").write_text("zebra\t2\nyak\t1\n")
    out = tmp_path / "lm.arpa"
    argv = ["lm", "build", "--text", str(tmp_path / "text.txt"), "--order", "2"]
    assert main([*argv, "--prior", str(tmp_path / "prior.tsv"), "--out", str(out)]) == 0
    assert "prior " in capsys.readouterr().out
    m = read_arpa(out)
    assert {"zebra", "yak", "cat"} <= set(m.vocabulary)
    assert m.log10_prob("zebra") > m.log10_prob("yak")
