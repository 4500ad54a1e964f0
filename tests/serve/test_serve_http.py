"""`speechswarm serve` over real HTTP: a server on an ephemeral port, requests from clients.

    .venv/bin/python -m pytest tests/serve/test_serve_http.py -q

Fast tests use a small random model (tests/test_export.py's checkpoint): the protocol, the
limits and the errors do not depend on what the model says. The slow ones use `overfit_run`
(tests/conftest.py), which reads its memorised utterances as words, to check that answers
over HTTP, alone or batched with concurrent requests, equal the Python API's.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from http_client import multipart, request

import speechswarm
from speechswarm.data.manifest import read_manifest
from speechswarm.errors import UsageError
from speechswarm.serve.app import Limits, make_app
from speechswarm.serve.server import ServerThread, bind
from test_export import write_checkpoint

LIMITS = Limits(max_bytes=300_000, max_seconds=5.0)


def wav_bytes(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    wave = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def random_server(tmp_path_factory, one_torch_thread_module):
    ckpt = write_checkpoint(tmp_path_factory.mktemp("serve") / "model.pt")
    asr = speechswarm.load(ckpt, device="cpu", precision="fp32")
    with ServerThread(make_app(asr, limits=LIMITS, name="random")) as server:
        yield server


@pytest.fixture(scope="module")
def one_torch_thread_module():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_health(random_server):
    status, body = request(random_server.url + "health")
    assert status == 200
    assert body["status"] == "ok" and body["model"] == "random" and body["sample_rate"] == 16000
    assert (body["max_bytes"], body["max_seconds"]) == (300_000, 5.0)


def test_raw_and_multipart_uploads_give_the_same_json(random_server):
    audio = wav_bytes(1.0)
    status, raw = request(random_server.url + "transcribe", audio, {"Content-Type": "audio/wav"})
    assert status == 200, raw
    assert set(raw) == {"text", "words", "duration"} and raw["duration"] == 1.0
    body, headers = multipart("file", "a.wav", audio)
    assert request(random_server.url + "transcribe", body, headers) == (200, raw)


def test_a_file_at_another_rate_in_another_format_is_read(random_server):
    buf = io.BytesIO()
    sf.write(buf, np.zeros((44100, 2), dtype=np.float32), 44100, format="FLAC")
    status, body = request(random_server.url + "transcribe", buf.getvalue())
    assert status == 200 and body["duration"] == 1.0


@pytest.mark.parametrize(
    ("data", "headers", "status", "reason"),
    [
        (b"this is not audio", {}, 400, "not an audio file"),
        (b"", {"Content-Type": "audio/wav"}, 400, "empty request body"),
        (wav_bytes(0.5)[:60], {}, 400, "request body"),  # a header without its samples
        (wav_bytes(6.0), {}, 413, "6.0 s of audio is over the limit of 5 s"),
        (b"\0" * 300_001, {}, 413, "over the limit of 300,000"),
    ],
    ids=["not-audio", "empty", "truncated", "too-long", "too-big"],
)
def test_bad_requests_get_a_4xx_and_one_line(random_server, data, headers, status, reason):
    got, body = request(random_server.url + "transcribe", data, headers)
    assert got == status and reason in body["error"], body
    assert "\n" not in body["error"]


def test_multipart_without_a_file_or_with_an_empty_one_is_a_400(random_server):
    body = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--x--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    status, answer = request(random_server.url + "transcribe", body, headers)
    assert status == 400 and "no file field" in answer["error"]
    status, answer = request(random_server.url + "transcribe", *multipart("file", "e.wav", b""))
    assert status == 400 and "is empty" in answer["error"]


def test_the_page_is_served_with_the_limits(random_server):
    with urllib.request.urlopen(random_server.url) as r:
        html = r.read().decode()
    assert r.headers["content-type"].startswith("text/html")
    assert 'id="file"' in html and "at most 5 s and 0.3 MB" in html


def test_a_taken_port_is_one_clear_error(random_server, tmp_path):
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{random_server.port}"):
        bind("127.0.0.1", random_server.port)
    done = subprocess.run(
        [sys.executable, "-m", "speechswarm.serve", "--checkpoint", "x.pt"]
        + ["--port", str(random_server.port)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"speechswarm serve: error: cannot listen on 127.0.0.1:{random_server.port}: Address "
        "already in use; choose another --port (0 takes any free one) or stop what holds it"
    ]


# ------------------------------------------------------------------ with a model that hears words


@pytest.fixture(scope="module")
def trained(overfit_run, one_torch_thread_module):
    asr = speechswarm.load(overfit_run.checkpoint, device="cpu", precision="fp32")
    files = [Path(u.audio) for u in read_manifest(overfit_run.manifest)]
    alone = {f: asr.recognize_batch([f])[0].to_json() for f in files}
    app = make_app(asr, max_batch=8, max_wait_ms=20)
    with ServerThread(app) as server:
        yield server, app, files, alone


@pytest.mark.slow
def test_a_real_file_reads_as_the_python_api_reads_it(trained):
    server, _, files, alone = trained
    status, body = request(server.url + "transcribe", files[0].read_bytes())
    assert status == 200 and body == alone[files[0]]
    assert body["text"] and [w["word"] for w in body["words"]] == body["text"].split()


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(trained):
    server, app, files, alone = trained
    jobs = files * 3  # 18 requests from 6 clients at once
    batches_before = app.state.queue.batches
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda f: request(server.url + "transcribe", f.read_bytes()), jobs))
    assert answers == [(200, alone[f]) for f in jobs]
    assert app.state.queue.batches - batches_before < len(jobs)  # some ran together


def test_an_onnx_model_serves_the_same_answers(tmp_path, one_torch_thread_module):
    from speechswarm.export import export_onnx
    from speechswarm.onnx_runtime import OnnxRecognizer

    ckpt = write_checkpoint(tmp_path / "model.pt")
    asr = OnnxRecognizer(export_onnx(ckpt, tmp_path / "model.onnx"))
    audio = wav_bytes(1.0, seed=3)
    (tmp_path / "a.wav").write_bytes(audio)
    with ServerThread(make_app(asr)) as server:
        status, body = request(server.url + "transcribe", audio)
        with pytest.raises(urllib.error.HTTPError) as e:  # GET: not allowed
            urllib.request.urlopen(server.url + "transcribe")
    assert status == 200 and body == asr.recognize_batch([tmp_path / "a.wav"])[0].to_json()
    assert e.value.code == 405


def test_the_command_as_a_user_types_it(tmp_path):
    ckpt = write_checkpoint(tmp_path / "model.pt")
    command = [sys.executable, "-m", "speechswarm.serve", "--checkpoint", str(ckpt)]
    command += ["--port", "0", "--max-seconds", "2", "--precision", "fp32", "--threads", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # serve: http://127.0.0.1:PORT/ (...); Ctrl-C stops
        assert line.startswith("serve: http://127.0.0.1:") and "greedy decoding" in line, line
        url = line.split()[1]
        status, health = request(url + "health")
        assert status == 200 and health["model"] == str(ckpt) and health["max_seconds"] == 2
        status, body = request(url + "transcribe", wav_bytes(3.0))
        assert status == 413 and body["error"].endswith("over the limit of 2 s")
        assert request(url + "transcribe", wav_bytes(1.0))[0] == 200
    finally:
        server.terminate()
        server.wait(30)
    # SIGTERM stops it as Ctrl-C does: cleanly, no traceback
    assert server.returncode == 0 and "Traceback" not in server.stderr.read()


def test_ctrl_c_stops_the_command_cleanly(tmp_path):
    ckpt = write_checkpoint(tmp_path / "model.pt")
    command = [sys.executable, "-m", "speechswarm.serve", "--checkpoint", str(ckpt)]
    command += ["--port", "0", "--precision", "fp32", "--threads", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[1]
        assert request(url + "transcribe", wav_bytes(1.0))[0] == 200
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    assert server.returncode == 0 and "Traceback" not in server.stderr.read()
