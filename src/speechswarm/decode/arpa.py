"""ARPA n-gram files, read strictly: a malformed file is one error naming the file and line.

    speechswarm eval --checkpoint best.pt --manifest test.jsonl --lm lm.arpa

The format, as SRILM, KenLM's `lmplz` and `speechswarm lm build` write it: blank or `#`
lines, `\\data\\`, one `ngram N=COUNT` line per order N = 1, 2, .., n, then per order a
`\\N-grams:` section of exactly COUNT lines `log10p w1 .. wN [log10backoff]` (no backoff at
the highest order), sections apart by blank lines, and `\\end\\`. Fields are apart by
spaces or tabs (as KenLM splits them); the text is UTF-8; a probability is a log10 value
<= 0 (-inf allowed), a backoff a finite number.

`iter_arpa` yields the entries, `arpa_words` the unigrams (it stops after their section),
`check_arpa` reads a file through. Every malformation is an `ArpaError` (a user error):
`language model lm.arpa, line 9: probability 'abc' is not a number ...`.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

from speechswarm.errors import DataError

SPECIAL_WORDS = ("<s>", "</s>", "<unk>")
_FIELDS = re.compile(r"[^ \t]+")  # KenLM's separators; str.split() would also cut at U+00A0
_COUNT = re.compile(r"ngram[ \t]+(\d+)[ \t]*=[ \t]*(\d+)")
_SECTION = re.compile(r"\\(\d+)-grams:")
_BINARY_HINT = "a binary KenLM file lists no words: pass them with --lexicon WORDS.txt"

Entry = tuple[int, tuple[str, ...], float, float | None]  # (order, words, log10p, backoff)


class ArpaError(DataError):
    """A malformed ARPA file; the message names the file and the line."""

    def __init__(self, path: str | os.PathLike, lineno: int, what: str):
        super().__init__(f"language model {path}, line {lineno}: {what}")
        self.path, self.lineno = Path(path), lineno


def iter_arpa(path: str | os.PathLike, max_order: int | None = None) -> Iterator[Entry]:
    """(order, words, log10 prob, log10 backoff or None) of every entry, in file order;
    stops after the `max_order`-grams when given. Raises ArpaError on the first
    malformation, after yielding the entries before it."""
    path = Path(path)
    lines = _lines(path)
    counts, lineno = _header(path, lines)
    last = min(max_order or len(counts), len(counts))
    unigrams: set[str] = set()
    for order in range(1, last + 1):
        lineno = _section_start(path, lines, order, lineno)
        for seen in range(counts[order - 1]):
            lineno, line = next(lines, (lineno, None))
            if line is None or not line or line.startswith("\\"):
                raise ArpaError(
                    path,
                    lineno,
                    f"the \\{order}-grams: section ends after {seen:,} entries; the header "
                    f"says {counts[order - 1]:,} (a truncated or hand-edited file?)",
                )
            entry = _entry(path, lineno, line, order, len(counts))
            _check_words(path, lineno, entry[1], unigrams)
            yield entry
        following = next(lines, None)  # a blank line, a section header or the end
        if following is not None and _looks_like_entry(following[1]):
            raise ArpaError(
                path,
                following[0],
                f"the \\{order}-grams: section holds more entries than the header's "
                f"{counts[order - 1]:,}",
            )
        if following is not None:
            lineno = following[0]
            lines = itertools.chain([following], lines)
    if last == len(counts):
        _end(path, lines, lineno)


def arpa_words(path: str | os.PathLike) -> list[str]:
    """The unigram words of an ARPA file (without `<s>`, `</s>`, `<unk>`), in file order.

    Reads the header and the 1-gram section only, so it is fast on large files."""
    return [g[0] for _, g, _, _ in iter_arpa(path, max_order=1) if g[0] not in SPECIAL_WORDS]


def check_arpa(path: str | os.PathLike) -> None:
    """Read the whole file; ArpaError (file, line, what) at its first malformation."""
    for _ in iter_arpa(path):
        pass


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the line break and outer spaces/tabs), decoded as UTF-8."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                hint = _BINARY_HINT if raw.startswith(b"mmap lm ") else "re-save it as UTF-8"
                raise ArpaError(
                    path,
                    lineno,
                    f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); {hint}",
                ) from None
            yield lineno, text.strip(" \t\r\n")


def _header(path: Path, lines: Iterator[tuple[int, str]]) -> tuple[list[int], int]:
    """The counts of `\\data\\`'s `ngram N=COUNT` lines, and the last line number read."""
    lineno = 0
    for lineno, line in lines:  # noqa: B007 (both are read after the loop)
        if line and not line.startswith("#"):
            break
    else:
        raise ArpaError(
            path, max(lineno, 1), "the file ends before \\data\\ (empty?); not an ARPA file"
        )
    if line != "\\data\\":
        raise ArpaError(
            path,
            lineno,
            f"expected \\data\\, found {line[:40]!r}; not an ARPA file ({_BINARY_HINT})",
        )
    counts: list[int] = []
    for lineno, line in lines:
        match = _COUNT.fullmatch(line)
        if not match:
            if line:
                raise ArpaError(path, lineno, f"expected 'ngram N=COUNT', found {line[:40]!r}")
            if counts:
                return counts, lineno
            continue
        if int(match[1]) != len(counts) + 1:
            raise ArpaError(
                path, lineno, f"'ngram {match[1]}=' where 'ngram {len(counts) + 1}=' belongs"
            )
        counts.append(int(match[2]))
    raise ArpaError(path, lineno, "the file ends inside the \\data\\ header (truncated?)")


