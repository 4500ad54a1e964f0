"""Transcript normalisation: raw corpus text to the characters a CTC model emits.

    >>> normalize_text("It’s 1984 — Chapter 21st, Café “Zoë”!")
    "it's nineteen eighty four chapter twenty first cafe zoe"

`normalize_text` runs these steps, in order:

1. Lower case; curly/prime/backtick apostrophes folded to `'`, dashes folded to `-`.
2. Characters outside the alphabet are folded to ASCII when they can be (NFKD minus
   accents: `é` -> `e`, `ﬁ` -> `fi`, full-width `１` -> `1`; plus `ß` -> `ss`, `æ` -> `ae`,
   `œ` -> `oe`, `ø` -> `o`, `ł` -> `l`, `đ`/`ð` -> `d`, `þ` -> `th`). A character that is
   in the alphabet is never folded, so an alphabet with `é` keeps it.
3. Numbers (`digits="spell"`), see `number_to_words` for the reading rules:
   `1,234` -> one thousand two hundred thirty four (grouping commas dropped),
   `21st` -> twenty first, `1980s` -> nineteen eighties, `3.14` -> three point one four,
   a bare four-digit number from 1100 to 1999 is read as a year (`1984` -> nineteen eighty
   four, `1905` -> nineteen oh five, `1900` -> nineteen hundred); every other integer,
   2000-2099 included, is a cardinal (`2024` -> two thousand twenty four). Numbers with a
   leading zero or more than 12 digits are read digit by digit (`007` -> zero zero seven).
   `digits="keep"` leaves digits in place so that validation (`out_of_alphabet`) flags them.
4. `&` -> and, `%` -> percent; periods inside single-letter acronyms are dropped
   (`u.s.a.` -> usa, `e.g.` -> eg); every other punctuation, symbol or separator not in the
   alphabet becomes a space (hyphens too: `well-known` -> well known), except `'`, which
   is deleted when the alphabet lacks it (`don't` -> dont).
5. Apostrophes leading or trailing a word are stripped (`'quoted'` -> quoted,
   `dogs'` -> dogs) except in a few old contractions (`'tis`, `'twas`, `'em`, ...).
6. Whitespace collapsed to single spaces, ends trimmed.

Letters outside the alphabet that cannot be folded (`ж`, `中`) are kept, not deleted, so
that validation reports them instead of the transcript silently losing words.

`alphabet="auto"` (any language): each transcript's own letters, combining marks and (with
`digits="keep"`) digits form its alphabet, plus `'` and space, so nothing is folded (`ä`,
`ß`, `ç`, `ё` stay). Punctuation and symbols still become spaces (step 4, without the
English words for `&` and `%`), apostrophe and dash variants are still unified (step 1).
`alphabet_of(texts)` is then the corpus's alphabet (what `tokenizer.alphabet=auto` uses),
and `outside_alphabet` counts what was changed, for the import report.
"""

from __future__ import annotations

import re
import unicodedata

from speechswarm.errors import UsageError

DEFAULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz' "
AUTO_ALPHABET = "auto"  # the alphabet is taken from the data (module docstring)

_APOSTROPHES = "\u2019\u2018\u201b\u02bc\u02b9\u0060\u00b4\u2032\uff07"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
# Letters NFKD does not decompose into ASCII.
_SPECIAL_FOLDS = {
    "ß": "ss",
    "æ": "ae",
    "œ": "oe",
    "ø": "o",
    "ł": "l",
    "đ": "d",
    "ð": "d",
    "þ": "th",
    "ı": "i",
}
_SYMBOL_WORDS = {"&": " and ", "%": " percent "}
_KEEP_LEADING_APOSTROPHE = {"'tis", "'twas", "'twere", "'twill", "'twould", "'em", "'til"}

# fmt: off
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# fmt: on
_SCALES = ((10**9, "billion"), (10**6, "million"), (10**3, "thousand"))
_ORDINAL_LAST = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_MAX_SPELLED_DIGITS = 12  # up to 999,999,999,999: "billion" is the largest scale word

