"""Transcript normalisation against hand-written expectations."""

import pytest

from speechswarm.data.text import (
    DEFAULT_ALPHABET,
    normalize_text,
    number_to_words,
    ordinal_words,
    out_of_alphabet,
    year_words,
)


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (21, "twenty one"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (110, "one hundred ten"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (1001, "one thousand one"),
        (12345, "twelve thousand three hundred forty five"),
        (1_000_000, "one million"),
        (2_000_300, "two million three hundred"),
        (
            1_234_567_890,
            "one billion two hundred thirty four million five hundred sixty seven thousand "
            "eight hundred ninety",
        ),
        (
            999_999_999_999,
            "nine hundred ninety nine billion nine hundred ninety nine million "
            "nine hundred ninety nine thousand nine hundred ninety nine",
        ),
        (-5, "minus five"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_number_to_words_rejects_a_trillion():
    with pytest.raises(ValueError, match="10\\*\\*12"):
        number_to_words(10**12)


@pytest.mark.parametrize(
    "n, words",
    [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (4, "fourth"),
        (5, "fifth"),
        (8, "eighth"),
        (9, "ninth"),
        (12, "twelfth"),
        (20, "twentieth"),
        (21, "twenty first"),
        (42, "forty second"),
        (100, "one hundredth"),
        (101, "one hundred first"),
        (1000, "one thousandth"),
    ],
)
def test_ordinal_words(n, words):
    assert ordinal_words(n) == words


@pytest.mark.parametrize(
    "n, words",
    [
        (1984, "nineteen eighty four"),
        (1905, "nineteen oh five"),
        (1900, "nineteen hundred"),
        (1100, "eleven hundred"),
        (2000, "two thousand"),  # outside 1100-1999: cardinal
        (2024, "two thousand twenty four"),
        (1000, "one thousand"),
    ],
)
def test_year_words(n, words):
    assert year_words(n) == words


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("HELLO   World", "hello world"),
        ("It’s here", "it's here"),  # curly apostrophe
        ("It‘s ʼok´", "it's ok"),
        ("“Quoted,” she said; then: (left)!", "quoted she said then left"),
        ("well-known — ideas–and/or thoughts", "well known ideas and or thoughts"),
        ("Café Zoë, naïve façade", "cafe zoe naive facade"),
        ("Straße Ærø łódź ﬁne", "strasse aero lodz fine"),
        ("I was born in 1984.", "i was born in nineteen eighty four"),
        (
            "the 21st and 2nd and 3rd and 100th",
            "the twenty first and second and third and one hundredth",
        ),
        (
            "1,234,567 people",
            "one million two hundred thirty four thousand five hundred sixty seven people",
        ),
        ("pi is 3.14", "pi is three point one four"),
        ("the 1980s and the 90's", "the nineteen eighties and the nineties"),
        ("agent 007", "agent zero zero seven"),
        ("50% & more", "fifty percent and more"),
        ("abc123", "abc one hundred twenty three"),
        ("U.S.A. e.g. www.site.com", "usa eg www site com"),
        ("'Tis the dogs' 'quoted' rock'n'roll", "'tis the dogs quoted rock'n'roll"),
        ("  \t leading and trailing \n ", "leading and trailing"),
        ("１２ full width", "twelve full width"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_is_idempotent_and_stays_in_alphabet():
    raws = ["It’s 1984 — Chapter 21st, Café “Zoë”!", "O'Brien's 3.5% share", "e.g. A-B-C"]
    for raw in raws:
        once = normalize_text(raw)
        assert normalize_text(once) == once
        assert out_of_alphabet(once, DEFAULT_ALPHABET) == set()


def test_keep_digits_leaves_them_for_validation():
    text = normalize_text("Room 101, floor 3; 1,000 keys", digits="keep")
    assert text == "room 101 floor 3 1000 keys"
    assert out_of_alphabet(text) == {"0", "1", "3"}


def test_alphabet_characters_are_never_folded():
    alphabet = DEFAULT_ALPHABET + "éà"
    assert normalize_text("Café à la carte", alphabet=alphabet) == "café à la carte"
    assert normalize_text("Crème brûlée", alphabet=alphabet) == "creme brulée"


def test_apostrophe_outside_alphabet_is_deleted_not_spaced():
    alphabet = "abcdefghijklmnopqrstuvwxyz "
    assert normalize_text("Don’t stop", alphabet=alphabet) == "dont stop"


def test_unfoldable_letters_are_kept_for_validation():
    text = normalize_text("Привет, мир!")
    assert text == "привет мир"
    assert out_of_alphabet(text) == set("приветм")


def test_bad_digits_mode_is_rejected():
    with pytest.raises(ValueError, match="digits must be 'spell' or 'keep'"):
        normalize_text("x", digits="words")


def test_out_of_alphabet():
    assert out_of_alphabet("hello", "helo") == set()
    assert out_of_alphabet("hé!", DEFAULT_ALPHABET) == {"é", "!"}
