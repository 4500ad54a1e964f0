"""Sentences for the synthetic corpus, taken from a real public text shipped by Debian.

    PYTHONPATH=src python -c "from speechswarm.data.sentences import load_sentences; print(len(load_sentences()))"

The default source is the `fortunes` package (/usr/share/games/fortunes/*): plain files whose
entries are separated by lines holding a single "%". We drop attribution lines ("-- Author"),
the offensive `off/` folder, ASCII art and code-like entries, split entries into sentences and
normalise them with `normalize_text`, so the text a TTS engine reads is exactly the transcript.
Sentences a TTS engine would not read word-for-word (abbreviations, acronyms, vowel-less tokens
such as "mr", "ibm", "hmm") are dropped because their audio would not match their transcript.
A user text file (one sentence per line) replaces the fortunes source.

The order is deterministic (sorted files, entries in file order, first occurrence kept), so a
seeded shuffle downstream gives the same corpus on every machine with the same package version.
"""

from __future__ import annotations

import re
from pathlib import Path

from speechswarm.data.text import DEFAULT_ALPHABET, normalize_text
from speechswarm.errors import SpeechswarmError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
MIN_WORDS = 3
MAX_WORDS = 20
# Files that are not prose (ascii-art); `off/` (offensive) is never read because we only list
# plain files at the top level of FORTUNES_DIR.
SKIPPED_FORTUNE_FILES = frozenset({"ascii-art"})
# Characters that mark code, markup, ASCII art or symbols a TTS engine reads aloud by name.
_CODE_CHARS = frozenset("{}[]<>|\\/=_~^*#@$%&+`")
# An entry is prose when at least this fraction of its non-blank characters are letters.
_MIN_LETTER_FRACTION = 0.75
# Abbreviations that end with "." and must not end a sentence; sentences holding them are
# dropped anyway (TTS would expand "Mr." to "mister"), so merging only avoids stray fragments.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "prof", "gen", "col", "lt", "sgt"}
    | {"capt", "rev", "no", "inc", "ltd", "co", "mt", "ft", "e.g", "i.e"}
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_OVERSTRIKE = re.compile(r".\x08")  # "_\bw" underline / "w\bw" bold from nroff-style files
_VOWELS = frozenset("aeiouy")
_SINGLE_LETTER_WORDS = frozenset("aio")  # other single letters are read as letter names
_LIST_MARKER = re.compile(r"^\(?\d+[.):]\s")
_INITIALISM = re.compile(r"^([A-Za-z]\.){2,}$")


class SentenceSourceError(SpeechswarmError, RuntimeError):
    """The sentence source is missing or unusable; the message says what to do."""


def load_sentences(
    text_file: str | Path | None = None,
    *,
    fortunes_dir: str | Path = FORTUNES_DIR,
    alphabet: str = DEFAULT_ALPHABET,
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
) -> list[str]:
    """Normalised, deduplicated sentences in a deterministic order.

    With `text_file`, each non-empty line is one sentence: it is normalised and must then use
    only `alphabet` characters (else SentenceSourceError naming file:line); no length filter.
    Without it, sentences come from the fortunes files (3-20 words by default).
    """
    if text_file is not None:
        return _sentences_from_text_file(Path(text_file), alphabet)
    fortunes_dir = Path(fortunes_dir)
    files = _fortune_files(fortunes_dir)
    seen: set[str] = set()
    sentences: list[str] = []
    for path in files:
        for entry in read_fortune_entries(path):
            if not is_prose(entry):
                continue
            for raw in split_sentences(entry):
                clean = clean_sentence(raw, alphabet, min_words, max_words)
                if clean is not None and clean not in seen:
                    seen.add(clean)
                    sentences.append(clean)
    if not sentences:
        raise SentenceSourceError(f"no usable sentences found in {fortunes_dir}")
    return sentences


def _fortune_files(fortunes_dir: Path) -> list[Path]:
    if not fortunes_dir.is_dir():
        raise SentenceSourceError(
            f"fortunes text not found at {fortunes_dir}: install it with "
            "`sudo apt-get install fortunes` (or run `make setup`), or pass a text file "
            "with one sentence per line"
        )
    files = [
        p
        for p in sorted(fortunes_dir.iterdir())
        if p.is_file()
        and not p.is_symlink()
        and p.suffix == ""
        and p.name not in SKIPPED_FORTUNE_FILES
    ]
    if not files:
        raise SentenceSourceError(
            f"{fortunes_dir} holds no fortune files; reinstall with "
            "`sudo apt-get install --reinstall fortunes` (or run `make setup`)"
        )
    return files


