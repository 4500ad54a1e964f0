"""Frame arithmetic of the conv stack: integers in, integers out, no torch.

    time_reduction(((2, 2), (2, 1)))                    # 2 input frames per output frame
    output_length(100, ((41, 11), (21, 11)), ((2, 2), (2, 1)))   # 50

Kernels and strides are (freq, time) pairs, one per conv layer, as in `ModelConfig` and
`DeepSpeech2`; padding is k // 2 on both axes. The model computes its output lengths with
these functions, and data validation uses them to check that a transcript fits the frames
the model will emit, without building a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Pairs = Sequence[Sequence[int]]  # (freq, time) per conv layer


def conv_output_length(length, kernel: int, stride: int, padding: int):
    """Frames out of one convolution: floor((length + 2 * padding - kernel) / stride) + 1.

    `length` is an int or an int64 tensor; floor division keeps it exact (no float rounding).
    """
    return (length + 2 * padding - kernel) // stride + 1


def output_length(length, conv_kernels: Pairs, conv_strides: Pairs):
    """Output frames of the whole conv stack for `length` input frames (int or int64 tensor).
    With padding k // 2 every length >= 1 gives >= 1 output frame (ceil(length / stride)
    per layer for odd kernels)."""
    for (_, kt), (_, st) in zip(conv_kernels, conv_strides, strict=True):
        length = conv_output_length(length, kt, st, kt // 2)
    return length


def time_reduction(conv_strides: Pairs, output_upsample: int = 1) -> int:
    """Input frames per output frame: the product of the time strides, over the model's
    `output_upsample` (output frames per recurrent frame; it divides the product)."""
    return math.prod(int(st) for _, st in conv_strides) // int(output_upsample)


def receptive_field(conv_kernels: Pairs, conv_strides: Pairs) -> int:
    """Input frames that one output frame of the conv stack sees on the time axis."""
    field, jump = 1, 1
    for (_, kt), (_, st) in zip(conv_kernels, conv_strides, strict=True):
        field += (kt - 1) * jump
        jump *= st
    return field
