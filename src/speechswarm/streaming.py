"""Streaming recognition: audio in chunks, partial transcripts as soon as they are certain.

    from speechswarm.streaming import StreamingRecognizer
    stream = StreamingRecognizer.load("runs/stream/checkpoints/best.pt")
    for chunk in chunks:                 # float32 mono at stream.sample_rate, any lengths
        partial = stream.feed(chunk)     # greedy text of the frames whose context is complete
    final = stream.finish()              # == Recognizer.transcribe(whole audio); then reset

It needs a model that does not read the whole utterance (the `stream` preset): a
unidirectional RNN, and features normalised with global statistics (`FeatureExtractor.causal`).
Every stage carries its context from one chunk to the next, so each frame is computed once,
from exactly the inputs the whole-clip forward pass gives it:

    samples -> STFT frames       keeps the last window's samples; the clip's start is padded
                                 with n_fft // 2 zeros, its end (at finish) likewise
    conv layer i                 keeps the input frames its next output still reads; zero
                                 padding k // 2 at the clip's start and end, as in forward()
    RNN layer i                  carries (h, c)
    Lookahead                    keeps `lookahead` frames; zeros after the end
    classifier, log_softmax      per frame

Output frame j is final once input frame j * time_reduction + model.right_context() has
arrived (`docs/streaming.md` has the latencies). The final transcript is the checkpoint's
decoder (greedy unless given) over all frames; partials are greedy over the final frames.
Runs in float32 on the CPU (one stream at a time; batch 1 gains nothing from bf16).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from speechswarm.decode import DecoderOptions
from speechswarm.decode.greedy import ctc_collapse
from speechswarm.decode.timestamps import TimedTranscript, timed_transcripts
from speechswarm.errors import UsageError
from speechswarm.features import FeatureExtractor
from speechswarm.frames import conv_output_length
from speechswarm.inference import Recognizer, load
from speechswarm.model import DeepSpeech2


class _FeatureStream:
    """samples -> normalised feature frames (F, k), exactly `FeatureExtractor.forward`'s."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self.n_fft, self.hop = extractor.n_fft, extractor.hop
        self.buffer = torch.zeros(self.n_fft // 2)  # the clip's start: center=True padding
        self.samples = 0

    def feed(self, samples: torch.Tensor) -> torch.Tensor:
        self.buffer = torch.cat([self.buffer, samples])
        self.samples += len(samples)
        return self._frames(self.buffer)

    def finish(self) -> torch.Tensor:
        """The frames left: the end is padded with n_fft // 2 zeros, as center=True does."""
        if self.samples == 0:
            return torch.zeros(self.extractor.num_features, 0)
        return self._frames(torch.cat([self.buffer, torch.zeros(self.n_fft // 2)]))

    def _frames(self, buffer: torch.Tensor) -> torch.Tensor:
        if len(buffer) < self.n_fft:
            self.buffer = buffer
            return torch.zeros(self.extractor.num_features, 0)
        n = (len(buffer) - self.n_fft) // self.hop + 1  # whole windows in the buffer
        used = buffer[: (n - 1) * self.hop + self.n_fft]
        feats = self.extractor.spectral_frames(used[None], center=False)  # (1, F, n)
        if self.extractor.normalize == "global":
            feats = self.extractor.normalize_global(feats)
        self.buffer = buffer[n * self.hop :]  # the next window starts here
        return feats[0]


class _ConvStream:
    """One conv block (Conv2d -> BatchNorm2d -> activation) run on frames as they come."""

    def __init__(self, block: torch.nn.Sequential, kernel: tuple, stride: tuple) -> None:
        self.block = block
        self.k, self.s = kernel[1], stride[1]  # time axis
        self.pad_t = self.k // 2
        self.pad_f = kernel[0] // 2
        self.buffer: torch.Tensor | None = None  # (1, C_in, F_in, frames) still to be read

    def feed(self, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x: (1, C_in, F_in, k) new input frames -> (1, C_out, F_out, n) new output frames;
        `last`: the clip ended, pad the time axis with k // 2 zeros (as forward() does)."""
        if self.buffer is None:
            self.buffer = x.new_zeros(*x.shape[:3], self.pad_t)  # the clip's start
        buf = torch.cat([self.buffer, x], dim=3)
        if last:
            buf = F.pad(buf, (0, self.pad_t))
        conv = self.block[0]
        if buf.shape[3] < self.k:  # not one whole window yet
            self.buffer = buf
            f_out = conv_output_length(
                buf.shape[2], conv.kernel_size[0], conv.stride[0], self.pad_f
            )
            return buf.new_zeros(1, conv.out_channels, f_out, 0)
        n = (buf.shape[3] - self.k) // self.s + 1
        y = F.conv2d(
            buf[..., : (n - 1) * self.s + self.k],
            conv.weight,
            None,
            stride=conv.stride,
            padding=(self.pad_f, 0),
        )  # (1, C_out, F_out, n)
        self.buffer = buf[..., n * self.s :]
        return self.block[2](self.block[1](y))


class StreamingRecognizer:
    """A `Recognizer`'s model run on audio chunks; see the module docstring."""

    def __init__(self, recognizer: Recognizer) -> None:
        """`recognizer`: a CPU `Recognizer` (any precision: streaming computes in float32)."""
        model: DeepSpeech2 = recognizer.model
        if recognizer.device.type != "cpu":
            raise UsageError(
                f"streaming runs on the CPU; open the checkpoint with device='cpu', "
                f"not {recognizer.device}"
            )
        refusal = self.refusal(recognizer)
        if refusal:
            raise UsageError(f"streaming: {refusal}")
        self.asr = recognizer
        self.model = model.float().eval()
        self.extractor = recognizer.extractor.float()
        self.sample_rate = recognizer.sample_rate
        self.tokenizer, self.decoder = recognizer.tokenizer, recognizer.decoder
        # feature frames of audio an output frame waits for beyond its own position
        self.right_context = model.right_context()
        self.reset()

    @staticmethod
    def refusal(recognizer: Recognizer) -> str | None:
        """Why `recognizer`'s model cannot stream, or None if it can."""
        if recognizer.model.bidirectional:
            return (
                "the checkpoint's RNN is bidirectional, so no output frame is final before the "
                "audio ends; train a streaming model (--config stream)"
            )
        if not recognizer.extractor.causal:
            return (
                "the checkpoint normalises features per utterance, which needs the whole clip; "
                "train with features.normalize=global (the stream preset does)"
            )
        return None

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, decoder: DecoderOptions | None = None
    ) -> StreamingRecognizer:
        """Open a checkpoint for streaming (float32 on the CPU)."""
        return cls(load(Path(path), device="cpu", precision="fp32", decoder=decoder))

    def reset(self) -> None:
        """Forget the current clip: the next `feed` starts a new one."""
        self.features = _FeatureStream(self.extractor)
        self.convs = [
            _ConvStream(b, k, s)
            for b, k, s in zip(
                self.model.conv, self.model.conv_kernels, self.model.conv_strides, strict=True
            )
        ]
        self.states: list = [None] * len(self.model.rnns)
        self.pending = None  # (1, frames, H) RNN outputs the Lookahead still reads
        self.log_probs: list[torch.Tensor] = []  # (n, V) per step, final frames
        self.path: list[int] = []  # argmax per final output frame
        self.ids: list[int] = []  # ctc_collapse(self.path), kept up to date frame by frame

    @property
    def frames_done(self) -> int:
        """Output frames final so far (each covers hop x time_reduction seconds)."""
        return len(self.path)

    @torch.inference_mode()
    def feed(self, chunk) -> str:
        """Append `chunk` (1-D float samples in [-1, 1] at `sample_rate`, any length, numpy
        or torch) -> the partial transcript: greedy text of every final frame so far."""
        samples = torch.as_tensor(np.asarray(chunk, dtype=np.float32))
        if samples.dim() != 1:
            raise UsageError(f"streaming: a chunk must be 1-D samples, got {tuple(samples.shape)}")
        self._step(self.features.feed(samples), last=False)
        return self.partial()

    def finish(self) -> str:
        """End the clip: run the frames that waited for right context, decode all frames with
        the checkpoint's decoder and return the text; the recognizer is then ready for a new
        clip. Equal to `Recognizer.transcribe` of the whole audio (in float32)."""
        return self.finish_timed().text

    @torch.inference_mode()
    def finish_timed(self) -> TimedTranscript:
        """`finish` with each word's start, end and confidence (as `Recognizer.recognize`)."""
        seconds = self.features.samples / self.sample_rate
        if self.features.samples == 0:
            self.reset()
            return TimedTranscript("", [], 0.0)
        self._step(self.features.finish(), last=True)
        log_probs = torch.cat(self.log_probs)[None].numpy()  # (1, T', V)
        out_lens = np.array([log_probs.shape[1]], dtype=np.int64)
        timed = timed_transcripts(
            self.decoder, self.tokenizer, log_probs, out_lens, self.asr.frame_seconds, [seconds]
        )[0]
        self.reset()
        return timed

    def partial(self) -> str:
        """Greedy text of the final frames so far (a prefix of the greedy final text)."""
        return self.tokenizer.decode(self.ids)

    def _step(self, feats: torch.Tensor, last: bool) -> None:
        """feats: (F, k) new normalised feature frames; `last`: the clip ends after them."""
        x = feats[None, None]  # (1, 1, F, k)
        for conv in self.convs:
            x = conv.feed(x, last)  # (1, C, F', n)
        n, c, f, t = x.shape
        x = x.permute(0, 3, 1, 2).reshape(n, t, c * f)  # (1, t, C*F')
        m = self.model
        if t == 0 and not last:
            return
        for i, rnn in enumerate(m.rnns):
            if t == 0:
                x = x.new_zeros(1, 0, rnn.hidden_size)  # nothing new; the Lookahead may flush
                break
            if i > 0:
                x = m.rnn_norms[i - 1](x[0])[None]  # per frame (eval: an affine map)
            x, self.states[i] = rnn(x, self.states[i])  # (1, t, H)
        x = self._lookahead(x, last)  # (1, t', H)
        if x.shape[1] == 0:
            return
        # (t', V), or (t' * upsample, V): each recurrent frame emits `upsample` output frames
        logits = m.classifier(m.head(m.out_norm(x[0]))).reshape(x.shape[1] * m.upsample, -1)
        log_probs = logits.float().log_softmax(dim=-1)
        self.log_probs.append(log_probs)
        best = log_probs.argmax(dim=-1).tolist()
        # collapse only the new frames, after the last old one (its run may go on); a
        # non-blank last frame is already in self.ids and comes out first again
        previous = self.path[-1:]
        new = ctc_collapse(previous + best)
        self.ids += new[1:] if previous and previous[0] != 0 else new
        self.path += best

    def _lookahead(self, x: torch.Tensor, last: bool) -> torch.Tensor:
        """(1, t, H) RNN outputs -> (1, t', H) Lookahead outputs whose future frames have come."""
        m = self.model
        if m.lookahead is None:
            return x
        row, act = m.lookahead[0], m.lookahead[1]
        buf = x if self.pending is None else torch.cat([self.pending, x], dim=1)
        if last:
            buf = F.pad(buf, (0, 0, 0, row.lookahead))  # zeros after the end, as forward()
        ready = buf.shape[1] - row.lookahead
        if ready <= 0:
            self.pending = buf
            return buf[:, :0]
        y = row.conv(buf.transpose(1, 2)).transpose(1, 2)  # (1, ready, H), no padding
        self.pending = buf[:, ready:]
        return act(y)
