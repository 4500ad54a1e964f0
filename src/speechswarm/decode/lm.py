"""Word n-gram language models: interpolated modified Kneser-Ney estimation, ARPA files.

    speechswarm lm build --manifest data/synth/train.jsonl --order 3 --out lm.arpa

KenLM's estimator (`lmplz`) is not on PyPI (the `kenlm` package only queries), so the ARPA
file is estimated here, the way `lmplz` does it (Chen & Goodman 1998; Heafield et al. 2013):

- Each sentence is `<s> w1 .. wk </s>`. The highest order uses raw counts; lower orders use
  *adjusted* counts, the number of distinct words seen before the n-gram (its continuation
  count), except for n-grams that start with `<s>`, which nothing can precede (raw counts).
- Each order n has three discounts from its count-of-counts t1..t4 (of adjusted counts):
  Y = t1 / (t1 + 2 t2), D1 = 1 - 2Y t2/t1, D2 = 2 - 3Y t3/t2, D3+ = 3 - 4Y t4/t3. On a text
  too small for them (a t_k of 0, or a D outside (0, k]) the fallback 0.5, 1, 1.5 is used,
  as `lmplz --discount_fallback` does.
- p(w | h) = (a(hw) - D(a(hw))) / a(h.) + gamma(h) p(w | h'), with
  gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / a(h.) and h' = h without its first word;
  unigrams interpolate with the uniform distribution over the vocabulary (`</s>` and `<unk>`
  included, `<s>` never predicted). So every context's distribution sums to exactly 1.
- With a word prior (`decode.word_prior`), the vocabulary also holds the prior's words, and
  unigrams interpolate with (1 - lambda) uniform + lambda prior instead: the discount mass
  reaches words the text never had, in proportion to their frequency elsewhere.
- The ARPA file holds log10 p(w | h) of every seen n-gram and log10 gamma(h) as the backoff
  of every context; an unseen n-gram backs off: p(w | h) = gamma(h) p(w | h').

A binary KenLM file (`.bin`) needs KenLM's `build_binary`, which PyPI does not ship: write
ARPA and convert it where KenLM is built (`build_binary lm.arpa lm.bin`); the decoder reads
both.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from speechswarm.decode.arpa import arpa_words, iter_arpa  # noqa: F401 (arpa_words: its old home)
from speechswarm.errors import DataError, InputNotFoundError, UsageError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
NO_PROB = -99.0  # log10 "probability" of <s>, which the model never predicts (lmplz writes -99)

NGram = tuple[str, ...]


@dataclass(frozen=True)
class NGramModel:
    """An estimated back-off model: per order n (1-based, index n - 1), n-gram -> log10 p and
    context -> log10 backoff. `discounts[n - 1]` = (D1, D2, D3+) used at order n."""

    order: int
    log10_probs: tuple[dict[NGram, float], ...]
    log10_backoffs: tuple[dict[NGram, float], ...]
    discounts: tuple[tuple[float, float, float], ...]
    fallback_orders: tuple[int, ...] = ()  # orders whose discounts fell back to the defaults

    @property
    def vocabulary(self) -> list[str]:
        """Every word the model knows (unigrams), `<s>`, `</s>` and `<unk>` included."""
        return [g[0] for g in self.log10_probs[0]]

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) with back-off; unknown words score as `<unk>`.

        Only the last `order - 1` context words matter.
        """
        unigrams = self.log10_probs[0]
        word = word if (word,) in unigrams else UNK
        context = tuple(w if (w,) in unigrams else UNK for w in context)
        context = context[max(0, len(context) - self.order + 1) :] if self.order > 1 else ()
        backoff = 0.0
        for start in range(len(context) + 1):
            h = context[start:]
            p = self.log10_probs[len(h)].get((*h, word))
            if p is not None:
                return backoff + p
            backoff += self.log10_backoffs[len(h) - 1].get(h, 0.0) if h else 0.0
        raise AssertionError("unreachable: every vocabulary word has a unigram")

    def sentence_log10_prob(self, words: Sequence[str]) -> float:
        """log10 p(<s> words </s>): the sum of each word's (and </s>'s) conditional."""
        history: list[str] = [BOS]
        total = 0.0
        for w in [*words, EOS]:
            total += self.log10_prob(w, history)
            history.append(w)
        return total


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[Counter[NGram]]:
    """Raw counts of every n-gram, n = 1..order, of `<s> words </s>` per sentence.

    counts[n - 1][ngram]; the unigram `<s>` is counted once per sentence like any word.
    """
    if order < 1:
        raise UsageError(f"lm: order must be >= 1, got {order}")
    counts: list[Counter[NGram]] = [Counter() for _ in range(order)]
    for words in sentences:
        seq = (BOS, *words, EOS)
        for n in range(1, order + 1):
            c = counts[n - 1]
            for i in range(len(seq) - n + 1):
                c[seq[i : i + n]] += 1
    return counts


