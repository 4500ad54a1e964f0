"""Turning model outputs (log_probs (N, T', V), out_lens (N,)) into token ids.

`greedy` is best-path decoding (argmax per frame, CTC collapse); other decoders live in
their own modules beside it.
"""

from speechswarm.decode.greedy import ctc_collapse, greedy_decode

__all__ = ["ctc_collapse", "greedy_decode"]
