"""How a batch of padded sequences runs through one recurrent layer without reading padding.

    out = run_rnn_padded(rnn, twin, x, mask)    # CPU: per direction on padded input
    out = run_rnn_packed(rnn, x, lens)          # CUDA: cuDNN on a PackedSequence
    out = run_gru_fused(rnn, x, lens)           # CPU: the fused GRU kernel

All three give (N, T, directions * H) zero-padded outputs equal to packing's: the forward
direction is causal, and the backward one runs each utterance reversed within its length.
`model.DeepSpeech2` picks one per layer and device.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechswarm import fused_gru


def time_mask(lens: torch.Tensor, max_len: int) -> torch.Tensor:
    """(N,) lengths -> (N, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


def per_frame(fn, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame module to the valid frames only; padding stays 0.

    x: (N, T, D), mask: (N, T) bool -> (N, T, D'). BatchNorm1d applied this way takes its
    statistics over real frames, never over padding (deepspeech.pytorch counts padding).
    """
    y = fn(x[mask])  # (sum(lens), D')
    out = y.new_zeros(*mask.shape, y.shape[-1])
    out[mask] = y
    return out


def run_rnn_packed(rnn: nn.RNNBase, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """cuDNN path: x (N, T, D) -> (N, T, directions * H), zero-padded; lens on the CPU."""
    packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


def run_rnn_padded(
    rnn: nn.RNNBase, twin: nn.RNNBase, x: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """CPU path, same result as packing: x (N, T, D) -> (N, T, directions * H), zero-padded.

    PyTorch's CPU RNN on a PackedSequence slices the input once per step and each slice's
    backward zero-fills a full-size gradient: fwd+bwd time grows with T^2 (measured, 2 CPU
    threads, BiGRU 192, batch 16: 0.18 s at 125 steps, 1.75 s at 500; padded: 0.08, 0.36 s).
    So each direction runs on padded input with the `rnn`'s own weights (`twin` is a
    unidirectional module of the same shape on the meta device, used as a template): the
    forward direction is causal, so padding after the end cannot reach valid outputs; the
    backward direction runs on each utterance reversed within its length, so its padding
    also comes last.

    Under autocast the weights are cast to its dtype here, once per call: autocast's cast
    cache is off under `torch.inference_mode`, so transcription re-cast them at every step.
    Without grad the input is laid out time-major first: for a weight that does not require
    grad, `matmul` runs a batch-first input projection as T GEMMs on T copies of the weight.
    """
    names = [n for n, _ in twin.named_parameters()]  # weight_ih_l0, weight_hh_l0, biases
    dtype = torch.get_autocast_dtype(x.device.type)
    cast = torch.is_autocast_enabled(x.device.type)
    layout = time_major if cast and not torch.is_grad_enabled() else lambda t: t

    def weights(suffix: str = "") -> dict[str, torch.Tensor]:
        ws = {n: getattr(rnn, n + suffix) for n in names}
        return {n: w.to(dtype) for n, w in ws.items()} if cast else ws

    out, _ = functional_call(twin, weights(), (layout(x),))
    if rnn.bidirectional:
        rev = reverse_index(mask)
        back, _ = functional_call(twin, weights("_reverse"), (layout(gather_time(x, rev)),))
        out = torch.cat([out, gather_time(back, rev)], dim=-1)
    return out.masked_fill(~mask[..., None], 0.0)


def run_gru_fused(
    rnn: nn.GRU, x: torch.Tensor, lens: torch.Tensor, sum_directions: bool = False
) -> torch.Tensor:
    """CPU training path of a GRU on the fused kernel (speechswarm.fused_gru): x (N, T, D),
    lens (N,) on the CPU -> (N, T, directions * H), or (N, T, H) with `sum_directions`,
    zero-padded, the reverse direction run within each utterance's length as in
    `run_rnn_padded`, without reversed copies."""
    cd = fused_gru.compute_dtype(x)
    with torch.autocast("cpu", enabled=False):
        return fused_gru.gru_layer(rnn, x, lens, cd, sum_directions)


def reverse_index(mask: torch.Tensor) -> torch.Tensor:
    """(N, T) valid-frame mask -> (N, T) int64 time index that reverses each utterance
    within its length and leaves its padding in place; the index is its own inverse."""
    t = torch.arange(mask.shape[1], device=mask.device)[None, :]  # (1, T)
    lens = mask.sum(1, keepdim=True)  # (N, 1)
    return torch.where(t < lens, lens - 1 - t, t)


def gather_time(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (N, T, D), index (N, T) -> (N, T, D) with out[n, t] = x[n, index[n, t]]."""
    return x.gather(1, index[..., None].expand_as(x))


def time_major(x: torch.Tensor) -> torch.Tensor:
    """(N, T, D) -> the same (N, T, D) values stored as (T, N, D): a batch-first RNN's
    input projection is then one matrix product over all N * T frames."""
    return x.transpose(0, 1).contiguous().transpose(0, 1)
