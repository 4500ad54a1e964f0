"""What every decoder shares: the `Decoder` protocol, `DecoderOptions`, the input check.

    options = DecoderOptions("beam", lm="lm.arpa", alpha=0.5, beta=1.0)

numpy only (no torch, no flashlight), so the onnxruntime path and `beam.py` import it
without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from speechswarm.errors import UsageError

DECODERS = ("greedy", "beam")


class Decoder(Protocol):
    """log_probs (N, T', V) float scores, out_lens (N,) valid frames -> N lists of token ids
    (CTC-collapsed, no blanks): what `Tokenizer.decode` reads."""

    def decode(self, log_probs: Any, out_lens: Any) -> list[list[int]]: ...

    def best_paths(self, log_probs: Any, out_lens: Any) -> list[np.ndarray]:
        """The frame path behind each of `decode`'s answers: (out_lens[n],) int64 token ids
        (blank included) whose CTC collapse is that answer; word timestamps read it."""
        ...


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

    @classmethod
    def from_args(cls, args) -> DecoderOptions:
        """The options a command's --decoder, --lm, --lexicon, --beam-size, --alpha and
        --beta give; --lm without --decoder means beam search."""
        kind = args.decoder or ("beam" if args.lm else "greedy")
        if args.lm and kind == "greedy":
            raise UsageError("--lm needs beam search: drop --decoder greedy or use --decoder beam")
        return cls(
            kind,
            lm=args.lm,
            lexicon=args.lexicon,
            beam_size=args.beam_size,
            alpha=args.alpha,
            beta=args.beta,
        )

    def __post_init__(self) -> None:
        if self.kind not in DECODERS:
            raise UsageError(f"decoder: kind {self.kind!r} is not one of {', '.join(DECODERS)}")
        if self.kind == "greedy" and self.lm is not None:
            raise UsageError("decoder: an LM needs beam search; use --decoder beam with --lm")
        if self.beam_size < 1:
            raise UsageError(f"decoder: beam_size must be >= 1, got {self.beam_size}")


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array or (CPU/GPU) torch tensor, without importing torch."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def check_scores(log_probs: Any, out_lens: Any, who: str) -> tuple[np.ndarray, np.ndarray]:
    """(log_probs, out_lens) as numpy arrays after checking their shapes and lengths; errors
    name the decoder `who`."""
    scores, lens = as_numpy(log_probs), as_numpy(out_lens).astype(np.int64)
    if scores.ndim != 3 or lens.shape != (scores.shape[0],):
        raise ValueError(
            f"{who} decoder: expected log_probs (N, T, V) and out_lens (N,), got "
            f"{tuple(scores.shape)} and {tuple(lens.shape)}"
        )
    if len(lens) and (lens.min() < 0 or lens.max() > scores.shape[1]):
        raise ValueError(f"{who} decoder: out_lens must lie in 0..{scores.shape[1]}")
    return scores, lens
