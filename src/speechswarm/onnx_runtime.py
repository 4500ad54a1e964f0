"""Transcribe with an exported ONNX model and onnxruntime only: torch is never imported.

    speechswarm transcribe --onnx model.onnx a.flac b.wav
    python -c "from speechswarm.onnx_runtime import OnnxRecognizer; \
print(OnnxRecognizer('model.onnx').transcribe('a.flac'))"

The graph takes waveforms and computes its own features (`speechswarm.export`), so this
module needs numpy, soundfile/soxr (reading and resampling audio), onnxruntime, and
flashlight-text for beam search. The vocabulary and sample rate come from the model's
metadata; a file not written by `speechswarm export`, or by an incompatible version of it,
is refused with a message that says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speechswarm.data.audio import load_audio
from speechswarm.data.tokenizer import tokenizer_from_dict
from speechswarm.decode import DecoderOptions, make_decoder
from speechswarm.decode.timestamps import TimedTranscript, frame_seconds, timed_transcripts
from speechswarm.errors import InputNotFoundError, SpeechswarmError, UnavailableError, UsageError
from speechswarm.frames import time_reduction

FORMAT_VERSION = 1  # = speechswarm.export.FORMAT_VERSION (not imported: that module needs torch)
REQUIRED_METADATA = ("speechswarm_onnx_format", "tokenizer", "sample_rate", "vocab_size")
INSTALL_HINT = "pip install 'speechswarm[onnx]' (onnxruntime)"


class OnnxModelError(SpeechswarmError, ValueError):
    """A file that is not an ONNX model from a compatible `speechswarm export`; the message
    names the file and says to re-export it."""


class OnnxModel:
    """An onnxruntime session over an exported model plus its metadata.

    `run(waves (N, S) float32, wave_lens (N,) int64) -> (log_probs (N, T', V), out_lens (N,))`.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise UnavailableError(
                f"ONNX inference needs onnxruntime: {INSTALL_HINT} ({e})"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise InputNotFoundError(
                f"ONNX model {self.path} does not exist; write one with "
                "`speechswarm export --checkpoint CKPT --out model.onnx`"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise OnnxModelError(
                f"ONNX model {self.path}: onnxruntime cannot load it ({e}); re-export it with "
                "`speechswarm export`"
            ) from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_metadata()
        self.sample_rate = int(self.metadata["sample_rate"])
        self.vocab_size = int(self.metadata["vocab_size"])

    def _check_metadata(self) -> None:
        missing = [k for k in REQUIRED_METADATA if k not in self.metadata]
        if missing:
            raise OnnxModelError(
                f"ONNX model {self.path} was not written by `speechswarm export` (metadata "
                f"lacks {', '.join(missing)}); export the checkpoint with `speechswarm export`"
            )
        version = self.metadata["speechswarm_onnx_format"]
        if version != str(FORMAT_VERSION):
            raise OnnxModelError(
                f"ONNX model {self.path} has export format {version} (written by speechswarm "
                f"{self.metadata.get('speechswarm_version', '?')}); this speechswarm reads "
                f"format {FORMAT_VERSION}: re-export the checkpoint with this version's "
                "`speechswarm export`"
            )
        names = [i.name for i in self.session.get_inputs()]
        if names != ["waves", "wave_lens"]:
            raise OnnxModelError(
                f"ONNX model {self.path} takes inputs {names}, expected ['waves', 'wave_lens']; "
                "re-export it with `speechswarm export`"
            )

    def run(self, waves: np.ndarray, wave_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        log_probs, out_lens = self.session.run(
            None,
            {
                "waves": np.ascontiguousarray(waves, dtype=np.float32),
                "wave_lens": np.asarray(wave_lens, dtype=np.int64),
            },
        )
        return log_probs, out_lens


class OnnxRecognizer:
    """`speechswarm.load(...)`'s interface on onnxruntime: transcribe files or waveforms."""

    def __init__(
        self, path: str | os.PathLike, *, decoder: DecoderOptions | None = None, threads: int = 1
    ) -> None:
        self.model = OnnxModel(path, threads=threads)
        self.sample_rate = self.model.sample_rate
        self.tokenizer = tokenizer_from_dict(json.loads(self.model.metadata["tokenizer"]))
        if len(self.tokenizer) != self.model.vocab_size:
            raise OnnxModelError(
                f"ONNX model {self.model.path}: its vocabulary has {len(self.tokenizer)} tokens "
                f"but its output has {self.model.vocab_size} classes; the metadata belongs to "
                "another model: re-export it with `speechswarm export`"
            )
        self.decoder = make_decoder(decoder or DecoderOptions(), self.tokenizer.tokens)

    def transcribe(self, audio: str | os.PathLike | np.ndarray, sample_rate: int | None = None):
        """Text for one file path or one mono float waveform at `sample_rate`."""
        return self.transcribe_batch([audio], sample_rate=sample_rate)[0]

    def transcribe_batch(
        self, audios: Sequence[str | os.PathLike | np.ndarray], sample_rate: int | None = None
    ) -> list[str]:
        _, log_probs, out_lens = self._forward(audios, sample_rate)
        return [self.tokenizer.decode(ids) for ids in self.decoder.decode(log_probs, out_lens)]

    def _forward(self, audios, sample_rate: int | None):
        """(waves, log_probs (N, T', V), out_lens (N,)) of one zero-padded batch."""
        waves = [self._as_wave(a, sample_rate) for a in audios]
        wave_lens = np.array([len(w) for w in waves], dtype=np.int64)
        batch = np.zeros((len(waves), int(wave_lens.max())), dtype=np.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
        log_probs, out_lens = self.model.run(batch, wave_lens)
        return waves, log_probs, out_lens

    def recognize_batch(
        self, audios: Sequence[str | os.PathLike | np.ndarray], sample_rate: int | None = None
    ) -> list[TimedTranscript]:
        """`transcribe_batch` with each word's start, end (seconds) and confidence."""
        waves, log_probs, out_lens = self._forward(audios, sample_rate)
        durations = [len(w) / self.sample_rate for w in waves]
        return timed_transcripts(
            self.decoder, self.tokenizer, log_probs, out_lens, self.frame_seconds, durations
        )

    @property
    def frame_seconds(self) -> float:
        """Seconds per output frame, from the feature hop, conv strides and output upsampling
        in the metadata."""
        features = json.loads(self.model.metadata["features"])
        settings = json.loads(self.model.metadata["model_settings"])
        reduction = time_reduction(settings["conv_strides"], settings.get("output_upsample", 1))
        hop = round(self.sample_rate * float(features["hop_ms"]) / 1000)
        return frame_seconds(hop, self.sample_rate, reduction)

    def _as_wave(self, audio, sample_rate: int | None) -> np.ndarray:
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(Path(audio), self.sample_rate)
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim == 2:  # (channels, samples) or (samples, channels): down-mix the shorter axis
            wave = wave.mean(axis=int(np.argmin(wave.shape)))
        if wave.ndim != 1 or wave.size == 0:
            raise UsageError(f"expected a non-empty mono waveform, got shape {tuple(wave.shape)}")
        if sample_rate is not None and sample_rate != self.sample_rate:
            import soxr

            wave = soxr.resample(wave, sample_rate, self.sample_rate).astype(np.float32)
        return np.ascontiguousarray(wave)
