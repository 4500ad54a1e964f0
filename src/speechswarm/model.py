"""DeepSpeech2-style CTC acoustic model: 2-D convolutions, recurrent layers, per-frame softmax.

    .venv/bin/python -c "from speechswarm.build import build_model; \
from speechswarm.config import load_config; print(build_model(load_config('tiny').model, 80, 29).describe())"

Architectures are the `model:` sections of the presets (src/speechswarm/configs/*.yaml);
`speechswarm.build.build_model` turns one into a DeepSpeech2.

Architecture (Amodei et al. 2016, "Deep Speech 2"; layer details follow deepspeech.pytorch
and the MLPerf reference):

    feats (N, T, F) -> (N, 1, F, T)
    1-3 x [Conv2d -> BatchNorm2d -> Hardtanh(0, 20) -> zero padded frames]
    (N, C, F', T') -> (N, T', C*F')
    L x [(BatchNorm1d, except layer 0) -> (dropout) -> GRU/LSTM/RNN]
    (Lookahead conv -> Hardtanh(0, 20), unidirectional only)
    (dropout) -> BatchNorm1d -> Linear (V x output_upsample) -> log_softmax (float32)

Kernels and strides are written (freq, time), as in the MLPerf reference. Padding is k // 2
on both axes (deepspeech.pytorch), so a T-frame input always gives >= 1 output frame.

Two choices make an utterance's outputs (in eval mode) independent of its batch neighbours:
padded time steps are re-zeroed after every conv layer (deepspeech.pytorch's MaskConv), and
the recurrent layers never read padding (packed sequences on CUDA; on the CPU an equivalent,
faster per-direction scheme, see `run_rnn_padded`). The sequence-wise BatchNorm1d layers
normalise only the valid frames, unlike deepspeech.pytorch, whose statistics also count
padding. BatchNorm2d in the conv stack still sees the zeroed padding
in training mode (its batch statistics depend on the batch, as any BatchNorm's do).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speechswarm import frames, fused_gru
from speechswarm.errors import ConfigError
from speechswarm.frames import conv_output_length
from speechswarm.recurrence import (
    per_frame,
    run_gru_fused,
    run_rnn_packed,
    run_rnn_padded,
    time_mask,
)

_RNN_CLASSES = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}
# Weight matrices per recurrent cell: GRU has 3 gates, LSTM 4, a plain RNN 1.
_RNN_GATES = {"gru": 3, "lstm": 4, "rnn": 1}


class Lookahead(nn.Module):
    """Row convolution (DS2 section 3.7): each channel mixes the current and `lookahead`
    future frames with its own weights (a depthwise 1-D conv), so a unidirectional model
    sees a little future context without a backward RNN.

    x: (N, T, H), frames past each utterance's end must be 0 -> (N, T, H).
    """

    def __init__(self, channels: int, lookahead: int):
        super().__init__()
        self.lookahead = lookahead
        self.conv = nn.Conv1d(channels, channels, lookahead + 1, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.transpose(1, 2), (0, self.lookahead))  # (N, H, T + lookahead), zeros
        return self.conv(x).transpose(1, 2)  # (N, T, H)


class DeepSpeech2(nn.Module):
    """DeepSpeech2 CTC model; see the module docstring for the layer stack.

    `rnn_packing` (attribute, not an argument: it changes speed, never results): "auto" runs
    the recurrent layers on PackedSequences on CUDA (cuDNN) and on padded, per-utterance
    reversed input elsewhere (see `run_rnn_padded`); "packed" / "padded" force one path.
    `rnn_kernel` (attribute, set from train.rnn_kernel): "auto" trains GRU layers on the CPU
    with the fused kernel of `speechswarm.fused_gru` where it builds, "fused" insists on it,
    "aten" never uses it; inference uses it where it is built already (`fused_gru.applies`).

    Args:
        num_features: F, feature bins per frame.
        vocab_size: V, output classes including the CTC blank (index 0).
        conv_channels: output channels of each of the 1-3 conv layers.
        conv_kernels: (freq, time) kernel of each conv layer.
        conv_strides: (freq, time) stride of each conv layer.
        rnn_type: "gru", "lstm" or "rnn" (tanh).
        rnn_hidden: hidden units per direction.
        rnn_layers: number of recurrent layers (>= 1).
        bidirectional: run each recurrent layer in both directions.
        bidirectional_merge: "sum" the two directions (deepspeech.pytorch, MLPerf; keeps the
            width at rnn_hidden) or "concat" them (2 x rnn_hidden wide).
        lookahead: future output frames seen by the Lookahead layer; used only when
            unidirectional and > 0.
        dropout: probability on the input of each recurrent layer after the first and on the
            classifier's input; 0 disables it.
        activation: "hardtanh" (clipped ReLU at 20: deepspeech.pytorch, MLPerf) or "relu"
            (the Keras DeepSpeech2 of the P2P seed), after each conv layer.
        head_hidden: > 0 puts Linear(H, head_hidden) -> activation -> dropout before the
            classifier (the P2P seed's Dense(2u) + ReLU + Dropout); 0: none.
        out_norm: BatchNorm1d on the classifier's input (the seed has none).
        bn_momentum: every BatchNorm's running-statistics momentum, torch's convention
            (0.1; Keras' momentum 0.99 is 0.01 here).
        output_upsample: u output frames per recurrent frame (the classifier emits u x V
            logits, read as u consecutive frames); u divides the conv stack's time stride.
            Time stride 4 with u = 2 keeps 50 output frames per second for character CTC
            while the recurrent layers run on 25.
    """

    rnn_packing = "auto"
    rnn_kernel = "auto"

    def __init__(
        self,
        num_features: int,
        vocab_size: int,
        conv_channels: Sequence[int] = (32, 32),
        conv_kernels: Sequence[Sequence[int]] = ((41, 11), (21, 11)),
        conv_strides: Sequence[Sequence[int]] = ((2, 2), (2, 1)),
        rnn_type: str = "gru",
        rnn_hidden: int = 256,
        rnn_layers: int = 3,
        bidirectional: bool = True,
        bidirectional_merge: str = "sum",
        lookahead: int = 0,
        dropout: float = 0.0,
        activation: str = "hardtanh",
        head_hidden: int = 0,
        out_norm: bool = True,
        bn_momentum: float = 0.1,
        output_upsample: int = 1,
    ):
        super().__init__()
        self._settings = _check_settings(
            num_features=int(num_features),
            vocab_size=int(vocab_size),
            conv_channels=tuple(int(c) for c in conv_channels),
            conv_kernels=tuple((int(f), int(t)) for f, t in conv_kernels),
            conv_strides=tuple((int(f), int(t)) for f, t in conv_strides),
            rnn_type=str(rnn_type),
            rnn_hidden=int(rnn_hidden),
            rnn_layers=int(rnn_layers),
            bidirectional=bool(bidirectional),
            bidirectional_merge=str(bidirectional_merge),
            lookahead=int(lookahead),
            dropout=float(dropout),
            activation=str(activation),
            head_hidden=int(head_hidden),
            out_norm=bool(out_norm),
            bn_momentum=float(bn_momentum),
            output_upsample=int(output_upsample),
        )
        s = self._settings
        self.conv_kernels, self.conv_strides = s["conv_kernels"], s["conv_strides"]
        self.conv_padding = tuple((kf // 2, kt // 2) for kf, kt in self.conv_kernels)
        self._build_conv(s)
        self.bidirectional = s["bidirectional"]
        self.merge_concat = self.bidirectional and s["bidirectional_merge"] == "concat"
        out_width = s["rnn_hidden"] * (2 if self.merge_concat else 1)
        self._build_rnn(s, out_width)
        self.lookahead = None
        if not self.bidirectional and s["lookahead"] > 0:
            self.lookahead = nn.Sequential(
                Lookahead(out_width, s["lookahead"]), _activation(s["activation"])
            )
        self.dropout = nn.Dropout(s["dropout"])
        self.out_norm = nn.BatchNorm1d(out_width) if s["out_norm"] else nn.Identity()
        self.head = nn.Identity()
        if s["head_hidden"]:
            self.head = nn.Sequential(
                nn.Linear(out_width, s["head_hidden"]),
                _activation(s["activation"]),
                nn.Dropout(s["dropout"]),
            )
            out_width = s["head_hidden"]
        self.upsample = s["output_upsample"]
        self.classifier = nn.Linear(out_width, s["vocab_size"] * self.upsample)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = s["bn_momentum"]

    def _build_conv(self, s: dict[str, Any]) -> None:
        self.conv = nn.ModuleList()
        in_ch, freq = 1, s["num_features"]
        for ch, k, st, p in zip(
            s["conv_channels"], self.conv_kernels, self.conv_strides, self.conv_padding, strict=True
        ):
            self.conv.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, ch, k, stride=st, padding=p, bias=False),
                    nn.BatchNorm2d(ch),
                    _activation(s["activation"]),
                )
            )
            in_ch, freq = ch, conv_output_length(freq, k[0], st[0], p[0])
        # padding k // 2 keeps freq >= 1 for any num_features >= 1 (as on the time axis)
        self.conv_out_freq = freq
        self.rnn_input_size = in_ch * freq

    def _build_rnn(self, s: dict[str, Any], out_width: int) -> None:
        self.rnn_norms = nn.ModuleList()  # rnn_norms[i] normalises the input of rnns[i + 1]
        self.rnns = nn.ModuleList()
        rnn_cls = _RNN_CLASSES[s["rnn_type"]]
        for i in range(s["rnn_layers"]):
            width = self.rnn_input_size if i == 0 else out_width
            if i > 0:
                self.rnn_norms.append(nn.BatchNorm1d(width))
            self.rnns.append(
                rnn_cls(width, s["rnn_hidden"], bidirectional=self.bidirectional, batch_first=True)
            )
        # Weightless templates for the CPU path (_run_rnn_padded); a tuple keeps them out of
        # the module tree, state_dict and .to().
        self._twins = tuple(
            rnn_cls(r.input_size, r.hidden_size, batch_first=True, device="meta") for r in self.rnns
        )

    # ---- lengths and sizes -------------------------------------------------------------------

    def output_lengths(self, feat_lens):
        """Output frames for `feat_lens` input frames (int or int64 tensor), exactly as the
        conv stack computes them (`frames.output_length`): per layer floor((T + 2p - k) / s)
        + 1 on the time axis, times `output_upsample`. With p = k // 2 every T >= 1 gives
        >= 1 output frame."""
        return frames.output_length(feat_lens, self.conv_kernels, self.conv_strides) * self.upsample

    @property
    def time_reduction(self) -> int:
        """Input frames per output frame: the product of the time strides over
        `output_upsample`."""
        return frames.time_reduction(self.conv_strides, self.upsample)

    def receptive_field(self) -> int:
        """Input frames that one output frame of the conv stack sees on the time axis."""
        return frames.receptive_field(self.conv_kernels, self.conv_strides)

    def right_context(self) -> int | None:
        """Future input frames that output frame j needs beyond input frame j * time_reduction
        (None when bidirectional: the backward RNN reads to the utterance's end).

        A conv layer with time kernel k, stride s and padding k // 2 reads k - 1 - k // 2
        frames past s * (its output frame); going down the stack each layer's reach is
        multiplied by the strides below it. The Lookahead layer adds `lookahead` recurrent
        frames. With `output_upsample` u > 1 this is exact for the first of each recurrent
        frame's u output frames and a bound for the others (they come out together). `tiny`'s conv stack (time kernels 11, strides 2 then 1): 5 * 2 + 5 = 15;
        `stream`'s (kernels 5): 2 * 2 + 2 = 6, plus 3 x 2 for its lookahead = 12 frames.
        """
        if self.bidirectional:
            return None
        reach = 0
        for (_, kt), (_, st) in zip(
            reversed(self.conv_kernels), reversed(self.conv_strides), strict=True
        ):
            reach = reach * st + kt - 1 - kt // 2
        if self.lookahead is not None:  # lookahead counts recurrent frames
            reach += self._settings["lookahead"] * frames.time_reduction(self.conv_strides)
        return reach

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_second(self, frames_per_second: float = 100.0) -> float:
        """Analytic forward FLOPs per second of audio (one multiply-add = 2 FLOPs).

        conv layer: 2 * C_in * C_out * k_f * k_t * F_out per output frame;
        recurrent layer, per output frame and direction: 2 * G * (in * h + h * h) with
        G = 3 gates (GRU), 4 (LSTM), 1 (RNN); lookahead: 2 * H * (lookahead + 1);
        classifier: 2 * H * V. Output frames per second of a layer = frames_per_second /
        (product of time strides up to it). Biases, BatchNorm, activations and gate
        element-wise math are left out (< 1 % for these sizes). Backward costs about 2x this.
        """
        s = self._settings
        total, fps, in_ch, freq = 0.0, frames_per_second, 1, s["num_features"]
        for ch, (kf, kt), (sf, st), (pf, _) in zip(
            s["conv_channels"], self.conv_kernels, self.conv_strides, self.conv_padding, strict=True
        ):
            freq = conv_output_length(freq, kf, sf, pf)
            fps /= st
            total += 2.0 * in_ch * ch * kf * kt * freq * fps
            in_ch = ch
        h, directions = s["rnn_hidden"], 2 if self.bidirectional else 1
        for rnn in self.rnns:
            per_step = 2.0 * _RNN_GATES[s["rnn_type"]] * (rnn.input_size * h + h * h)
            total += per_step * directions * fps
        width = s["rnn_hidden"] * (2 if self.merge_concat else 1)
        if self.lookahead is not None:
            total += 2.0 * width * (s["lookahead"] + 1) * fps
        if s["head_hidden"]:
            total += 2.0 * width * s["head_hidden"] * fps
        total += 2.0 * self.classifier.in_features * self.classifier.out_features * fps
        return total

    def describe(self, frames_per_second: float = 100.0) -> str:
        """One line for people: size, cost and context of the model."""
        s = self._settings
        rf = self.receptive_field()
        direction = "bi" if self.bidirectional else "uni"
        context = "whole utterance" if self.bidirectional else f"+{s['lookahead']} output frames"
        return (
            f"DeepSpeech2: {len(self.conv)} conv + {s['rnn_layers']} x {direction}-"
            f"{s['rnn_type'].upper()} {s['rnn_hidden']}, {self.num_params() / 1e6:.2f} M params, "
            f"{self.flops_per_second(frames_per_second) / 1e9:.2f} GFLOP per audio second "
            f"(forward), time stride {self.time_reduction}, conv receptive field {rf} frames "
            f"({rf * 1000 / frames_per_second:.0f} ms), recurrent context: {context}"
        )

    # ---- settings ----------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """All constructor arguments as JSON-able data; `model_from_settings` rebuilds the model."""
        return {k: _jsonable(v) for k, v in self._settings.items()}

    # ---- forward -----------------------------------------------------------------------------

    def forward(
        self, feats: torch.Tensor, feat_lens: torch.Tensor, intermediate: Sequence[int] = ()
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """feats: (N, T, F) float32, feat_lens: (N,) int64 frames ->
        (log_probs (N, T', V) float32 log-softmax, out_lens (N,) int64 on feat_lens' device).

        Frames t >= out_lens[n] of log_probs are padding and hold meaningless values.

        `intermediate` (layer numbers k, 1 <= k < rnn_layers; intermediate CTC, Lee and
        Watanabe 2021) adds a third result: for each k the (N, T', V) log-probabilities that
        the shared classifier reads from the output of recurrent layer k, normalised by the
        BatchNorm that feeds layer k + 1. No weights are added; inference never asks for them.
        """
        lens = self._check_inputs(feats, feat_lens)  # (N,) int64 on CPU: packing needs it there
        x = feats.transpose(1, 2).unsqueeze(1)  # (N, 1, F, T)
        x = x.masked_fill(~time_mask(lens.to(x.device), x.shape[-1])[:, None, None, :], 0.0)
        for block, (_, kt), (_, st), (_, pt) in zip(
            self.conv, self.conv_kernels, self.conv_strides, self.conv_padding, strict=True
        ):
            x = block(x)  # (N, C, F', T')
            lens = conv_output_length(lens, kt, st, pt)
            # MaskConv: the frames past each utterance's end hold conv/BN/bias outputs of the
            # padding; zero them so the next layer sees exactly what a lone utterance would.
            x = x.masked_fill(~time_mask(lens.to(x.device), x.shape[-1])[:, None, None, :], 0.0)
        n, c, f, t_out = x.shape
        x = x.permute(0, 3, 1, 2).reshape(n, t_out, c * f)  # (N, T', C*F')

        taps = self._check_intermediate(intermediate)
        inter: list[torch.Tensor] = []
        mask = time_mask(lens.to(x.device), t_out)  # (N, T')
        for i in range(len(self.rnns)):
            if i in taps:  # the normalised input of layer i also feeds the classifier
                x = per_frame(self.rnn_norms[i - 1], x, mask)
                inter.append(self._log_probs(per_frame(self._classify, x, mask)))
                x = per_frame(self.dropout, x, mask)
            elif i > 0:
                norm = self.rnn_norms[i - 1]
                x = per_frame(lambda d, norm=norm: self.dropout(norm(d)), x, mask)
            x = self._run_rnn(i, x, lens, mask)  # (N, T', H, or 2H concatenated), zero-padded
        if self.lookahead is not None:
            x = self.lookahead(x)  # (N, T', H); reads the zero padding as "after the end"
        logits = per_frame(lambda d: self._classify(self.out_norm(self.dropout(d))), x, mask)
        out_lens = (lens * self.upsample).to(feat_lens.device)
        if intermediate:
            return self._log_probs(logits), out_lens, inter
        return self._log_probs(logits), out_lens

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(x))

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, T', u x V) classifier outputs -> (N, u x T', V) float32 log-probabilities: each
        recurrent frame emits `upsample` output frames. float32 even under autocast: CTC loss
        and log_softmax in bf16/fp16 lose precision."""
        n, t = logits.shape[:2]
        if self.upsample > 1:
            logits = logits.reshape(n, t * self.upsample, -1)
        return logits.float().log_softmax(dim=-1)

    def _check_intermediate(self, layers: Sequence[int]) -> frozenset[int]:
        n = len(self.rnns)
        if any(not 1 <= k < n for k in layers):
            raise ValueError(
                f"intermediate CTC layers must lie in 1..{n - 1} (a recurrent layer below the "
                f"last of {n}), got {list(layers)}"
            )
        return frozenset(layers)

    def aten_layer(self, i: int, rnn: nn.RNNBase, x: torch.Tensor, mask) -> torch.Tensor:
        """Recurrent layer `i` as ATen runs it on the CPU (`run_rnn_padded`), with the weights
        of `rnn` (a copy of `self.rnns[i]`): what `fused_gru.measured_choice` times."""
        return run_rnn_padded(rnn, self._twins[i], x, mask)

    def _run_rnn(self, i: int, x, lens, mask) -> torch.Tensor:
        """Recurrent layer i: its directions summed unless `merge_concat`."""
        packing, rnn = self.rnn_packing, self.rnns[i]
        sum_directions = self.bidirectional and not self.merge_concat
        if packing == "packed" or (packing == "auto" and x.is_cuda):
            x = run_rnn_packed(rnn, x, lens)
        elif fused_gru.applies(rnn, x, self.rnn_kernel):
            return run_gru_fused(rnn, x, lens, sum_directions)  # the kernel sums them
        else:
            x = run_rnn_padded(rnn, self._twins[i], x, mask)
        return x.view(*x.shape[:2], 2, -1).sum(2) if sum_directions else x

    def _check_inputs(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> torch.Tensor:
        nf = self._settings["num_features"]
        if feats.dim() != 3 or feats.shape[2] != nf:
            raise ValueError(
                f"DeepSpeech2.forward: feats must be (N, T, {nf}), got {tuple(feats.shape)}; "
                "check that the feature extractor's num_features matches the model's"
            )
        if feat_lens.shape != (feats.shape[0],):
            raise ValueError(
                f"DeepSpeech2.forward: feat_lens must be ({feats.shape[0]},), "
                f"got {tuple(feat_lens.shape)}"
            )
        lens = feat_lens.detach().to("cpu", torch.int64)
        if len(lens) and (lens.min() < 1 or lens.max() > feats.shape[1]):
            raise ValueError(
                f"DeepSpeech2.forward: feat_lens must lie in 1..{feats.shape[1]} (the padded "
                f"length), got min {int(lens.min())}, max {int(lens.max())}; drop empty "
                "utterances before batching"
            )
        return lens


def model_from_settings(d: dict[str, Any]) -> DeepSpeech2:
    """Rebuild a DeepSpeech2 (untrained) from `model.settings()`; unknown keys fail loudly."""
    allowed = set(_DEFAULTS) | {"num_features", "vocab_size"}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(
            f"model settings: unknown key(s) {', '.join(unknown)}; valid keys: "
            f"{', '.join(sorted(allowed))}. Was the checkpoint written by a newer speechswarm?"
        )
    return DeepSpeech2(**d)


def complete_settings(d: dict[str, Any]) -> dict[str, Any]:
    """`d` (a checkpoint's model settings) with every setting it predates at its default,
    as `settings()` writes them: settings compare equal across versions."""
    return {**{k: _jsonable(v) for k, v in _DEFAULTS.items()}, **d}


def _activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else nn.Hardtanh(0.0, 20.0, inplace=True)


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, (tuple, list)) else v


# Constructor arguments that have defaults: every setting except num_features / vocab_size.
_DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(DeepSpeech2.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def _check_settings(**s: Any) -> dict[str, Any]:
    """Validate constructor arguments; errors name the argument and the fix."""
    n_conv = len(s["conv_channels"])

    def bad(what: str) -> ConfigError:
        return ConfigError(f"DeepSpeech2: {what}")

    if not 1 <= n_conv <= 3:
        raise bad(f"conv_channels must list 1-3 layers, got {n_conv}")
    if len(s["conv_kernels"]) != n_conv or len(s["conv_strides"]) != n_conv:
        raise bad(
            f"conv_kernels ({len(s['conv_kernels'])}) and conv_strides "
            f"({len(s['conv_strides'])}) need one (freq, time) pair per conv layer ({n_conv})"
        )
    pairs = [*s["conv_kernels"], *s["conv_strides"]]
    if min(s["conv_channels"]) < 1 or any(min(p) < 1 for p in pairs):
        raise bad("conv channels, kernels and strides must be >= 1")
    if s["rnn_type"] not in _RNN_CLASSES:
        raise bad(f"rnn_type must be one of {sorted(_RNN_CLASSES)}, got {s['rnn_type']!r}")
    if s["bidirectional_merge"] not in ("sum", "concat"):
        raise bad(
            f"bidirectional_merge must be 'sum' or 'concat', got {s['bidirectional_merge']!r}"
        )
    for key in ("num_features", "rnn_hidden", "rnn_layers"):
        if s[key] < 1:
            raise bad(f"{key} must be >= 1, got {s[key]}")
    if s["vocab_size"] < 2:
        raise bad(f"vocab_size must count the blank and >= 1 token, got {s['vocab_size']}")
    if s["lookahead"] < 0 or not 0.0 <= s["dropout"] < 1.0:
        raise bad("lookahead must be >= 0 and dropout in [0, 1)")
    if s["activation"] not in ("hardtanh", "relu"):
        raise bad(f"activation must be 'hardtanh' or 'relu', got {s['activation']!r}")
    if s["head_hidden"] < 0 or not 0.0 < s["bn_momentum"] <= 1.0:
        raise bad("head_hidden must be >= 0 and bn_momentum in (0, 1]")
    stride = frames.time_reduction(s["conv_strides"])
    if s["output_upsample"] < 1 or stride % s["output_upsample"]:
        raise bad(
            f"output_upsample must be >= 1 and divide the conv stack's time stride ({stride}), "
            f"got {s['output_upsample']}"
        )
    return s
