"""Greedy (best-path) CTC decoding: the most likely class per frame, then the CTC collapse.

    ids = greedy_decode(log_probs, out_lens)       # list of token-id lists
    texts = [tokenizer.decode(x) for x in ids]

Greedy decoding is what the CTC loss was trained for when no language model is used; it
is exact for the best path, not for the best label sequence (beam search sums paths).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the ONNX runtime path imports this without torch
    import torch


def ctc_collapse(ids: Iterable[int], blank: int = 0) -> list[int]:
    """Merge runs of equal ids, then drop blanks: [1, 1, 0, 1, 2, 2, 0] -> [1, 1, 2].

    A blank between two equal ids keeps both ("a _ a" -> "aa"); without it they merge
    ("a a" -> "a").
    """
    out: list[int] = []
    prev = None
    for i in ids:
        i = int(i)
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def greedy_decode(
    log_probs: torch.Tensor, out_lens: torch.Tensor, blank: int = 0
) -> list[list[int]]:
    """log_probs: (N, T', V) scores (log-probabilities or logits), out_lens: (N,) int64
    valid frames -> N lists of token ids (collapsed, blanks removed).

    Frames t >= out_lens[n] are padding and ignored. Ties in the argmax go to the lowest id.
    """
    if log_probs.dim() != 3 or out_lens.shape != (log_probs.shape[0],):
        raise ValueError(
            f"greedy_decode: expected log_probs (N, T, V) and out_lens (N,), got "
            f"{tuple(log_probs.shape)} and {tuple(out_lens.shape)}"
        )
    best = log_probs.argmax(dim=-1).cpu().tolist()  # (N, T') python ints, one transfer
    lens = out_lens.cpu().tolist()
    return [ctc_collapse(row[:n], blank) for row, n in zip(best, lens, strict=True)]
