"""Character and SentencePiece tokenizers: ids, round trips, serialisation."""

import json
import pickle
import random

import pytest

from speechswarm.data.text import DEFAULT_ALPHABET
from speechswarm.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_sentencepiece,
)

WORDS_TEXT = (
    "the cat sat on a mat dog ran fast slow big small red blue green house tree river where "
    "when quickly jumped over lazy brown fox speech model train data night morning water "
    "bright dark sound voice letter number people world little great every through don't"
)
WORDS = WORDS_TEXT.split()


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(200)]


# ------------------------------------------------------------------------------ characters


def test_char_tokenizer_ids_are_alphabet_positions_plus_one():
    tok = CharTokenizer()
    assert tok.blank == 0
    assert tok.tokens[0] == "<blank>"
    assert len(tok) == len(DEFAULT_ALPHABET) + 1 == 29
    # a=1, b=2, space=28 (last in the default alphabet), '=27
    assert tok.encode("ab c") == [1, 2, 28, 3]
    assert tok.encode("don't") == [4, 15, 14, 27, 20]
    assert tok.decode([4, 15, 14, 27, 20]) == "don't"


def test_char_tokenizer_never_emits_blank_and_round_trips():
    tok = CharTokenizer()
    text = "the quick brown fox jumps over the lazy dog's back"
    ids = tok.encode(text)
    assert 0 not in ids
    assert tok.decode(ids) == text


def test_char_decode_skips_blanks_and_rejects_unknown_ids():
    tok = CharTokenizer("ab")
    assert tok.decode([0, 1, 0, 2, 0]) == "ab"
    with pytest.raises(ValueError, match="id 3 outside 0..2"):
        tok.decode([1, 3])


def test_char_encode_names_characters_outside_the_alphabet():
    with pytest.raises(ValueError, match=r"\['1', 'é'\] not in the alphabet"):
        CharTokenizer().encode("café 1")


def test_char_alphabet_must_not_repeat():
    with pytest.raises(ValueError, match=r"repeats \['a'\]"):
        CharTokenizer("abca")


def test_char_serialisation_round_trip(tmp_path):
    tok = CharTokenizer("xyz '")
    assert isinstance(tok, Tokenizer)
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.tokens == tok.tokens == ["<blank>", "x", "y", "z", " ", "'"]
    tok.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(loaded, CharTokenizer)
    assert loaded.encode("zy x") == [3, 2, 4, 1]


# ------------------------------------------------------------------------------ sentencepiece


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_round_trips_training_text(sentences, model_type):
    tok = train_sentencepiece(sentences, vocab_size=50, model_type=model_type)
    assert isinstance(tok, Tokenizer)
    assert len(tok) == 50  # vocab_size counts the blank
    assert tok.tokens[0] == "<blank>" and tok.tokens[1] == "<unk>"
    assert tok.unk == 1
    for text in sentences:
        ids = tok.encode(text)
        assert all(1 <= i < 50 for i in ids), ids  # never the blank
        assert tok.decode(ids) == text
    # Subwords, not characters: fewer tokens than characters over the corpus.
    n_tokens = sum(len(tok.encode(t)) for t in sentences)
    assert n_tokens < 0.8 * sum(len(t) for t in sentences)


def test_sentencepiece_unknown_characters_become_unk_and_decode_to_nothing(sentences):
    tok = train_sentencepiece(sentences, vocab_size=50)
    ids = tok.encode("the ж cat")
    assert tok.unk in ids
    assert tok.decode(ids) == "the cat"
    assert tok.decode([0, *tok.encode("red fox"), 0]) == "red fox"


def test_sentencepiece_serialisation_round_trip(sentences, tmp_path):
    tok = train_sentencepiece(sentences, vocab_size=50, model_type="bpe")
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["kind"] == "sentencepiece" and isinstance(d["model"], str)
    again = tokenizer_from_dict(d)
    assert again.tokens == tok.tokens
    assert [again.encode(s) for s in sentences] == [tok.encode(s) for s in sentences]

    tok.save(tmp_path / "sp.json")
    loaded = load_tokenizer(tmp_path / "sp.json")
    assert loaded.encode(sentences[0]) == tok.encode(sentences[0])

    (tmp_path / "raw.model").write_bytes(tok.model_proto)  # a plain SentencePiece model file
    assert load_tokenizer(tmp_path / "raw.model").tokens == tok.tokens

    unpickled = pickle.loads(pickle.dumps(tok))  # DataLoader workers under "spawn"
    assert unpickled.encode(sentences[1]) == tok.encode(sentences[1])


def test_sentencepiece_too_large_vocab_says_what_fits(sentences):
    with pytest.raises(ValueError, match=r"vocab_size=5000 is too large .* use vocab_size <= \d+"):
        train_sentencepiece(sentences, vocab_size=5000)


def test_sentencepiece_rejects_bad_arguments():
    with pytest.raises(ValueError, match="model_type must be"):
        train_sentencepiece(["a b"], vocab_size=10, model_type="word")
    with pytest.raises(ValueError, match="no non-empty training texts"):
        train_sentencepiece(["", "  "], vocab_size=10)
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        SentencePieceTokenizer(b"definitely not a model")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="speechswarm tokenizer train"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"kind": "morse"}')
    with pytest.raises(ValueError, match="unknown tokenizer kind 'morse'"):
        load_tokenizer(tmp_path / "bad.json")