_GROUPING_COMMA = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_ORDINAL = re.compile(r"\b([0-9]+)(?:st|nd|rd|th)\b")
_DECADES = re.compile(r"\b([0-9]+)'?s\b")
_DECIMAL = re.compile(r"\b([0-9]+)\.([0-9]+)\b")
_INTEGER = re.compile(r"[0-9]+")
_ACRONYM_PERIOD = re.compile(r"(?<=\b[^\W\d_])\.(?=[^\W\d_]\b)")


def number_to_words(n: int) -> str:
    """Cardinal American English words, no "and": 123 -> "one hundred twenty three".

    Handles |n| < 10**12 (up to "nine hundred ninety nine billion ..."); negative numbers
    start with "minus". Raises ValueError beyond that range.
    """
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= 10**_MAX_SPELLED_DIGITS:
        raise ValueError(f"number_to_words handles |n| < 10**12, got {n}")
    if n == 0:
        return "zero"
    words: list[str] = []
    for scale, name in _SCALES:
        if n >= scale:
            words += _below_thousand(n // scale) + [name]
            n %= scale
    if n:
        words += _below_thousand(n)
    return " ".join(words)


def _below_thousand(n: int) -> list[str]:
    """Words for 1 <= n <= 999."""
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
    if n:
        words.append(_ONES[n])
    return words


def ordinal_words(n: int) -> str:
    """Ordinal words: 21 -> "twenty first", 100 -> "one hundredth", 12 -> "twelfth"."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_LAST:
        words[-1] = _ORDINAL_LAST[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(n: int) -> str:
    """Years 1100-1999 read in pairs: 1984 -> "nineteen eighty four", 1905 -> "nineteen oh
    five", 1900 -> "nineteen hundred". Other values fall back to the cardinal reading."""
    if not 1100 <= n <= 1999:
        return number_to_words(n)
    century, rest = divmod(n, 100)
    if rest == 0:
        return f"{number_to_words(century)} hundred"
    if rest < 10:
        return f"{number_to_words(century)} oh {number_to_words(rest)}"
    return f"{number_to_words(century)} {number_to_words(rest)}"


def _digit_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits)


def _integer_words(digits: str) -> str:
    """How a bare run of ASCII digits is read (see module docstring, step 3)."""
    if len(digits) > _MAX_SPELLED_DIGITS or (len(digits) > 1 and digits[0] == "0"):
        return _digit_words(digits)
    n = int(digits)
    if len(digits) == 4:
        return year_words(n)
    return number_to_words(n)


def _plural(words: str) -> str:
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return f"{head} {last}" if head else last


def spell_numbers(text: str) -> str:
    """Replace every ASCII digit run in `text` by words (module docstring, step 3)."""
    text = _GROUPING_COMMA.sub("", text)
    # Each replacement is padded with spaces so "abc123" becomes "abc one hundred ...".
    text = _ORDINAL.sub(lambda m: f" {_ordinal_of_digits(m.group(1))} ", text)
    text = _DECADES.sub(lambda m: f" {_plural(_integer_words(m.group(1)))} ", text)
    text = _DECIMAL.sub(
        lambda m: f" {_integer_words(m.group(1))} point {_digit_words(m.group(2))} ", text
    )
    return _INTEGER.sub(lambda m: f" {_integer_words(m.group(0))} ", text)


def _ordinal_of_digits(digits: str) -> str:
    if len(digits) > _MAX_SPELLED_DIGITS:
        return _digit_words(digits)
    return ordinal_words(int(digits))


def _fold_char(ch: str, alphabet: str) -> str:
    """One lower-cased character -> its replacement (module docstring, steps 1-2)."""
    if ch in alphabet:
        return ch
    if ch in _APOSTROPHES:
        return "'"
    if ch in _DASHES:
        return "-"
    if ch in _SPECIAL_FOLDS:
        return _SPECIAL_FOLDS[ch]
    if unicodedata.combining(ch):
        return ""  # a stray accent with no base letter (NFC could not compose it)
    decomposed = unicodedata.normalize("NFKD", ch)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    if stripped and stripped != ch:
        return "".join(_fold_char(c, alphabet) for c in stripped.lower())
    return ch


