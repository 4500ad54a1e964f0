import random

import jiwer
import pytest

from speechswarm.metrics import (
    ErrorCounts,
    cer,
    char_errors,
    edit_distance,
    levenshtein,
    wer,
    word_errors,
)


@pytest.mark.parametrize("distance", [levenshtein, edit_distance])
@pytest.mark.parametrize(
    ("ref", "hyp", "expected"),
    [
        ("kitten", "sitting", 3),  # 2 substitutions + 1 insertion
        ("abc", "abc", 0),
        ("abc", "axc", 1),  # substitution
        ("abc", "abxc", 1),  # insertion
        ("abc", "ac", 1),  # deletion
        ("abc", "", 3),  # empty hypothesis: all deletions
        ("", "ab", 2),  # empty reference: all insertions
        ("", "", 0),
        ("abcdef", "fedcba", 6),  # a full reversal: 6 substitutions
        (["the", "cat", "sat"], ["the", "bat", "sat", "down"], 2),  # words as tokens
        ([1, 2, 3], [2, 3], 1),
    ],
)
def test_edit_distance_hand_cases(distance, ref, hyp, expected):
    assert distance(ref, hyp) == expected
    assert distance(hyp, ref) == expected  # symmetric


def test_rapidfuzz_agrees_with_dp_on_random_sequences():
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 12))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 12))]
        assert edit_distance(a, b) == levenshtein(a, b)


def test_word_and_char_errors_one_utterance():
    c = word_errors("the cat sat", "the bat sat down")
    assert c == ErrorCounts(edits=2, ref_len=3, hyp_len=4, utterances=1, wrong_utterances=1)
    # chars: "ab cd" (5) vs "ab  c" -> collapsed "ab c" (4): one deletion
    c = char_errors("ab cd", "  ab  c ")
    assert (c.edits, c.ref_len, c.hyp_len) == (1, 5, 4)
    assert word_errors("a b", "a b").wrong_utterances == 0


def test_corpus_rate_is_total_edits_over_total_reference_not_mean_of_rates():
    refs = ["a b", "c d e f g h i j"]  # 2 + 8 words
    hyps = ["a x", "c d e f g h i j"]  # 1 error in the short one
    assert wer(refs, hyps) == pytest.approx(1 / 10)  # mean of rates would be 0.25
    assert cer(refs, hyps) == pytest.approx(1 / (3 + 15))


def test_empty_references():
    assert wer(["", "a b"], ["x", "a b"]) == pytest.approx(1 / 2)  # insertion counted
    assert wer([""], ["x y"]) == 2.0  # no reference words: inserted words per 1
    assert wer([""], [""]) == 0.0
    assert wer([], []) == 0.0
    assert wer(["a b"], [""]) == 1.0  # empty hypothesis: all deleted
    assert cer([""], ["ab"]) == jiwer.cer([""], ["ab"])


def test_error_counts_accumulate():
    a = ErrorCounts(1, 10, 9, 1, 1)
    b = ErrorCounts(2, 5, 6, 2, 1)
    assert a + b == ErrorCounts(3, 15, 15, 3, 2)
    assert sum([a, b]) == a + b
    assert (a + b).rate == pytest.approx(3 / 15)
    assert (a + b).sentence_error_rate == pytest.approx(2 / 3)


def test_mismatched_lengths_fail_clearly():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of strings"):
        wer("a b", "a b")


def _sentence(rng: random.Random, vocab: list[str]) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 9)))


def test_corpus_rates_match_jiwer_on_random_pairs():
    rng = random.Random(0)
    vocab = ["a", "the", "cat", "cats", "sat", "on", "mat", "it's", "hat", "at"]
    refs, hyps = [], []
    for _ in range(200):
        ref = _sentence(rng, vocab) or "cat"  # jiwer also accepts empty refs; keep most
        words_ = ref.split()
        hyp_words = [w if rng.random() > 0.3 else rng.choice(vocab) for w in words_]
        if rng.random() < 0.3:
            hyp_words.insert(rng.randint(0, len(hyp_words)), rng.choice(vocab))
        if hyp_words and rng.random() < 0.3:
            del hyp_words[rng.randrange(len(hyp_words))]
        refs.append(ref)
        hyps.append(" ".join(hyp_words))
    refs[7], hyps[9] = "", ""  # one empty reference and one empty hypothesis
    assert wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert 0.05 < wer(refs, hyps) < 0.8  # the pairs really differ
