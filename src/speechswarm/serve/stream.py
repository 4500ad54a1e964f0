"""Streaming over a WebSocket: `/stream`, audio in as it is spoken, partial text out.

    ws://127.0.0.1:8000/stream?rate=16000&format=s16

The client sends binary messages of mono samples (`format`: `s16`, 16-bit signed little-endian
PCM, the default; or `f32`, 32-bit float little-endian in [-1, 1]) at `rate` Hz (default: the
model's; others are resampled as they come). After each message whose audio makes more of the
text final, the server sends `{"type": "partial", "text": ...}`: greedy text of every output
frame whose context has arrived (`speechswarm.streaming`). The text message `end` closes the
utterance: the server answers `{"type": "final", "text", "words", "duration"}` (what POST
/transcribe gives for the same audio) and the connection can carry the next utterance.

Every refusal is one message `{"type": "error", "error": "one line"}` and a close with an
application code: 4400 bad request (query, message, or samples), 4413 an utterance over
`max_seconds`, 4503 a model that cannot stream or every stream slot taken.

The model's work runs in the same executor as the batches of POST /transcribe, so the CPU
runs one thing at a time; each connection keeps its own `StreamingRecognizer` state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

FORMATS = {"s16": np.dtype("<i2"), "f32": np.dtype("<f4")}


class StreamRefused(Exception):
    """Ends a stream: an application close code and a one-line reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class StreamSlots:
    """The server's streaming side: how to open a stream, and how many may be open."""

    def __init__(
        self,
        new_stream: Callable[[], Any] | None,
        sample_rate: int,
        *,
        refusal: str = "",
        max_streams: int = 8,
        max_seconds: float = 60.0,
    ) -> None:
        """`new_stream()`: a fresh recognizer with `feed(samples) -> partial text` and
        `finish_timed() -> TimedTranscript` (None: this model cannot stream; `refusal` says
        why)."""
        self.new_stream, self.sample_rate, self.refusal = new_stream, sample_rate, refusal
        self.max_streams, self.max_seconds = max_streams, max_seconds
        self.open = 0

    async def serve(self, ws: WebSocket, executor: concurrent.futures.Executor) -> None:
        await ws.accept()
        try:
            if self.new_stream is None:
                raise StreamRefused(4503, self.refusal or "this model cannot stream")
            if self.open >= self.max_streams:
                raise StreamRefused(
                    4503, f"all {self.max_streams} stream slots are taken; try again later"
                )
            query = ws.scope.get("query_string", b"").decode("latin-1")
            rate, dtype = parse_query(query, self.sample_rate)
            self.open += 1
            try:
                await self._utterances(ws, executor, rate, dtype)
            finally:
                self.open -= 1
        except StreamRefused as e:
            await ws.send_json({"type": "error", "error": e.reason})
            await ws.close(code=e.code, reason=e.reason[:120])
        except WebSocketDisconnect:
            pass

    async def _utterances(self, ws, executor, rate: int, dtype: np.dtype) -> None:
        loop = asyncio.get_running_loop()
        stream = await loop.run_in_executor(executor, self.new_stream)
        resampler, received, shown = self._resampler(rate), 0, ""
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                samples = decode_samples(data, dtype)
                received += len(samples)
                if received > self.max_seconds * rate:
                    raise StreamRefused(
                        4413, f"the utterance is over the limit of {self.max_seconds:g} s"
                    )
                if resampler is not None:
                    samples = resampler.resample_chunk(samples)
                partial = await loop.run_in_executor(executor, stream.feed, samples)
                if partial != shown:
                    shown = partial
                    await ws.send_json({"type": "partial", "text": partial})
            elif text is not None and text.strip() == "end":
                if resampler is not None:  # the resampler's last samples
                    tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                    await loop.run_in_executor(executor, stream.feed, tail)
                timed = await loop.run_in_executor(executor, stream.finish_timed)
                await ws.send_json({"type": "final", **timed.to_json()})
                resampler, received, shown = self._resampler(rate), 0, ""
            else:
                raise StreamRefused(
                    4400,
                    f"unexpected text message {str(text)[:40]!r}: send audio as binary "
                    "messages and the text 'end' to finish an utterance",
                )

    def _resampler(self, rate: int):
        if rate == self.sample_rate:
            return None
        import soxr

        return soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32")


def parse_query(query: str, default_rate: int) -> tuple[int, np.dtype]:
    """(sample rate, sample dtype) from `rate=...&format=...` (defaults: `default_rate`, s16);
    StreamRefused 4400 if bad."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = sorted(set(params) - {"rate", "format"})
    if unknown:
        raise StreamRefused(4400, f"unknown query parameter(s) {unknown}: use rate and format")
    fmt = params.get("format", "s16")
    if fmt not in FORMATS:
        raise StreamRefused(4400, f"format={fmt!r}: use s16 (16-bit PCM) or f32 (float32)")
    rate_text = params.get("rate")
    if rate_text is None:
        return default_rate, FORMATS[fmt]
    if not rate_text.isdigit() or not 4000 <= int(rate_text) <= 192000:
        raise StreamRefused(4400, f"rate={rate_text!r}: give the samples' rate in Hz, 4000-192000")
    return int(rate_text), FORMATS[fmt]


def decode_samples(data: bytes, dtype: np.dtype) -> np.ndarray:
    """float32 samples from one binary message; StreamRefused 4400 for a partial sample or
    samples that are not finite."""
    if len(data) % dtype.itemsize:
        raise StreamRefused(
            4400,
            f"a binary message of {len(data)} bytes is not whole {dtype.itemsize}-byte samples",
        )
    samples = np.frombuffer(data, dtype=dtype)
    if dtype.kind == "i":
        return samples.astype(np.float32) / 32768.0
    samples = samples.astype(np.float32)
    if not np.isfinite(samples).all():
        raise StreamRefused(4400, "the samples hold NaN or infinity")
    return samples
