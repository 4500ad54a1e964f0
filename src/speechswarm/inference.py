"""Transcribe audio with a trained checkpoint.

    import speechswarm
    asr = speechswarm.load("runs/demo/checkpoints/best.pt")
    print(asr.transcribe("hello.wav"))
    asr = speechswarm.load("best.pt", decoder=DecoderOptions("beam", lm="lm.arpa"))

The checkpoint carries the model settings, feature settings and vocabulary, so nothing has
to be re-derived from a config.

`precision="auto"` is bf16 autocast on CPUs with native bf16 (and on GPUs), as in training:
measured on one core (docs/speed.md), batches of 8 files ran 1.3-1.6x faster than fp32 with
the same test-set CER; a lone file (batch 1) ran ~0.8x, so `precision="fp32"` suits one file
at a time. Transcribe many files with `transcribe_batch` on files of similar length;
`recognize_batch` adds each word's start, end and confidence (`decode/timestamps.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from speechswarm.build import autocast, resolve_device, resolve_precision
from speechswarm.checkpoint import CheckpointError, load_checkpoint
from speechswarm.data.audio import load_audio
from speechswarm.data.tokenizer import tokenizer_from_dict
from speechswarm.decode import DecoderOptions, make_decoder
from speechswarm.decode.timestamps import TimedTranscript, frame_seconds, timed_transcripts
from speechswarm.errors import UsageError
from speechswarm.features import FeatureExtractor
from speechswarm.model import model_from_settings

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor


class Recognizer:
    """A trained model with its features and vocabulary, ready to transcribe."""

    def __init__(
        self,
        checkpoint: dict,
        *,
        device: str = "auto",
        precision: str = "auto",
        decoder: DecoderOptions | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(precision, self.device)
        # "fp32", "bf16" or "fp16": what `precision` resolved to on this device
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
            self.amp_dtype
        ]
        self.tokenizer = tokenizer_from_dict(checkpoint["tokenizer"])
        self.extractor = (
            FeatureExtractor.from_settings(checkpoint["features"]).to(self.device).eval()
        )
        self.model = model_from_settings(checkpoint["model_settings"])
        self.model.load_state_dict(checkpoint["model"])
        self.model.to(self.device).eval()
        self.sample_rate = self.extractor.sample_rate
        # seconds per output frame: feature hop x the conv stack's time strides
        self.frame_seconds = frame_seconds(
            self.extractor.hop, self.sample_rate, self.model.time_reduction
        )
        self.decoder = make_decoder(decoder or DecoderOptions(), self.tokenizer.tokens)

    def transcribe(self, audio: AudioInput, sample_rate: int | None = None) -> str:
        """Text for one file path or one mono waveform (float, [-1, 1], at `sample_rate`)."""
        return self.transcribe_batch([audio], sample_rate=sample_rate)[0]

    def transcribe_batch(
        self, audios: Sequence[AudioInput], sample_rate: int | None = None
    ) -> list[str]:
        """Texts of several files or waveforms, run as one padded batch."""
        log_probs, out_lens, _ = self._forward(audios, sample_rate)
        hyps = self.decoder.decode(log_probs, out_lens)
        return [self.tokenizer.decode(ids) for ids in hyps]

    def recognize_batch(
        self, audios: Sequence[AudioInput], sample_rate: int | None = None
    ) -> list[TimedTranscript]:
        """`transcribe_batch` with each word's start, end (seconds) and confidence, read
        from the decoder's frame path (`speechswarm.decode.timestamps`)."""
        log_probs, out_lens, durations = self._forward(audios, sample_rate)
        return timed_transcripts(
            self.decoder, self.tokenizer, log_probs, out_lens, self.frame_seconds, durations
        )

    @torch.inference_mode()
    def _forward(
        self, audios: Sequence[AudioInput], sample_rate: int | None
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """(log_probs (N, T', V) float32, out_lens (N,) int64, durations in seconds)."""
        waves = [self._as_wave(a, sample_rate) for a in audios]
        wave_lens = torch.tensor([len(w) for w in waves], dtype=torch.int64)
        batch = torch.zeros(len(waves), int(wave_lens.max()), dtype=torch.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
        batch, wave_lens = batch.to(self.device), wave_lens.to(self.device)
        feats, feat_lens = self.extractor(batch, wave_lens)  # (N, T, F), (N,)
        with autocast(self.device, self.amp_dtype):
            log_probs, out_lens = self.model(feats, feat_lens)  # (N, T', V)
        durations = [len(w) / self.sample_rate for w in waves]
        return log_probs.float().cpu().numpy(), out_lens.cpu().numpy(), durations

    def _as_wave(self, audio: AudioInput, sample_rate: int | None) -> torch.Tensor:
        if isinstance(audio, (str, os.PathLike)):
            return torch.from_numpy(load_audio(Path(audio), self.sample_rate))
        wave = (
            audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        )
        wave = wave.astype(np.float32)
        if wave.ndim == 2:  # (channels, samples) or (samples, channels): down-mix the shorter axis
            wave = wave.mean(axis=int(np.argmin(wave.shape)))
        if wave.ndim != 1 or wave.size == 0:
            raise UsageError(f"expected a non-empty mono waveform, got shape {tuple(wave.shape)}")
        if sample_rate is not None and sample_rate != self.sample_rate:
            import soxr

            wave = soxr.resample(wave, sample_rate, self.sample_rate).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(wave))


def load(
    path: str | os.PathLike,
    *,
    device: str = "auto",
    precision: str = "auto",
    decoder: DecoderOptions | None = None,
) -> Recognizer:
    """Load a checkpoint written by `speechswarm train` for transcription (greedy decoding
    unless `decoder` says otherwise)."""
    checkpoint = load_checkpoint(Path(path), model=True)
    bad = [
        k
        for k, v in checkpoint["model"].items()
        if v.is_floating_point() and not v.isfinite().all()
    ]
    if bad:  # every output would be NaN: greedy decoding prints blanks, beam search finds nothing
        raise CheckpointError(
            path,
            "nonfinite_weights",
            f"NaN or infinite values in {len(bad)} model tensor(s) ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}): it cannot transcribe. Take an earlier "
            "checkpoint of the run (checkpoints/step-*.pt) or train again with a lower optim.lr",
        )
    return Recognizer(checkpoint, device=device, precision=precision, decoder=decoder)
