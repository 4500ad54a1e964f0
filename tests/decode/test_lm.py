"""Kneser-Ney estimation and ARPA files, against hand-computed numbers and KenLM itself.

.venv/bin/python -m pytest tests/decode/test_lm.py -q
"""

from __future__ import annotations

import math

import pytest

from speechswarm.decode.lm import (
    BOS,
    EOS,
    FALLBACK_DISCOUNTS,
    UNK,
    adjusted_counts,
    arpa_words,
    build_lm,
    count_ngrams,
    discounts,
    kneser_ney,
    lm_sentences,
    read_arpa,
)
from speechswarm.errors import UsageError

TINY = [s.split() for s in ("a b c", "a b", "b c a", "c a b c")]
# A few sentences with repeated structure: enough n-grams of each count for real discounts.
TEXT = [
    s.split()
    for s in (
        "the cat sat on the mat",
        "the dog sat on the log",
        "a cat and a dog sat on a mat",
        "the cat ate the fish",
        "the dog ate the bone",
        "a bird sat on the fence",
        "the bird ate a worm",
        "the cat saw the bird on the fence",
    )
    * 3
]


def test_bigram_probabilities_by_hand():
    """<s> a b c </s> / <s> a b </s> / <s> b c a </s> / <s> c a b c </s>, order 2.

    Continuation counts: a {<s>, c} 2, b {<s>, a} 2, c {<s>, b} 2, </s> {a, b, c} 3; sum 9.
    Discounts fall back to 0.5 / 1 / 1.5 (no word was seen 4 times), so p(a) = (2 - 1) / 9
    + gamma / 5 with gamma = (1 + 1 + 1 + 1.5) / 9 = 0.5 and 5 words (a b c </s> <unk>).
    Bigrams after a: a b x3, a </s> x1 (raw counts, highest order): gamma(a) = (1.5 + 0.5) / 4.
    """
    m = kneser_ney(count_ngrams(TINY, 2))
    assert m.discounts == (FALLBACK_DISCOUNTS, FALLBACK_DISCOUNTS)
    p_a = 1 / 9 + 0.5 / 5
    p_eos = 1.5 / 9 + 0.5 / 5
    assert 10 ** m.log10_prob("a") == pytest.approx(p_a, rel=1e-9)
    assert 10 ** m.log10_prob(EOS) == pytest.approx(p_eos, rel=1e-9)
    assert 10 ** m.log10_prob("zebra") == pytest.approx(0.5 / 5, rel=1e-9)  # <unk>
    assert 10 ** m.log10_prob("b", ["a"]) == pytest.approx((3 - 1.5) / 4 + 0.5 * p_a, rel=1e-9)
    assert 10 ** m.log10_prob(EOS, ["a"]) == pytest.approx((1 - 0.5) / 4 + 0.5 * p_eos, rel=1e-9)
    # unseen bigram: backoff gamma(a) = 0.5 times the unigram
    assert 10 ** m.log10_prob("c", ["a"]) == pytest.approx(0.5 * p_a, rel=1e-9)


def test_adjusted_counts_and_discount_formula():
    adj = adjusted_counts(count_ngrams(TINY, 2))
    assert adj[0][("a",)] == 2 and adj[0][(EOS,)] == 3  # distinct left neighbours
    assert adj[1][(BOS, "a")] == 2  # the highest order keeps raw counts
    # t1..t4 = 4, 2, 1, 1: Y = 4 / 8, D1 = 1 - 2 * 0.5 * 2 / 4, D2 = 2 - 3 * 0.5 * 1 / 2,
    # D3+ = 3 - 4 * 0.5 * 1 / 1
    counts = {("w", str(i)): c for i, c in enumerate([1, 1, 1, 1, 2, 2, 3, 4, 9])}
    d, fell_back = discounts(counts)
    assert not fell_back
    assert d == pytest.approx((0.5, 1.25, 1.0))
    assert discounts({("x",): 1}) == (FALLBACK_DISCOUNTS, True)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_sums_to_one(order):
    m = kneser_ney(count_ngrams(TEXT, order))
    vocab = [w for w in m.vocabulary if w != BOS]
    contexts = [(), (BOS,), ("the",), ("sat", "on"), (BOS, "the"), ("zzz", "the"), ("on", "zzz")]
    for ctx in contexts:
        total = sum(10 ** m.log10_prob(w, ctx) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), ctx
    assert 10 ** m.log10_prob(BOS, ()) < 1e-90  # <s> is never predicted


