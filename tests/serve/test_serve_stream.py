"""Streaming over the WebSocket /stream: partials while audio comes, a final equal to POST
/transcribe's answer, and one-line refusals.

    .venv/bin/python -m pytest tests/serve/test_serve_stream.py -q

The model is tests/test_streaming.py's small random streaming model (unidirectional LSTM,
global normalisation, lookahead): its text changes from frame to frame, so a frame computed
from the wrong context shows.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soxr
import torch
from http_client import request
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from speechswarm.decode import DecoderOptions
from speechswarm.inference import Recognizer
from speechswarm.serve.app import Limits, make_app
from speechswarm.serve.server import ServerThread, stream_slots
from test_export import write_checkpoint
from test_streaming import SR, make_checkpoint, speechlike

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stream_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "stream.pt"
    torch.save(make_checkpoint(), path)
    return path


@pytest.fixture
def served(stream_ckpt):
    asr = Recognizer(torch.load(stream_ckpt, weights_only=False), device="cpu", precision="fp32")
    limits = Limits(max_seconds=4.0)
    streams = stream_slots(stream_ckpt, asr, DecoderOptions(), limits, max_streams=2)
    with ServerThread(make_app(asr, limits=limits, streams=streams)) as server:
        yield server, asr


def ws_url(server, query: str = "") -> str:
    return server.url.replace("http://", "ws://") + "stream" + (f"?{query}" if query else "")


def stream_over(ws, chunks: list[bytes]) -> tuple[list[str], dict]:
    """(the partials received, the final message) for `chunks` sent then 'end'."""
    partials = []
    for chunk in chunks:
        ws.send(chunk)
    ws.send("end")
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == "final":
            return partials, message
        assert message["type"] == "partial", message
        partials.append(message["text"])


def as_s16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def test_a_stream_gives_partials_and_the_final_post_gives(served):
    server, asr = served
    wave = speechlike(3.0)
    pcm = as_s16(wave)
    chunk = int(0.16 * SR) * 2  # 160 ms of 16-bit samples per message
    with connect(ws_url(server)) as ws:
        partials, final = stream_over(ws, [pcm[i : i + chunk] for i in range(0, len(pcm), chunk)])
        # the same connection carries a second utterance, from a clean state
        again = stream_over(ws, [pcm])[1]
    expected = asr.recognize_batch([np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0])[0]
    assert final == {"type": "final", **expected.to_json()} and again == final
    assert len(partials) >= 3 and final["text"]
    for shorter, longer in zip(partials, partials[1:] + [final["text"]], strict=True):
        assert longer.startswith(shorter)  # partials only grow: what is shown stays
    status, health = request(server.url + "health")
    assert health["streaming"] is True and health["open_streams"] == 0


def test_float_samples_at_another_rate_are_resampled_as_they_come(served):
    server, asr = served
    wave = soxr.resample(speechlike(2.0), SR, 44100).astype(np.float32)
    data = wave.astype("<f4").tobytes()
    chunk = 4410 * 4  # 100 ms
    with connect(ws_url(server, "rate=44100&format=f32")) as ws:
        _, final = stream_over(ws, [data[i : i + chunk] for i in range(0, len(data), chunk)])
    whole = soxr.resample(wave, 44100, SR).astype(np.float32)  # one-shot resampling
    expected = asr.recognize_batch([whole])[0]
    assert abs(final["duration"] - 2.0) < 0.01
    assert final["text"] == expected.text  # streamed resampling gives the same text here


@pytest.mark.parametrize(
    "query, message, code, reason",
    [
        ("format=mp3", None, 4400, "format='mp3': use s16"),
        ("rate=12x", None, 4400, "rate='12x'"),
        ("lang=en", None, 4400, "unknown query parameter(s) ['lang']"),
        ("", b"\x00\x01\x02", 4400, "not whole 2-byte samples"),
        ("format=f32", np.array([np.nan], "<f4").tobytes(), 4400, "NaN or infinity"),
        ("", "hello", 4400, "unexpected text message 'hello'"),
        ("", as_s16(np.zeros(5 * SR, np.float32)), 4413, "over the limit of 4 s"),
    ],
)
def test_bad_streams_get_one_line_and_a_close_code(served, query, message, code, reason):
    server, _ = served
    with connect(ws_url(server, query)) as ws:
        if message is not None:
            ws.send(message)
        error = json.loads(ws.recv(timeout=30))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
    assert error["type"] == "error" and reason in error["error"], error
    assert closed.value.rcvd.code == code


def test_streams_past_max_streams_are_told_to_come_back(served):
    server, _ = served
    with connect(ws_url(server)) as a, connect(ws_url(server)) as b:
        a.send(as_s16(speechlike(0.5)))  # both slots taken and in use
        b.send(as_s16(speechlike(0.5)))
        with connect(ws_url(server)) as c:
            error = json.loads(c.recv(timeout=30))
            with pytest.raises(ConnectionClosed) as closed:
                c.recv(timeout=30)
        assert "all 2 stream slots are taken" in error["error"]
        assert closed.value.rcvd.code == 4503
        assert stream_over(a, [])[1]["type"] == "final"  # the open streams go on


def test_a_bidirectional_model_says_it_cannot_stream(tmp_path):
    ckpt = write_checkpoint(tmp_path / "bidir.pt")
    asr = Recognizer(torch.load(ckpt, weights_only=False), device="cpu", precision="fp32")
    streams = stream_slots(ckpt, asr, DecoderOptions(), Limits(), max_streams=8)
    with ServerThread(make_app(asr, streams=streams)) as server:
        assert request(server.url + "health")[1]["streaming"] is False
        with connect(ws_url(server)) as ws:
            error = json.loads(ws.recv(timeout=30))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
    assert "bidirectional" in error["error"] and closed.value.rcvd.code == 4503


def test_the_command_streams(stream_ckpt):
    command = [sys.executable, "-m", "speechswarm.serve", "--checkpoint", str(stream_ckpt)]
    command += ["--port", "0", "--precision", "fp32", "--threads", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[1]
        with connect(url.replace("http://", "ws://") + "stream") as ws:
            _, final = stream_over(ws, [as_s16(speechlike(1.0))])
        assert final["text"] and abs(final["duration"] - 1.0) < 1e-6
    finally:
        server.terminate()
        server.wait(30)
    assert server.returncode == 0