def _drop_punctuation(text: str, alphabet: str, symbol_words: bool = True) -> str:
    """Step 4: symbols to words, acronym periods dropped, other punctuation to spaces."""
    for symbol, word in _SYMBOL_WORDS.items():
        if symbol_words and symbol not in alphabet:
            text = text.replace(symbol, word)
    text = _ACRONYM_PERIOD.sub("", text)
    out = []
    for ch in text:
        if ch in alphabet:
            out.append(ch)
        elif ch == "'":
            continue  # the alphabet has no apostrophe: "don't" -> "dont", not "don t"
        elif unicodedata.category(ch)[0] in "PSZC":
            out.append(" ")
        else:
            out.append(ch)  # letters, marks, digits: kept so validation can flag them
    return "".join(out)


def _strip_word_apostrophes(word: str) -> str:
    if word in _KEEP_LEADING_APOSTROPHE:
        return word
    return word.strip("'")


def normalize_text(text: str, alphabet: str = DEFAULT_ALPHABET, digits: str = "spell") -> str:
    """Raw transcript -> normalised transcript (the steps are in the module docstring).

    `alphabet`: the characters the model emits; characters in it are never folded or
    removed. `digits`: "spell" (numbers to words) or "keep" (left for validation to flag).
    """
    if digits not in ("spell", "keep"):
        raise UsageError(f"normalize_text: digits must be 'spell' or 'keep', got {digits!r}")
    text = unicodedata.normalize("NFC", text).lower()
    english = alphabet != AUTO_ALPHABET
    alphabet = text_alphabet(text, alphabet, digits)
    text = "".join(_fold_char(ch, alphabet) for ch in text)
    # "keep" still drops grouping commas so "1,000" stays one token, "1000".
    text = spell_numbers(text) if digits == "spell" else _GROUPING_COMMA.sub("", text)
    text = _drop_punctuation(text, alphabet, symbol_words=english)
    words = (_strip_word_apostrophes(w) for w in text.split())
    return " ".join(w for w in words if w)


def out_of_alphabet(text: str, alphabet: str = DEFAULT_ALPHABET) -> set[str]:
    """Characters of `text` the alphabet lacks (empty set: the text is clean)."""
    return set(text) - set(alphabet)


def _is_word_char(ch: str, digits: str) -> bool:
    """Letters and combining marks (Devanagari vowel signs are marks), and decimal digits
    when they are kept: what `alphabet="auto"` never folds or removes."""
    category = unicodedata.category(ch)
    return category[0] in "LM" or (category == "Nd" and digits == "keep")


def text_alphabet(text: str, alphabet: str, digits: str = "spell") -> str:
    """The alphabet `normalize_text` applies to `text`: `alphabet` itself, or with "auto" the
    text's own word characters (NFC, lower-cased) plus apostrophe and space."""
    if alphabet != AUTO_ALPHABET:
        return alphabet
    text = unicodedata.normalize("NFC", text).lower()
    return "".join(sorted({ch for ch in text if _is_word_char(ch, digits)})) + "' "


def alphabet_of(texts) -> str:
    """Every character of the (normalised) `texts`, sorted by code point: a corpus's alphabet."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    return "".join(sorted(chars))


def outside_alphabet(raw: str, alphabet: str, digits: str = "spell") -> dict[str, int]:
    """{character: count} of the raw transcript's characters (NFC, lower-cased, whitespace
    aside) that the alphabet `normalize_text` applies lacks: those it folded, spelled,
    replaced or removed. An empty dict: the transcript was kept as written."""
    text = unicodedata.normalize("NFC", raw).lower()
    keep = set(text_alphabet(text, alphabet, digits))
    counts: dict[str, int] = {}
    for ch in text:
        if ch not in keep and not ch.isspace():
            counts[ch] = counts.get(ch, 0) + 1
    return counts
