"""Running the application: a listening socket, uvicorn, and a background server for tests.

    serve_checkpoint("runs/demo/checkpoints/last.pt", port=8000)        # `speechswarm serve`
    with ServerThread(make_app(asr)) as server: urlopen(server.url + "health")

The socket is bound here, before uvicorn starts, so a port already in use is one clear
`UsageError` instead of a logged traceback; port 0 takes any free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from typing import Any

from speechswarm.decode import DecoderOptions
from speechswarm.errors import UsageError
from speechswarm.serve.app import Limits, make_app
from speechswarm.serve.batching import MainThreadExecutor
from speechswarm.serve.stream import StreamSlots


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); UsageError naming the address if it is taken."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as e:
        raise UsageError(
            f"cannot listen on {host}:{port}: {os.strerror(e.errno) if e.errno else e}; choose another --port "
            "(0 takes any free one) or stop what holds it"
        ) from None


def _uvicorn_server(app: Any):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)


def serve_checkpoint(
    checkpoint: str | os.PathLike | None = None,
    *,
    onnx: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    decoder: DecoderOptions | None = None,
    limits: Limits | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 10.0,
    max_streams: int = 8,
) -> None:
    """`speechswarm serve`: load the model, listen on host:port, serve until Ctrl-C."""
    from speechswarm.transcribe import open_recognizer

    limits = limits or Limits()
    if limits.max_bytes < 1 or limits.max_seconds <= 0:
        raise UsageError("--max-bytes and --max-seconds must be > 0")
    if max_batch < 1 or max_wait_ms < 0 or max_streams < 0:
        raise UsageError("--max-batch must be >= 1, --max-wait-ms and --max-streams >= 0")
    decoder = decoder or DecoderOptions()
    sock = bind(host, port)  # before loading the model: a taken port fails at once
    asr, engine = open_recognizer(
        checkpoint=checkpoint,
        onnx=onnx,
        device=device,
        precision=precision,
        threads=threads,
        decoder=decoder,
    )
    name = str(checkpoint or onnx)
    streams = stream_slots(checkpoint, asr, decoder, limits, max_streams)
    # the model runs in this (the main) thread, the HTTP server beside it: see MainThreadExecutor
    executor = MainThreadExecutor()
    app = make_app(
        asr,
        limits=limits,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        name=name,
        decoder=decoder.kind,
        executor=executor,
        streams=streams,
    )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serve: http://{shown}:{sock.getsockname()[1]}/ ({name}: {engine}, {decoder.kind} "
        f"decoding; batches of <= {max_batch} within {max_wait_ms:g} ms; requests <= "
        f"{limits.max_bytes:,} bytes and {limits.max_seconds:g} s); Ctrl-C stops",
        flush=True,
    )
    if streams.new_stream is None:
        print(f"serve: no streaming at /stream: {streams.refusal}", flush=True)
    with ServerThread(app, sock=sock) as server, _sigterm_as_interrupt():
        try:
            executor.run(until=server.stopped)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: answer what is in flight, then stop
            server.stop()
            executor.run(until=server.stopped)


def stream_slots(
    checkpoint: str | os.PathLike | None,
    asr: Any,
    decoder: DecoderOptions,
    limits: Limits,
    max_streams: int,
) -> StreamSlots:
    """The WebSocket /stream's side of `speechswarm serve`: streams of a float32 CPU copy of
    the checkpoint's model when it can stream (the `stream` preset), else the reason why not."""
    rate = asr.sample_rate
    if checkpoint is None:
        return StreamSlots(None, rate, refusal="streaming needs a PyTorch checkpoint, not ONNX")
    from speechswarm.inference import load
    from speechswarm.streaming import StreamingRecognizer

    refusal = StreamingRecognizer.refusal(asr)
    if refusal or max_streams == 0:
        return StreamSlots(None, rate, refusal=refusal or "--max-streams is 0")
    cpu_fp32 = load(checkpoint, device="cpu", precision="fp32", decoder=decoder)
    return StreamSlots(
        lambda: StreamingRecognizer(cpu_fp32),
        rate,
        max_streams=max_streams,
        max_seconds=limits.max_seconds,
    )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGINT and SIGTERM stop the server as Ctrl-C does, as uvicorn's own handlers would
    (they work only when uvicorn runs in the main thread, and here the model does); also
    when the shell started the command with SIGINT ignored (a background job)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ServerThread:
    """`app` served by uvicorn in a background thread on an ephemeral port (tests, benchmarks).

    with ServerThread(app) as server:   # server.url = "http://127.0.0.1:PORT/"
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None
    ) -> None:
        self.sock = sock or bind(host, port)
        host, self.port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        self._server = _uvicorn_server(app)
        self._thread = threading.Thread(target=self._run, name="uvicorn", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self.sock]))

    def __enter__(self) -> ServerThread:
        self._thread.start()
        while not self._server.started:  # lifespan done, socket accepting
            if not self._thread.is_alive():
                raise RuntimeError("the server thread stopped before it started")
            self._thread.join(0.01)
        return self

    def stop(self) -> None:
        """Asks uvicorn to finish: it stops accepting and waits for open requests."""
        self._server.should_exit = True

    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._thread.join(10)
