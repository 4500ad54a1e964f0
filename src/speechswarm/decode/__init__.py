"""Turning model outputs (log_probs (N, T', V), out_lens (N,)) into token ids.

    decoder = make_decoder(DecoderOptions("beam", lm="lm.arpa"), tokenizer.tokens)
    texts = [tokenizer.decode(ids) for ids in decoder.decode(log_probs, out_lens)]

`greedy` is best-path decoding (argmax per frame, CTC collapse); `beam` is CTC prefix beam
search with an optional word n-gram LM (flashlight-text, see `beam.py`); `interface.py` holds
what they share (the `Decoder` protocol, `DecoderOptions`, the input check). Every decoder takes
numpy arrays or torch tensors, and importing this package does not import torch: the
onnxruntime path (`speechswarm.onnx_runtime`) decodes without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from speechswarm.decode.interface import DECODERS, Decoder, DecoderOptions, as_numpy, check_scores


class GreedyDecoder:
    """Best path: the argmax class per frame, repeats merged, blanks dropped.

    Same result as `speechswarm.decode.greedy.greedy_decode` (ties to the lowest id), on
    numpy arrays so the torch-free runtime can use it.
    """

    def __init__(self, blank: int = 0) -> None:
        self.blank = blank

    def decode(self, log_probs: Any, out_lens: Any) -> list[list[int]]:
        out = []
        for row in self.best_paths(log_probs, out_lens):
            keep = np.ones(len(row), dtype=bool)
            keep[1:] = row[1:] != row[:-1]  # first frame of each run
            out.append([int(i) for i in row[keep & (row != self.blank)]])
        return out

    def best_paths(self, log_probs: Any, out_lens: Any) -> list[np.ndarray]:
        """The frame path of each utterance: (out_lens[n],) int64, the argmax per frame
        (what `decode` collapses; `timestamps.word_timings` reads it)."""
        scores, lens = check_scores(log_probs, out_lens, "greedy")
        best = scores.argmax(axis=-1)  # (N, T')
        return [row[:n].astype(np.int64) for row, n in zip(best, lens.tolist(), strict=True)]


def make_decoder(options: DecoderOptions, tokens: Sequence[str]) -> Decoder:
    """The decoder `options` describe, for a vocabulary whose index 0 is the CTC blank."""
    if options.kind == "greedy":
        return GreedyDecoder()
    from speechswarm.decode.beam import BeamDecoder

    return BeamDecoder(tokens, options)


def __getattr__(name: str):
    # The torch-based greedy functions load on first use, so `import speechswarm.decode`
    # stays torch-free.
    if name in ("ctc_collapse", "greedy_decode"):
        from speechswarm.decode import greedy

        return getattr(greedy, name)
    raise AttributeError(f"module 'speechswarm.decode' has no attribute {name!r}")


__all__ = [
    "DECODERS",
    "Decoder",
    "DecoderOptions",
    "GreedyDecoder",
    "as_numpy",
    "ctc_collapse",
    "greedy_decode",
    "make_decoder",
]