def adjusted_counts(raw: list[Counter[NGram]]) -> list[Counter[NGram]]:
    """Kneser-Ney counts: raw for the highest order and for n-grams starting with `<s>`;
    otherwise the number of distinct words seen immediately before the n-gram."""
    order = len(raw)
    adjusted = [Counter() for _ in range(order)]
    adjusted[-1] = Counter(raw[-1])
    for n in range(order - 1, 0, -1):  # orders n = order-1 .. 1 (index n - 1)
        continuation: Counter[NGram] = Counter()
        for longer in raw[n]:  # (n+1)-grams: one distinct left word each
            continuation[longer[1:]] += 1
        for gram, c in raw[n - 1].items():
            adjusted[n - 1][gram] = c if gram[0] == BOS else continuation[gram]
    return adjusted


def discounts(counts: Counter[NGram]) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from the count-of-counts of one order, and whether the fallback was used.

    Y = t1 / (t1 + 2 t2); Dk = k - (k + 1) Y t_{k+1} / t_k (Chen & Goodman, eq. 26).
    """
    t = Counter(c for c in counts.values() if c <= 4)  # t_k: n-grams seen exactly k times
    t1, t2, t3, t4 = (t[k] for k in (1, 2, 3, 4))
    if min(t1, t2, t3, t4) == 0:
        return FALLBACK_DISCOUNTS, True
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0 < dk <= k for k, dk in enumerate(d, start=1)):
        return FALLBACK_DISCOUNTS, True
    return d, False


def kneser_ney(
    raw: list[Counter[NGram]], prior: Mapping[str, float] | None = None, prior_weight: float = 0.5
) -> NGramModel:
    """Interpolated modified Kneser-Ney from `count_ngrams` output (see the module docstring).

    `prior` (word -> relative frequency) adds its words to the vocabulary and takes the share
    `prior_weight` of the distribution the unigrams interpolate with (the rest stays uniform)."""
    order = len(raw)
    adjusted = adjusted_counts(raw)
    words = {g[0] for g in raw[0]} | set(prior or ())
    vocab = sorted((words | {EOS, UNK}) - {BOS})  # what can be predicted
    base = _unigram_base(vocab, prior, prior_weight)
    ds, fallbacks = [], []
    for n in range(1, order + 1):
        d, fell_back = discounts(adjusted[n - 1])
        ds.append(d)
        if fell_back:
            fallbacks.append(n)
    probs: list[dict[NGram, float]] = [dict() for _ in range(order)]  # linear, then log10
    gammas: list[dict[NGram, float]] = [dict() for _ in range(order)]  # contexts of order n-1
    for n in range(1, order + 1):
        d1, d2, d3 = ds[n - 1]
        by_context: dict[NGram, list[tuple[str, int]]] = defaultdict(list)
        for gram, a in adjusted[n - 1].items():
            if gram != (BOS,):  # <s> is never predicted
                by_context[gram[:-1]].append((gram[-1], a))
        for h, followers in by_context.items():
            total = sum(a for _, a in followers)
            kinds = Counter(min(a, 3) for _, a in followers)
            gamma = (d1 * kinds[1] + d2 * kinds[2] + d3 * kinds[3]) / total
            gammas[n - 1][h] = gamma
            for w, a in followers:
                discounted = (a - (d1, d2, d3)[min(a, 3) - 1]) / total
                lower = base[w] if n == 1 else probs[n - 2][(*h[1:], w)]
                probs[n - 1][(*h, w)] = discounted + gamma * lower
        if n == 1:  # words seen only in contexts (none besides <s>), the prior's and <unk>
            for w in vocab:
                probs[0].setdefault((w,), gammas[0][()] * base[w])
    log_probs = tuple({g: math.log10(p) for g, p in level.items()} for level in probs)
    log_probs[0][(BOS,)] = NO_PROB
    # The backoff of context h (an (n-1)-gram) is gamma(h) of order n, stored with h.
    log_backoffs = tuple(
        {h: math.log10(g) for h, g in gammas[n].items() if g > 0} for n in range(1, order)
    ) + ({},)
    return NGramModel(order, log_probs, log_backoffs, tuple(ds), tuple(fallbacks))


def _unigram_base(
    vocab: Sequence[str], prior: Mapping[str, float] | None, weight: float
) -> dict[str, float]:
    """What the unigrams interpolate with: uniform over `vocab`, or (1 - weight) uniform +
    weight x the prior normalised over `vocab` (words outside it dropped)."""
    uniform = 1.0 / len(vocab)
    if not prior:
        return dict.fromkeys(vocab, uniform)
    if not 0.0 < weight < 1.0:  # 1 would leave <unk> and words the prior lacks no mass
        raise UsageError(f"lm: the prior's weight must lie in (0, 1), got {weight:g}")
    total = sum(prior.get(w, 0.0) for w in vocab)
    return {w: (1.0 - weight) * uniform + weight * prior.get(w, 0.0) / total for w in vocab}


def write_arpa(model: NGramModel, path: str | os.PathLike) -> Path:
    """Write the model as an ARPA text file (written to a temporary name, then renamed)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n, level in enumerate(model.log10_probs, start=1):
            f.write(f"ngram {n}={len(level)}\n")
        for n, level in enumerate(model.log10_probs, start=1):
            f.write(f"\n\\{n}-grams:\n")
            backoffs = model.log10_backoffs[n - 1]
            for gram in sorted(level):
                line = f"{level[gram]:.7g}\t{' '.join(gram)}"
                if n < model.order and gram in backoffs:
                    line += f"\t{backoffs[gram]:.7g}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    os.replace(tmp, path)
    return path


