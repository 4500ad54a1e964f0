"""`speechswarm transcribe --stream` as a user types it, on an untrained streaming checkpoint.

.venv/bin/python -m pytest tests/test_streaming_cli.py -q
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import soundfile as sf
import torch
from tests.test_streaming import make_checkpoint, speechlike

from speechswarm.cli import main
from speechswarm.inference import load


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream_cli")
    torch.save(make_checkpoint(), out / "stream.pt")
    audio = []
    for i, seconds in enumerate((1.3, 0.7)):
        audio.append(out / f"clip{i}.flac")
        sf.write(audio[-1], speechlike(seconds, seed=i), 16000, format="FLAC", subtype="PCM_24")
    return out / "stream.pt", audio


def test_stream_prints_growing_partials_then_the_whole_clip_text(files, one_torch_thread):
    checkpoint, audio = files
    cmd = [sys.executable, "-m", "speechswarm", "transcribe", "--stream", "--chunk-ms", "130"]
    cmd += ["--checkpoint", str(checkpoint), "--threads", "1", *map(str, audio)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    whole = load(checkpoint, device="cpu", precision="fp32")
    lines = run.stdout.splitlines()
    for path in audio:
        mine = [line.split("\t") for line in lines if line.startswith(f"{path}\t")]
        partials = [fields[2] for fields in mine if len(fields) == 3]
        assert mine[-1] == [str(path), whole.transcribe(path)]
        assert partials and all(b.startswith(a) for a, b in itertools.pairwise(partials))
        assert all(fields[1].startswith("partial ") for fields in mine[:-1])
    assert "streamed 2 file(s), 2.0 s of audio" in run.stderr
    assert "chunks of 130 ms" in run.stderr


def test_stream_refuses_what_it_cannot_do(files, capsys):
    checkpoint, audio = files
    base = ["transcribe", "--stream", str(audio[0])]
    for extra, said in (
        (["--onnx", "m.onnx"], "--stream needs --checkpoint"),
        (["--checkpoint", str(checkpoint), "--json"], "not --json"),
        (["--checkpoint", str(checkpoint), "--precision", "bf16"], "fp32 on the CPU"),
        (["--checkpoint", str(checkpoint), "--chunk-ms", "0"], "--chunk-ms must be > 0"),
    ):
        assert main([*base, *extra]) != 0
        assert said in capsys.readouterr().err
