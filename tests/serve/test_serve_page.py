"""The upload page in a real browser: headless Chromium (Debian's `chromium`) driven over the
DevTools protocol loads /, uploads a file, records from a fake microphone, sends a WebM the
server cannot read as WAV, and shows the text or the server's reason.

    .venv/bin/python -m pytest tests/serve/test_serve_page.py -q

Screenshots land in the test's tmp folder (page-upload.png, page-recording.png,
page-error.png).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from http_client import request

import speechswarm
from browser import CHROMIUM, DevTools
from speechswarm.data.manifest import read_manifest
from speechswarm.serve.app import make_app
from speechswarm.serve.server import ServerThread

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh)"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture
def browser(tmp_path):
    devtools = DevTools(tmp_path / "profile")
    yield devtools
    devtools.close()


@pytest.fixture(scope="module")
def served(overfit_run):
    asr = speechswarm.load(overfit_run.checkpoint, device="cpu", precision="fp32")
    files = [Path(u.audio) for u in read_manifest(overfit_run.manifest)]
    with ServerThread(make_app(asr)) as server:
        yield server, asr, files


def open_page(browser: DevTools, url: str) -> None:
    browser.call("Page.navigate", url=url)
    browser.wait_for("document.readyState === 'complete' && document.body.dataset.state")


def test_uploading_a_file_shows_its_transcript(served, browser, tmp_path):
    server, asr, files = served
    expected = asr.recognize_batch([files[0]])[0]
    open_page(browser, server.url)
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", files=[str(files[0])], nodeId=node)
    state = browser.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )
    browser.screenshot(tmp_path / "page-upload.png")
    assert state == "done", browser.evaluate("document.getElementById('status').textContent")
    assert browser.evaluate("document.getElementById('text').textContent") == expected.text
    words = browser.evaluate(
        "[...document.querySelectorAll('#words span')].map(s => s.firstChild.textContent)"
    )
    assert words == [w.word for w in expected.words]
    assert files[0].name in browser.evaluate("document.getElementById('status').textContent")


def test_a_microphone_recording_is_sent_and_transcribed(served, browser, tmp_path):
    server, _, _ = served
    open_page(browser, server.url)
    browser.evaluate("document.getElementById('record').click()")
    browser.wait_for("document.body.dataset.state === 'recording'", timeout=20)
    time.sleep(1.5)  # Chromium's fake microphone: a beep every second
    browser.evaluate("document.getElementById('record').click()")
    state = browser.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )
    browser.screenshot(tmp_path / "page-recording.png")
    status = browser.evaluate("document.getElementById('status').textContent")
    assert state == "done", status
    assert status.startswith("recording.wav: 1.") or status.startswith("recording.wav: 2."), status


def test_a_format_only_the_browser_reads_is_sent_as_wav_and_bad_files_say_why(
    served, browser, tmp_path
):
    """WebM/Opus (what Chrome records; libsndfile does not read it) made in the page from an
    oscillator: the server refuses it, the page decodes it and sends WAV. A text file named
    .mp3 shows the server's one-line reason."""
    server, _, _ = served
    open_page(browser, server.url)
    make_webm = """(async () => {
      const ctx = new AudioContext();
      await ctx.resume();
      const osc = ctx.createOscillator(), sink = ctx.createMediaStreamDestination();
      osc.connect(sink);
      osc.start();
      const recorder = new MediaRecorder(sink.stream), chunks = [];
      recorder.ondataavailable = (e) => chunks.push(e.data);
      const stopped = new Promise((r) => (recorder.onstop = r));
      recorder.start();
      await new Promise((r) => setTimeout(r, 1000));
      recorder.stop();
      await stopped;
      transcribe(new Blob(chunks, { type: recorder.mimeType }), "tone.webm");
    })(); true"""
    browser.call("Runtime.evaluate", expression=make_webm, userGesture=True)  # audio may play
    browser.wait_for("document.body.dataset.state === 'busy'", timeout=20)
    state = browser.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )
    status = browser.evaluate("document.getElementById('status').textContent")
    assert state == "done" and status.startswith("tone.webm: 1."), status

    (tmp_path / "notes.mp3").write_text("not audio at all")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", files=[str(tmp_path / "notes.mp3")], nodeId=node)
    browser.wait_for("document.body.dataset.state === 'error'")
    browser.screenshot(tmp_path / "page-error.png")
    assert browser.evaluate("document.getElementById('status').textContent") == (
        "notes.mp3: not an audio file libsndfile reads (WAV, FLAC, OGG/Opus, MP3, ...)"
    )


@pytest.fixture(scope="module")
def served_stream(tmp_path_factory):
    """A server whose model streams (tests/test_streaming.py's small random model)."""
    import torch

    from speechswarm.decode import DecoderOptions
    from speechswarm.inference import Recognizer
    from speechswarm.serve.app import Limits
    from speechswarm.serve.server import stream_slots
    from test_streaming import make_checkpoint

    path = tmp_path_factory.mktemp("stream") / "stream.pt"
    torch.save(make_checkpoint(), path)
    asr = Recognizer(torch.load(path, weights_only=False), device="cpu", precision="fp32")
    streams = stream_slots(path, asr, DecoderOptions(), Limits(), max_streams=2)
    with ServerThread(make_app(asr, streams=streams)) as server:
        yield server


def test_with_a_streaming_model_the_text_grows_while_recording(served_stream, browser, tmp_path):
    open_page(browser, served_stream.url)
    browser.wait_for("document.getElementById('record').title.includes('/stream')")
    browser.evaluate("document.getElementById('record').click()")
    browser.wait_for("document.body.dataset.state === 'recording'", timeout=20)
    # partial text arrives while the microphone still records
    partial = browser.wait_for("document.getElementById('text').textContent", timeout=20)
    assert browser.evaluate("document.body.dataset.state") == "recording"
    browser.screenshot(tmp_path / "page-streaming.png")
    time.sleep(1.0)
    browser.evaluate("document.getElementById('record').click()")
    state = browser.wait_for(
        "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state"
    )
    browser.screenshot(tmp_path / "page-streamed.png")
    status = browser.evaluate("document.getElementById('status').textContent")
    assert state == "done" and status.startswith("live recording: "), status
    final = browser.evaluate("document.getElementById('text').textContent")
    assert final.startswith(partial) and len(final) > len(partial)
    seconds = float(status.split(": ")[1].split(" s")[0])
    assert 1.0 < seconds < 10.0, status
    deadline = time.monotonic() + 10  # the page closed its socket: the slot is free again
    while request(served_stream.url + "health")[1]["open_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert request(served_stream.url + "health")[1]["open_streams"] == 0
