"""A unigram prior over words an LM's text never holds: the vocabulary beyond the sentences.

    speechswarm lm build --manifest data/synth/train.jsonl --prior wordfreq:50000 --out lm.arpa
    speechswarm lm build --text sentences.txt --prior counts.tsv --out lm.arpa

A beam search with an LM can only spell words of the LM's vocabulary. An LM estimated from a
few thousand sentences misses common words (on the built-in corpus, 4.5 % of the test split's
words are not in the demo LM's 16,000), and each one comes out as some other word. The prior
adds such words with frequencies from a large text: Kneser-Ney's unigram level spreads the
probability it held back (its discount mass, about a sixth here) over the prior instead of
uniformly (`lm.kneser_ney`), so every context still sums to 1 and the sentences' own n-grams
are untouched.

A prior spec is one of:
- `wordfreq:N`: the N most frequent English words of the `wordfreq` package (Speer et al.;
  web, subtitles, books, news) that the alphabet spells, with their frequencies;
- a path to a text file, one `word<TAB>count` (or `word count`) per line; a line with a word
  only counts 1.

Words are lower-cased; a word with a character outside the alphabet is left out (counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechswarm.data.text import DEFAULT_ALPHABET
from speechswarm.errors import DataError, InputNotFoundError, UnavailableError, UsageError

WORDFREQ_HINT = "pip install wordfreq (or: pip install -e '.[lm]')"


@dataclass(frozen=True)
class WordPrior:
    """word -> relative frequency (> 0; need not sum to 1), from `source`; `dropped`: words
    the alphabet cannot spell."""

    weights: dict[str, float]
    source: str
    dropped: int = 0


def load_prior(spec: str, alphabet: str = DEFAULT_ALPHABET) -> WordPrior:
    """The prior a spec names (see the module docstring). A word listed twice (or in two
    cases) sums its counts."""
    letters = set(alphabet) - {" "}
    if spec.startswith("wordfreq:"):
        limit = _positive_int(spec.removeprefix("wordfreq:"), spec)
        words = _wordfreq_words(limit)
    else:
        limit, words = None, _file_words(Path(spec))
    weights: dict[str, float] = {}
    dropped = 0
    for word, weight in words:
        word = word.lower()
        if not word or not set(word) <= letters or not weight > 0:
            dropped += 1
        elif word in weights or limit is None or len(weights) < limit:
            weights[word] = weights.get(word, 0.0) + weight
    if not weights:
        raise DataError(f"word prior {spec}: no word the alphabet {alphabet!r} spells")
    return WordPrior(weights, spec, dropped)


def _positive_int(text: str, spec: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise UsageError(
            f"word prior {spec!r}: write wordfreq:N with N > 0 words, e.g. wordfreq:50000"
        )
    return n


def _wordfreq_words(size: int) -> list[tuple[str, float]]:
    """Up to `size` spellable words, most frequent first, with wordfreq's frequencies. Asks
    for twice as many: wordfreq's list holds digits, hyphens and other scripts too."""
    try:
        from wordfreq import top_n_list, word_frequency
    except ImportError as e:
        raise UnavailableError(
            f"word prior wordfreq:{size} needs wordfreq: {WORDFREQ_HINT} ({e})"
        ) from None
    return [(w, word_frequency(w, "en")) for w in top_n_list("en", 2 * size)]


def _file_words(path: Path) -> list[tuple[str, float]]:
    if not path.is_file():
        raise InputNotFoundError(
            f"word prior {path} does not exist: give a file of `word<TAB>count` lines, or "
            "wordfreq:N"
        )
    words = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            count = float(fields[1]) if len(fields) > 1 else 1.0
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected `word<TAB>count`, got {line!r}") from None
        words.append((fields[0], count))
    return words
