"""The HTTP application: `POST /transcribe`, `GET /health`, the upload page at `/`, and
streaming over the WebSocket `/stream` (`speechswarm.serve.stream`).

    app = make_app(speechswarm.load("last.pt"), limits=Limits(max_bytes=20_000_000))
    # run it with speechswarm.serve.server.serve(app, host, port)

`POST /transcribe` takes an audio file as the raw request body (any Content-Type but
multipart) or as the first file field of a multipart/form-data upload; any format the
`transcribe` command reads (WAV, FLAC, OGG/Opus, MP3, ...; other sample rates resampled,
channels averaged). It answers JSON: `{"text", "words": [{"word", "start", "end",
"confidence"}], "duration"}` (seconds). Every refusal is JSON `{"error": "one line"}`: 413 for
a body over `max_bytes` or audio over `max_seconds`, 400 for no file, unreadable or empty audio.
Requests that arrive together are transcribed as one padded batch (`batching.BatchQueue`).
`GET /health` says, among others, whether `/stream` streams (`"streaming"`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from speechswarm.data.audio import AudioError, audio_info, load_audio
from speechswarm.errors import SpeechswarmError
from speechswarm.serve.batching import BatchQueue
from speechswarm.serve.stream import StreamSlots


@dataclass(frozen=True)
class Limits:
    """What one request may hold: `max_bytes` of body, `max_seconds` of audio."""

    max_bytes: int = 20_000_000
    max_seconds: float = 60.0


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def make_app(
    asr: Any,
    *,
    limits: Limits = Limits(),
    max_batch: int = 8,
    max_wait_ms: float = 10.0,
    name: str = "model",
    decoder: str = "greedy",
    executor: concurrent.futures.Executor | None = None,
    streams: StreamSlots | None = None,
) -> Starlette:
    """The server for recognizer `asr` (a `Recognizer` or `OnnxRecognizer`: anything with
    `sample_rate` and `recognize_batch`); `name` and `decoder` are what /health reports;
    `executor`: where the model runs (`batching.BatchQueue`); `streams`: the WebSocket
    `/stream` (`stream.StreamSlots`; None: /stream says the server does not stream)."""
    queue = BatchQueue(
        asr.recognize_batch,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        # padded batch <= max_batch x 15 s of samples: long files go in smaller batches
        max_batch_samples=max_batch * 15 * asr.sample_rate,
        executor=executor,
    )
    started = time.time()

    async def transcribe(request: Request) -> JSONResponse:
        try:
            queue.arriving += 1  # a batch being formed waits for this request (max_wait_ms)
            try:
                audio, label = await read_audio_upload(request, limits.max_bytes)
                wave = await asyncio.to_thread(
                    decode_audio, audio, asr.sample_rate, limits.max_seconds, label
                )
            finally:
                queue.arriving -= 1
            result = await queue.submit(wave)  # no await between: counted out, then queued
        except RequestError as e:
            return JSONResponse({"error": e.reason}, status_code=e.status)
        except SpeechswarmError as e:  # e.g. a waveform the recognizer refuses
            return JSONResponse({"error": one_line(str(e))}, status_code=400)
        return JSONResponse(result.to_json())

    streams = streams or StreamSlots(
        None, asr.sample_rate, refusal="this server was started without streaming"
    )
    about = {"model": name, "sample_rate": asr.sample_rate, "decoder": decoder}
    about |= {"streaming": streams.new_stream is not None}
    about |= {"max_bytes": limits.max_bytes, "max_seconds": limits.max_seconds}

    async def health(request: Request) -> JSONResponse:
        uptime = round(time.time() - started, 1)
        counts = {"requests": queue.requests, "batches": queue.batches, "uptime_s": uptime}
        counts["open_streams"] = streams.open
        return JSONResponse({"status": "ok", **about, **counts})

    async def stream(ws: WebSocket) -> None:
        await streams.serve(ws, queue.executor)

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(page_html(limits))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await queue.start()
        yield
        await queue.stop()

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/transcribe", transcribe, methods=["POST"]),
            WebSocketRoute("/stream", stream),
        ],
        lifespan=lifespan,
    )
    app.state.queue = queue
    return app


async def read_audio_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """(the audio file's bytes, a label for errors) from a raw body or a multipart upload;
    RequestError 413 past `max_bytes`, 400 for no file."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(
            413, f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,}"
        )
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise RequestError(413, f"request body is over the limit of {max_bytes:,} bytes")
    except ClientDisconnect:
        raise RequestError(400, "the client closed the connection before the body ended") from None
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _file_from_form(request, bytes(body))
    if not body:
        raise RequestError(400, "empty request body: send an audio file (raw or multipart 'file')")
    return bytes(body), "request body"


async def _file_from_form(request: Request, body: bytes) -> tuple[bytes, str]:
    """The first file field of a multipart body already read into `body`."""

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=20)
    except Exception as e:  # starlette raises its own MultiPartException / HTTPException
        raise RequestError(400, f"unreadable multipart form: {one_line(str(e))}") from None
    for _, value in form.multi_items():
        if hasattr(value, "read"):  # an UploadFile
            data = await value.read()
            if not data:
                raise RequestError(400, f"the uploaded file {value.filename!r} is empty")
            return data, value.filename or "uploaded file"
    raise RequestError(400, "the multipart form has no file field: send the audio as 'file'")


def decode_audio(data: bytes, sample_rate: int, max_seconds: float, label: str) -> np.ndarray:
    """(S,) float32 mono at `sample_rate` from an encoded file's bytes, read exactly as the
    `transcribe` command reads a file (so a truncated WAV is refused, not shortened);
    RequestError 400 for audio that does not decode, 413 for audio longer than `max_seconds`
    (read from the header before decoding)."""
    with tempfile.TemporaryDirectory(prefix="speechswarm-serve-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            rate, frames, _ = audio_info(path)
            if frames > max_seconds * rate:
                raise RequestError(
                    413,
                    f"{label}: {frames / rate:.1f} s of audio is over the limit of {max_seconds:g} s",
                )
            wave = load_audio(path, sample_rate)
        except AudioError as e:
            if e.reason == "unreadable_audio" and frames_unknown(e):
                raise RequestError(
                    400,
                    f"{label}: not an audio file libsndfile reads (WAV, FLAC, OGG/Opus, MP3, ...)",
                ) from None
            detail = e.detail.replace(f"Error opening {str(path)!r}: ", "")
            raise RequestError(400, one_line(f"{label}: {e.reason} ({detail})")) from None
    if len(wave) > max_seconds * sample_rate:  # an MP3 header's frame count is an estimate
        raise RequestError(413, f"{label}: over the limit of {max_seconds:g} s of audio")
    return wave


def frames_unknown(e: AudioError) -> bool:
    """Whether libsndfile did not recognise the format at all (rather than a damaged file)."""
    return "format" in e.detail.lower() and "recogni" in e.detail.lower()


def one_line(text: str) -> str:
    return " ".join(text.split())


def page_html(limits: Limits) -> str:
    """The upload page (page.html beside this module) with the limits filled in."""
    text = resources.files("speechswarm.serve").joinpath("page.html").read_text("utf-8")
    size = (
        f"{limits.max_bytes / 1e6:.3g} MB"
        if limits.max_bytes >= 1e5
        else f"{limits.max_bytes:,} bytes"
    )
    return text.replace("{{MAX_SIZE}}", size).replace("{{MAX_SECONDS}}", f"{limits.max_seconds:g}")
