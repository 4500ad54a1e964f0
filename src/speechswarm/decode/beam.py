"""CTC prefix beam search with shallow fusion of a word n-gram LM (flashlight-text).

    speechswarm eval --checkpoint best.pt --manifest test.jsonl --decoder beam --lm lm.arpa

The search is flashlight's (the decoder torchaudio's `ctc_decoder` wraps; KenLM built in,
wheel on PyPI, no compiler needed). Each hypothesis's score is

    log p_ctc(prefix | audio) + alpha * ln p_lm(words) + beta * |words|

with path probabilities summed over alignments (`log_add`), i.e. prefix beam search.
Without an LM it runs lexicon-free over the tokens. With an LM it runs over a lexicon (the
LM's words, spelled in the model's tokens, in a prefix trie), so hypotheses only hold words
the LM knows; an out-of-vocabulary word costs an error, which is why the LM's text should
cover the domain's words (measured trade-off: docs/decoding.md).

flashlight's KenLM scores are log10 (as in ARPA); alpha multiplies them as they are.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from speechswarm.decode.interface import DecoderOptions, check_scores
from speechswarm.errors import DataError, InputNotFoundError, UnavailableError, UsageError
from speechswarm.native_output import quiet_native_output

INSTALL_HINT = "pip install 'speechswarm[lm]' (flashlight-text)"
UNK = "<unk>"


def _flashlight():
    try:
        from flashlight.lib.text import decoder, dictionary
    except ImportError as e:
        raise UnavailableError(f"beam search needs flashlight-text: {INSTALL_HINT} ({e})") from None
    return decoder, dictionary


class BeamDecoder:
    """Beam search over (N, T', V) log-probs; `tokens[0]` is the CTC blank.

    The word separator is the token " " (character vocabularies); an LM needs one, since
    its words are spelled in single characters.
    """

    def __init__(self, tokens: Sequence[str], options: DecoderOptions, log_add: bool = True):
        fl, fl_dict = _flashlight()
        self.tokens, self.options = list(tokens), options
        self.blank = 0
        self.sil = self.tokens.index(" ") if " " in self.tokens else self.blank
        self.words: list[str] = []
        self.skipped_words = 0
        if options.lm is None:
            opts = fl.LexiconFreeDecoderOptions(
                beam_size=options.beam_size,
                beam_size_token=len(self.tokens),
                beam_threshold=options.beam_threshold,
                lm_weight=0.0,
                sil_score=0.0,
                log_add=log_add,
                criterion_type=fl.CriterionType.CTC,
            )
            self._decoder = fl.LexiconFreeDecoder(opts, fl.ZeroLM(), self.sil, self.blank, [])
            return
        if self.sil == self.blank:
            raise UsageError(
                "beam search with an LM needs a vocabulary with a space token (a character "
                "tokenizer); this model's tokens have none (SentencePiece?); decode it without --lm"
            )
        words = lexicon_words(options.lm, options.lexicon)
        index = {t: i for i, t in enumerate(self.tokens)}
        spellable = [w for w in words if w and all(c in index and c != " " for c in w)]
        self.skipped_words = len(words) - len(spellable)
        if not spellable:
            raise DataError(
                f"language model {options.lm}: none of its {len(words)} words can be spelled "
                f"with the model's tokens {''.join(self.tokens[1:])!r}; build it from text "
                "normalised the same way (speechswarm lm build)"
            )
        self.words = spellable
        word_dict = fl_dict.Dictionary([*spellable, UNK])
        lm = _load_kenlm(options.lm, word_dict)
        trie = fl.Trie(len(self.tokens), self.sil)
        start = lm.start(False)
        for i, w in enumerate(spellable):
            _, score = lm.score(start, i)  # unigram log10 p: smeared into the trie as a look-ahead
            trie.insert([index[c] for c in w], i, score)
        trie.smear(fl.SmearingMode.MAX)
        self._lm, self._trie, self._unk = lm, trie, word_dict.get_index(UNK)
        self._log_add = log_add
        self._decoder = self._lexicon_decoder(options)

    def _lexicon_decoder(self, options: DecoderOptions):
        fl, _ = _flashlight()
        opts = fl.LexiconDecoderOptions(
            beam_size=options.beam_size,
            beam_size_token=len(self.tokens),
            beam_threshold=options.beam_threshold,
            lm_weight=options.alpha,
            word_score=options.beta,
            unk_score=-math.inf,
            sil_score=0.0,
            log_add=self._log_add,
            criterion_type=fl.CriterionType.CTC,
        )
        return fl.LexiconDecoder(
            opts, self._trie, self._lm, self.sil, self.blank, self._unk, [], False
        )

    def with_weights(self, alpha: float, beta: float) -> BeamDecoder:
        """The same LM and lexicon with other weights, without reloading the LM (tune-lm)."""
        if self.options.lm is None:
            raise ValueError("beam decoder: alpha/beta only apply with an LM")
        twin = copy.copy(self)
        twin.options = replace(self.options, alpha=alpha, beta=beta)
        twin._decoder = self._lexicon_decoder(twin.options)
        return twin

    def decode(self, log_probs: Any, out_lens: Any) -> list[list[int]]:
        return [self._collapse(path) for path in self.best_paths(log_probs, out_lens)]

    def best_paths(self, log_probs: Any, out_lens: Any) -> list[np.ndarray]:
        """The best hypothesis's frame alignment per utterance, (out_lens[n],) int64: the
        token (or blank) it took at each frame; `decode` is its CTC collapse."""
        scores, lens = check_scores(log_probs, out_lens, "beam")
        out = []
        for row, n in zip(scores, lens.tolist(), strict=True):
            if n == 0:
                out.append(np.zeros(0, dtype=np.int64))
                continue
            emissions = np.ascontiguousarray(row[:n], dtype=np.float32)  # (T', V)
            best = self._decoder.decode(emissions.ctypes.data, n, emissions.shape[1])[0]
            path = list(best.tokens)  # (T' + 2,): flashlight pads one silence frame at each end
            out.append(np.asarray(path[1:-1] if len(path) == n + 2 else path, dtype=np.int64))
        return out

    def _collapse(self, path: Sequence[int]) -> list[int]:
        """Frame-level path -> token ids: merge repeats, drop blanks (the CTC collapse)."""
        ids: list[int] = []
        prev = None
        for t in path:
            if t != prev and t != self.blank and 0 <= t < len(self.tokens):
                ids.append(int(t))
            prev = t
        return ids


def lexicon_words(lm: str | os.PathLike, lexicon: str | os.PathLike | None = None) -> list[str]:
    """The words to decode into: `lexicon` (one word per line, first column) if given, else
    the unigrams of the ARPA file `lm`. A binary KenLM file does not list its words."""
    from speechswarm.decode.arpa import arpa_words

    lm = Path(lm)
    if not lm.is_file():
        raise InputNotFoundError(
            f"language model {lm} does not exist; build one with "
            "`speechswarm lm build --manifest TRAIN.jsonl --out lm.arpa`"
        )
    if lexicon is not None:
        lexicon = Path(lexicon)
        if not lexicon.is_file():
            raise InputNotFoundError(f"lexicon {lexicon} does not exist (one word per line)")
        lines = lexicon.read_text(encoding="utf-8").splitlines()
        return list(dict.fromkeys(line.split()[0] for line in lines if line.strip()))
    if _is_kenlm_binary(lm):
        raise DataError(
            f"language model {lm} is not an ARPA text file (a KenLM binary?); pass its word "
            "list with --lexicon WORDS.txt (one word per line), or use the ARPA file"
        )
    return arpa_words(lm)  # the header and unigrams, checked (ArpaError names the line)


def _is_kenlm_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"mmap lm "  # KenLM's binary header: "mmap lm http://kheafield..."


def _load_kenlm(path: str | os.PathLike, word_dict):
    try:
        with quiet_native_output():  # KenLM prints a progress bar and a "build a binary" hint
            from flashlight.lib.text.decoder.kenlm import KenLM

            return KenLM(str(path), word_dict)
    except Exception as e:  # KenLM raises plain RuntimeErrors with its own message
        if not _is_kenlm_binary(Path(path)):
            from speechswarm.decode.arpa import check_arpa

            check_arpa(path)  # ArpaError naming the line, for what a strict reading finds
        raise DataError(
            f"language model {path}: KenLM could not read it ({_kenlm_reason(e)}); rebuild "
            "it with `speechswarm lm build`"
        ) from None


def _kenlm_reason(e: Exception) -> str:
    """KenLM's message on one line, without its C++ source location ("/tmp/pip-req-build-
    .../read_arpa.cc:85 in void lm::ReadNGramHeader(...) threw FormatLoadException.")."""
    lines = str(e).strip().splitlines()
    if len(lines) > 1 and re.search(r"\.(?:cc|hh):\d+ in ", lines[0]):
        lines = lines[1:]
    return " ".join(" ".join(lines).split())[:300] or type(e).__name__