def _sentences_from_text_file(path: Path, alphabet: str) -> list[str]:
    if not path.is_file():
        raise SentenceSourceError(f"sentence file {path} does not exist")
    allowed = set(alphabet)
    seen: set[str] = set()
    sentences: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        clean = normalize_text(line, alphabet=alphabet, digits="spell")
        if not clean.strip():
            continue
        bad = sorted(set(clean) - allowed)
        if bad:
            raise SentenceSourceError(
                f"{path}:{lineno}: characters {bad} are outside the alphabet {alphabet!r}; "
                "edit the line or remove it"
            )
        if clean not in seen:
            seen.add(clean)
            sentences.append(clean)
    if not sentences:
        raise SentenceSourceError(f"sentence file {path} has no non-empty lines")
    return sentences


def read_fortune_entries(path: str | Path) -> list[str]:
    """Entries of one fortune file, attribution lines and nroff overstrikes removed."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    text = _OVERSTRIKE.sub("", text)
    entries: list[str] = []
    lines: list[str] = []
    for line in text.splitlines() + ["%"]:
        if line.strip() == "%":
            if any(s.strip() for s in lines):
                entries.append("\n".join(lines).strip())
            lines = []
        elif not line.lstrip().startswith("--"):  # "\t\t-- Author, Title"
            lines.append(line)
    return entries


def is_prose(entry: str) -> bool:
    """False for code, ASCII art and symbol-heavy entries (judged on the whole entry)."""
    if any(c in _CODE_CHARS for c in entry):
        return False
    visible = [c for c in entry if not c.isspace()]
    if not visible:
        return False
    letters = sum(c.isalpha() for c in visible)
    return letters / len(visible) >= _MIN_LETTER_FRACTION


def split_sentences(text: str) -> list[str]:
    """Split prose at . ! ? followed by whitespace; abbreviations do not end a sentence."""
    pieces = [p.strip() for p in _SENTENCE_END.split(" ".join(text.split()))]
    sentences: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        if sentences and _ends_with_abbreviation(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _ends_with_abbreviation(sentence: str) -> bool:
    last = sentence.split()[-1] if sentence.split() else ""
    if not last.endswith("."):
        return False
    word = last.rstrip(".").lstrip("\"'(").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())  # "J. R. R."


def clean_sentence(raw: str, alphabet: str, min_words: int, max_words: int) -> str | None:
    """The normalised sentence, or None when a TTS engine would not read it word for word."""
    words = raw.split()
    if _LIST_MARKER.match(raw):  # "(2) Avoid running": the number is not part of the sentence
        return None
    if any(_is_abbreviation(w) or _is_acronym(w) for w in words):
        return None
    clean = normalize_text(raw, alphabet=alphabet, digits="spell")
    # Apostrophes used as quote marks ("'tis", "dogs'") are not part of the spoken word.
    tokens = [t.strip("'") for t in clean.split()]
    tokens = [t for t in tokens if t]
    if not min_words <= len(tokens) <= max_words:
        return None
    clean = " ".join(tokens)
    if set(clean) - set(alphabet):
        return None
    if any(len(t) > 1 and not (set(t) & _VOWELS) for t in tokens):  # "hmm", "mr", "tv"
        return None
    if any(len(t) == 1 and t not in _SINGLE_LETTER_WORDS for t in tokens):  # "duty, n."
        return None
    return clean


def _is_abbreviation(word: str) -> bool:
    core = word.strip("\"'(),;:!?")
    if "." not in core:
        return False
    if _INITIALISM.match(core):  # "e.g.", "U.S.", "a.m."
        return True
    return core.endswith(".") and core[:-1].lower() in _ABBREVIATIONS


def _is_acronym(word: str) -> bool:
    letters = [c for c in word if c.isalpha()]
    return len(letters) >= 2 and all(c.isupper() for c in letters)  # "IBM", "UNIX", "OK"