def read_arpa(path: str | os.PathLike) -> NGramModel:
    """Read an ARPA file (ours or any other tool's); errors name the file and line
    (`decode.arpa.ArpaError`)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"language model {path} does not exist; build one with "
            "`speechswarm lm build --manifest TRAIN.jsonl --out lm.arpa`"
        )
    probs: list[dict[NGram, float]] = []
    backoffs: list[dict[NGram, float]] = []
    for order, gram, log10_prob, log10_backoff in iter_arpa(path):
        while len(probs) < order:
            probs.append({})
            backoffs.append({})
        probs[order - 1][gram] = log10_prob
        if log10_backoff is not None:
            backoffs[order - 1][gram] = log10_backoff
    return NGramModel(len(probs), tuple(probs), tuple(backoffs), discounts=())


def lm_sentences(texts: Iterable[str], exclude: Iterable[str] = ()) -> tuple[list[list[str]], int]:
    """Word lists of the non-empty texts, minus any whose normalised text is in `exclude`
    (e.g. test sentences, so an LM cannot memorise them); returns (sentences, excluded)."""
    banned = {" ".join(t.split()) for t in exclude}
    out, dropped = [], 0
    for t in texts:
        words = t.split()
        if not words:
            continue
        if " ".join(words) in banned:
            dropped += 1
            continue
        out.append(words)
    return out, dropped


def build_lm(
    sentences: Sequence[Sequence[str]],
    order: int,
    out: str | os.PathLike,
    prior: Mapping[str, float] | None = None,
    prior_weight: float = 0.5,
) -> NGramModel:
    """Estimate an order-`order` model from word lists (with a word prior, see `kneser_ney`)
    and write it as ARPA to `out`."""
    out = Path(out)
    if out.suffix == ".bin":
        raise UsageError(
            f"lm build: cannot write {out}: binary KenLM files need KenLM's build_binary, "
            "which PyPI does not ship; write lm.arpa (the decoder reads ARPA) and convert it "
            "with `build_binary lm.arpa lm.bin` where KenLM is built"
        )
    if not sentences:
        raise DataError("lm build: no sentences to estimate from (empty text?)")
    model = kneser_ney(count_ngrams(sentences, order), prior, prior_weight)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_arpa(model, out)
    return model


def build_lm_from(
    out: str | os.PathLike,
    *,
    order: int = 3,
    manifest: str | os.PathLike | None = None,
    text: str | os.PathLike | None = None,
    exclude: Sequence[str | os.PathLike] = (),
    prior: str | None = None,
    prior_weight: float = 0.5,
) -> NGramModel:
    """`speechswarm lm build`: estimate an order-`order` LM from the transcripts of
    `manifest` or the lines of the text file `text` (normalised here as transcripts are),
    minus every sentence that is a transcript of an `exclude` manifest (e.g. the test set),
    with the word prior `prior` names (`decode.word_prior`) if given; write it as ARPA to
    `out` and print a summary line (and a note on stderr when an order had too little text
    for estimated discounts)."""
    from speechswarm.data.manifest import read_manifest
    from speechswarm.data.text import normalize_text
    from speechswarm.decode.word_prior import load_prior

    if (manifest is None) == (text is None):
        raise UsageError("lm build: give exactly one of a manifest or a text file")
    if manifest is not None:
        texts, source = [u.text for u in read_manifest(manifest)], manifest
    else:
        path = Path(text)
        if not path.is_file():
            raise InputNotFoundError(f"lm build: text file {path} does not exist")
        lines = path.read_text(encoding="utf-8").splitlines()
        texts, source = [normalize_text(line) for line in lines], text
    banned = [u.text for m in exclude for u in read_manifest(m)]
    sentences, dropped = lm_sentences(texts, banned)
    words = load_prior(prior) if prior else None
    start = time.perf_counter()
    model = build_lm(sentences, order, out, words and words.weights, prior_weight)
    sizes = ", ".join(f"{len(level):,} {n}-grams" for n, level in enumerate(model.log10_probs, 1))
    print(
        f"lm: order {order} from {len(sentences):,} sentences of {source}"
        + (f" ({dropped:,} excluded)" if dropped else "")
        + (f", prior {prior} ({len(words.weights):,} words)" if words else "")
        + f": {sizes} -> {out} ({time.perf_counter() - start:.1f} s)"
    )
    if model.fallback_orders:
        print(
            f"lm: orders {list(model.fallback_orders)} had too little text for estimated "
            "discounts; used 0.5/1/1.5 (more text gives a better model)",
            file=sys.stderr,
        )
    return model