def _section_start(path: Path, lines: Iterator[tuple[int, str]], order: int, lineno: int) -> int:
    for lineno, line in lines:
        if not line:
            continue
        if line == f"\\{order}-grams:":
            return lineno
        match = _SECTION.fullmatch(line)
        found = f"\\{match[1]}-grams:" if match else repr(line[:40])
        raise ArpaError(path, lineno, f"expected \\{order}-grams:, found {found}")
    raise ArpaError(path, lineno, f"the file ends before \\{order}-grams: (truncated?)")


def _end(path: Path, lines: Iterator[tuple[int, str]], lineno: int) -> None:
    for lineno, line in lines:
        if not line:
            continue
        if line == "\\end\\":
            return
        raise ArpaError(path, lineno, f"expected \\end\\, found {line[:40]!r}")
    raise ArpaError(path, lineno, "the file ends without \\end\\ (truncated?)")


def _entry(path: Path, lineno: int, line: str, order: int, top: int) -> Entry:
    """One `log10p w1 .. wN [backoff]` line of the `order`-grams (`top`: the highest order)."""
    fields = _FIELDS.findall(line)
    if len(fields) not in ((order + 1, order + 2) if order < top else (order + 1,)):
        backoff = " [backoff]" if order < top else ""
        raise ArpaError(
            path,
            lineno,
            f"expected 'log10prob' + {order} word(s){backoff} in the \\{order}-grams:, found "
            f"{line[:60]!r}",
        )
    prob = _number(fields[0])
    if prob is None or math.isnan(prob) or prob > 0:
        raise ArpaError(path, lineno, f"probability {fields[0][:20]!r} is not a log10 value <= 0")
    backoff = None
    if len(fields) == order + 2:
        backoff = _number(fields[-1])
        if backoff is None or not math.isfinite(backoff):
            raise ArpaError(path, lineno, f"backoff {fields[-1][:20]!r} is not a finite number")
    return order, tuple(fields[1 : order + 1]), prob, backoff


def _check_words(path: Path, lineno: int, words: tuple[str, ...], unigrams: set[str]) -> None:
    """Words hold no NUL byte, and every word of a longer n-gram is a unigram (KenLM
    requires it: the unigrams list the whole vocabulary)."""
    if len(words) == 1:
        if "\0" in words[0]:
            raise ArpaError(path, lineno, f"the word {words[0]!r} holds a NUL byte")
        unigrams.add(words[0])
        return
    unknown = next((w for w in words if w not in unigrams), None)
    if unknown is not None:
        raise ArpaError(
            path, lineno, f"the word {unknown!r} of a {len(words)}-gram is not among the unigrams"
        )


def _looks_like_entry(line: str) -> bool:
    fields = _FIELDS.findall(line)
    return bool(fields) and _number(fields[0]) is not None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