@pytest.mark.parametrize("order", [1, 2, 3])
def test_a_word_prior_adds_its_words_and_every_context_still_sums_to_one(order):
    prior = {"zebra": 3.0, "yak": 1.0, "cat": 50.0}  # "cat" is in the text too
    plain = kneser_ney(count_ngrams(TEXT, order))
    m = kneser_ney(count_ngrams(TEXT, order), prior, prior_weight=0.5)
    assert set(m.vocabulary) == set(plain.vocabulary) | {"zebra", "yak"}
    vocab = [w for w in m.vocabulary if w != BOS]
    for ctx in [(), (BOS,), ("the",), ("sat", "on"), ("zebra",)]:
        total = sum(10 ** m.log10_prob(w, ctx) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), ctx
    # Unseen words share the discount mass gamma(()) in proportion to the base distribution
    # (1 - w) / |V| + w * prior / sum(prior): by hand for zebra against yak.
    n, total = len(vocab), 54.0
    base = [0.5 / n + 0.5 * c / total for c in (3.0, 1.0)]
    ratio = 10 ** (m.log10_prob("zebra") - m.log10_prob("yak"))
    assert ratio == pytest.approx(base[0] / base[1], rel=1e-6)
    # The text's own n-grams keep their discounted counts: a seen trigram moves by the
    # (small) change of its lower orders only.
    if order == 3:
        seen = m.log10_prob("sat", ["the", "cat"]) - plain.log10_prob("sat", ["the", "cat"])
        assert abs(seen) < 0.05


@pytest.mark.parametrize("weight", [0.0, 1.0, 1.5])
def test_a_prior_weight_outside_0_1_is_refused(weight):
    with pytest.raises(UsageError, match="prior's weight"):
        kneser_ney(count_ngrams(TINY, 2), {"zebra": 1.0}, prior_weight=weight)


def test_the_right_text_scores_better_than_scrambled_text():
    m = kneser_ney(count_ngrams(TEXT, 3))
    good = m.sentence_log10_prob(["the", "cat", "sat", "on", "the", "mat"])
    scrambled = m.sentence_log10_prob(["mat", "the", "on", "sat", "cat", "the"])
    assert good > scrambled + 3  # more than 1000x more likely


def test_arpa_round_trip_and_kenlm_agree(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    path = tmp_path / "lm.arpa"
    m = build_lm(TEXT, 3, path)
    back = read_arpa(path)
    assert back.order == 3
    for n in range(3):
        assert back.log10_probs[n].keys() == m.log10_probs[n].keys()
        for gram, p in m.log10_probs[n].items():
            assert back.log10_probs[n][gram] == pytest.approx(p, abs=1e-6)
    words = arpa_words(path)
    assert set(words) == {w for s in TEXT for w in s}
    # KenLM (as the decoder loads it) reads our file and computes the same sentence scores.
    word_dict = Dictionary([*words, UNK])
    lm = KenLM(str(path), word_dict)
    for sentence in ("the cat sat on the fence", "a worm ate the dog", "the mat"):
        state, total = lm.start(False), 0.0
        for w in sentence.split():
            state, score = lm.score(state, word_dict.get_index(w))
            total += score
        total += lm.finish(state)[1]
        assert total == pytest.approx(m.sentence_log10_prob(sentence.split()), abs=1e-4)


def test_lm_sentences_excludes_given_texts():
    sentences, dropped = lm_sentences(["a b", " ", "c  d", "e"], exclude=["c d", "x"])
    assert sentences == [["a", "b"], ["e"]]
    assert dropped == 1


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="build_binary"):
        build_lm(TEXT, 3, tmp_path / "lm.bin")
    with pytest.raises(ValueError, match="no sentences"):
        build_lm([], 3, tmp_path / "lm.arpa")
    with pytest.raises(ValueError, match="order must be >= 1"):
        count_ngrams(TEXT, 0)
    with pytest.raises(FileNotFoundError, match="lm build"):
        read_arpa(tmp_path / "missing.arpa")
    junk = tmp_path / "junk.arpa"
    junk.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\nthis is not a number line\n")
    with pytest.raises(ValueError, match="line 5"):
        read_arpa(junk)
    assert math.isfinite(kneser_ney(count_ngrams(TINY, 1)).log10_prob("a"))
