"""Beam search (flashlight-text) against greedy decoding and hand-computed cases; LM fusion.

.venv/bin/python -m pytest tests/decode/test_beam.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechswarm.data.tokenizer import CharTokenizer
from speechswarm.decode import DecoderOptions, GreedyDecoder, make_decoder
from speechswarm.decode.beam import BeamDecoder
from speechswarm.decode.greedy import greedy_decode
from speechswarm.decode.lm import build_lm
from speechswarm.metrics import wer

TOKENIZER = CharTokenizer()  # <blank>, a..z, ', space
SENTENCES = [
    "the cat sat on the mat",
    "a dog ate my homework",
    "time flies like an arrow",
    "never trust a quiet cat",
    "the quick brown fox jumps",
    "my dog likes the warm mat",
]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)


def random_batch(seed: int, n: int = 4, t: int = 40, v: int = 6):
    rng = np.random.default_rng(seed)
    log_probs = log_softmax(3 * rng.standard_normal((n, t, v)))
    lens = rng.integers(1, t + 1, n)
    return log_probs, lens


def test_greedy_decoder_matches_greedy_decode():
    for seed in range(20):
        log_probs, lens = random_batch(seed)
        expected = greedy_decode(torch.from_numpy(log_probs), torch.from_numpy(lens))
        assert GreedyDecoder().decode(log_probs, lens) == expected
        assert GreedyDecoder().decode(torch.from_numpy(log_probs), lens) == expected


def test_beam_without_lm_max_merging_is_exactly_greedy():
    """With Viterbi merging (max over alignments) and no LM the best hypothesis is the best
    path, which greedy finds frame by frame."""
    tokens = ["<blank>", "a", "b", "c", "d", " "]
    for seed in range(50):
        log_probs, lens = random_batch(seed)
        beam = BeamDecoder(tokens, DecoderOptions("beam", beam_size=16), log_add=False)
        assert beam.decode(log_probs, lens) == GreedyDecoder().decode(log_probs, lens)


def test_prefix_beam_search_equals_greedy_on_clear_cases():
    """Hand-made peaked outputs: "ab", "aa" (blank between) and "a b" (space token)."""
    tokens = ["<blank>", "a", "b", " "]
    paths = [[1, 1, 0, 2, 2, 0], [1, 0, 1, 0, 0, 0], [0, 1, 3, 3, 2, 0]]
    expected = [[1, 2], [1, 1], [1, 3, 2]]
    log_probs = np.full((3, 6, 4), np.log(0.02), dtype=np.float32)
    for n, path in enumerate(paths):
        log_probs[n, np.arange(6), path] = np.log(0.94)
    beam = make_decoder(DecoderOptions("beam", beam_size=8), tokens)
    assert beam.decode(log_probs, [6, 6, 6]) == expected
    assert GreedyDecoder().decode(log_probs, [6, 6, 6]) == expected


def test_prefix_beam_search_sums_alignments():
    """Two frames, p(a) = 0.4 and p(blank) = 0.6 each. The best path is blank blank -> "",
    p = 0.36; but "a" has three alignments (a a, a _, _ a): 0.16 + 0.24 + 0.24 = 0.64.
    Prefix beam search (summing) says "a", greedy says ""."""
    log_probs = np.log(np.array([[[0.6, 0.4], [0.6, 0.4]]], dtype=np.float32))
    tokens = ["<blank>", "a"]
    assert GreedyDecoder().decode(log_probs, [2]) == [[]]
    assert make_decoder(DecoderOptions("beam"), tokens).decode(log_probs, [2]) == [[1]]


def noisy_emissions(text: str, rng: np.random.Generator, confuse: float = 0.35) -> np.ndarray:
    """Log-probs an imperfect acoustic model might give for `text`: each character one
    frame, then a blank frame; in a `confuse` fraction of letters a wrong letter wins
    (0.5 vs 0.3 for the right one), so greedy decoding misspells those words."""
    ids = TOKENIZER.encode(text)
    probs = np.full((2 * len(ids), len(TOKENIZER)), 0.2 / (len(TOKENIZER) - 2))
    for i, c in enumerate(ids):
        row = probs[2 * i]
        row[c] = 0.8
        if TOKENIZER.tokens[c] != " " and rng.random() < confuse:
            wrong = int(rng.integers(1, 27))  # a letter
            if wrong != c:
                row[c], row[wrong] = 0.3, 0.5
        probs[2 * i + 1, 0] = 0.8  # blank
    probs /= probs.sum(-1, keepdims=True)
    return np.log(probs).astype(np.float32)


def test_an_lm_on_the_right_text_lowers_wer(tmp_path):
    rng = np.random.default_rng(0)
    emissions = [noisy_emissions(s, rng) for s in SENTENCES]
    right = build_lm([s.split() for s in SENTENCES], 3, tmp_path / "right.arpa")
    assert right.order == 3
    wrong_text = ["pay the bill before noon", "green ideas sleep", "ships sail at dawn"]
    build_lm([s.split() for s in wrong_text], 3, tmp_path / "wrong.arpa")

    def decode(decoder) -> list[str]:
        return [TOKENIZER.decode(decoder.decode(e[None], [len(e)])[0]) for e in emissions]

    greedy = wer(SENTENCES, decode(GreedyDecoder()))
    options = DecoderOptions("beam", lm=tmp_path / "right.arpa", alpha=0.5, beta=0.0)
    with_lm = wer(SENTENCES, decode(BeamDecoder(TOKENIZER.tokens, options)))
    wrong = DecoderOptions("beam", lm=tmp_path / "wrong.arpa", alpha=0.5, beta=0.0)
    with_wrong_lm = wer(SENTENCES, decode(BeamDecoder(TOKENIZER.tokens, wrong)))
    assert greedy > 0.3  # the confusions misspell about a third of the words
    assert with_lm == 0.0
    assert with_wrong_lm > greedy  # an LM of other text can only spell other words


def test_a_word_prior_lets_the_lm_spell_words_its_text_never_had(tmp_path):
    # "fox" and "jumps" are not in the LM's text: without a prior the lexicon cannot spell
    # them; with them in the prior, the same clean emissions come out right.
    text = [s.split() for s in SENTENCES if "fox" not in s]
    emissions = noisy_emissions("the quick brown fox jumps", np.random.default_rng(0), 0.0)
    plain = build_lm(text, 3, tmp_path / "plain.arpa")
    prior = {"fox": 5.0, "jumps": 1.0, "quick": 1.0, "brown": 1.0, "zebra": 1.0}
    with_prior = build_lm(text, 3, tmp_path / "prior.arpa", prior)
    assert ("fox",) not in plain.log10_probs[0] and ("fox",) in with_prior.log10_probs[0]

    def decode(lm) -> str:
        options = DecoderOptions("beam", lm=lm, alpha=0.5, beta=0.0)
        return TOKENIZER.decode(
            BeamDecoder(TOKENIZER.tokens, options).decode(emissions[None], [len(emissions)])[0]
        )

    assert "fox" not in decode(tmp_path / "plain.arpa")
    assert decode(tmp_path / "prior.arpa") == "the quick brown fox jumps"


def test_with_weights_reuses_the_lm_and_matches_a_fresh_decoder(tmp_path):
    build_lm([s.split() for s in SENTENCES], 2, tmp_path / "lm.arpa")
    rng = np.random.default_rng(1)
    emissions = noisy_emissions(SENTENCES[0], rng, confuse=0.6)[None]
    base = BeamDecoder(TOKENIZER.tokens, DecoderOptions("beam", lm=tmp_path / "lm.arpa"))
    for alpha, beta in [(0.0, 0.0), (2.0, -1.0), (0.3, 2.0)]:
        fresh = DecoderOptions("beam", lm=tmp_path / "lm.arpa", alpha=alpha, beta=beta)
        expected = BeamDecoder(TOKENIZER.tokens, fresh).decode(emissions, [emissions.shape[1]])
        got = base.with_weights(alpha, beta).decode(emissions, [emissions.shape[1]])
        assert got == expected


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.arpa does not exist.*lm build"):
        BeamDecoder(TOKENIZER.tokens, DecoderOptions("beam", lm=tmp_path / "missing.arpa"))
    binary = tmp_path / "lm.bin"
    binary.write_bytes(b"mmap lm http://kheafield.com/code format version 5\x00\x01")
    with pytest.raises(ValueError, match="--lexicon"):
        BeamDecoder(TOKENIZER.tokens, DecoderOptions("beam", lm=binary))
    build_lm([["été", "über"]], 2, tmp_path / "foreign.arpa")
    with pytest.raises(ValueError, match="none of its 2 words can be spelled"):
        BeamDecoder(TOKENIZER.tokens, DecoderOptions("beam", lm=tmp_path / "foreign.arpa"))
    build_lm([["ab"]], 2, tmp_path / "ab.arpa")
    pieces = ["<blank>", "▁a", "b"]  # no space token: a SentencePiece-like vocabulary
    with pytest.raises(ValueError, match="space token"):
        BeamDecoder(pieces, DecoderOptions("beam", lm=tmp_path / "ab.arpa"))
    with pytest.raises(ValueError, match="needs beam search"):
        DecoderOptions("greedy", lm="lm.arpa")
    with pytest.raises(ValueError, match=r"expected log_probs \(N, T, V\)"):
        GreedyDecoder().decode(np.zeros((3, 4)), [3])
