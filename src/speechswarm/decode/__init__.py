"""Turning model outputs (log_probs (N, T', V), out_lens (N,)) into token ids.

    decoder = make_decoder(DecoderOptions("beam", lm="lm.arpa"), tokenizer.tokens)
    texts = [tokenizer.decode(ids) for ids in decoder.decode(log_probs, out_lens)]

`greedy` is best-path decoding (argmax per frame, CTC collapse); `beam` is CTC prefix beam
search with an optional word n-gram LM (flashlight-text, see `beam.py`). Every decoder takes
numpy arrays or torch tensors, and importing this package does not import torch: the
onnxruntime path (`speechswarm.onnx_runtime`) decodes without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

DECODERS = ("greedy", "beam")


class Decoder(Protocol):
    """log_probs (N, T', V) float scores, out_lens (N,) valid frames -> N lists of token ids
    (CTC-collapsed, no blanks): what `Tokenizer.decode` reads."""

    def decode(self, log_probs: Any, out_lens: Any) -> list[list[int]]: ...


@dataclass(frozen=True)
class DecoderOptions:
    """How to decode. `kind`: "greedy" or "beam". For "beam": `lm` an ARPA (or KenLM binary,
    with `lexicon`) word n-gram model or None; `alpha` the LM weight; `beta` the bonus per
    word (counters the LM's preference for few words); `beam_size` hypotheses kept per frame;
    `beam_threshold` drops hypotheses this far (in log score) below the best."""

    kind: str = "greedy"
    lm: str | os.PathLike | None = None
    lexicon: str | os.PathLike | None = None
    beam_size: int = 64
    alpha: float = 0.5
    beta: float = 1.0
    beam_threshold: float = 25.0

    def __post_init__(self) -> None:
        if self.kind not in DECODERS:
            raise ValueError(f"decoder: kind {self.kind!r} is not one of {', '.join(DECODERS)}")
        if self.kind == "greedy" and self.lm is not None:
            raise ValueError("decoder: an LM needs beam search; use --decoder beam with --lm")
        if self.beam_size < 1:
            raise ValueError(f"decoder: beam_size must be >= 1, got {self.beam_size}")


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array or (CPU/GPU) torch tensor, without importing torch."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


class GreedyDecoder:
    """Best path: the argmax class per frame, repeats merged, blanks dropped.

    Same result as `speechswarm.decode.greedy.greedy_decode` (ties to the lowest id), on
    numpy arrays so the torch-free runtime can use it.
    """

    def __init__(self, blank: int = 0) -> None:
        self.blank = blank

    def decode(self, log_probs: Any, out_lens: Any) -> list[list[int]]:
        scores, lens = _check(log_probs, out_lens, "greedy")
        best = scores.argmax(axis=-1)  # (N, T')
        out = []
        for row, n in zip(best, lens.tolist(), strict=True):
            row = row[:n]
            keep = np.ones(n, dtype=bool)
            keep[1:] = row[1:] != row[:-1]  # first frame of each run
            out.append([int(i) for i in row[keep & (row != self.blank)]])
        return out


def make_decoder(options: DecoderOptions, tokens: Sequence[str]) -> Decoder:
    """The decoder `options` describe, for a vocabulary whose index 0 is the CTC blank."""
    if options.kind == "greedy":
        return GreedyDecoder()
    from speechswarm.decode.beam import BeamDecoder

    return BeamDecoder(tokens, options)


def _check(log_probs: Any, out_lens: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    scores, lens = as_numpy(log_probs), as_numpy(out_lens).astype(np.int64)
    if scores.ndim != 3 or lens.shape != (scores.shape[0],):
        raise ValueError(
            f"{who} decoder: expected log_probs (N, T, V) and out_lens (N,), got "
            f"{tuple(scores.shape)} and {tuple(lens.shape)}"
        )
    if len(lens) and (lens.min() < 0 or lens.max() > scores.shape[1]):
        raise ValueError(f"{who} decoder: out_lens must lie in 0..{scores.shape[1]}")
    return scores, lens


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
