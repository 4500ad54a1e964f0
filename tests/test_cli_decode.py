"""LM decoding, export and the ONNX runtime from the command line, as a user types them.

    .venv/bin/python -m pytest tests/test_cli_decode.py -q

Uses the session's `overfit_run` (tests/conftest.py): a tiny model that has memorised 6
utterances, so transcripts are words and comparisons mean something.
"""

from __future__ import annotations

import json

import pytest

from speechswarm.cli import main
from speechswarm.data.manifest import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def lm(overfit_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.arpa"
    assert main(["lm", "build", "--manifest", str(overfit_run.manifest), "--out", str(path)]) == 0
    return path


def test_lm_build_and_beam_eval(overfit_run, lm, capsys):
    ckpt, manifest = str(overfit_run.checkpoint), str(overfit_run.manifest)
    words = {w for u in read_manifest(manifest) for w in u.text.split()}
    assert "\\3-grams:" in lm.read_text() and f"ngram 1={len(words) + 3}" in lm.read_text()
    rc, out, _ = run(capsys, "eval", "--checkpoint", ckpt, "--manifest", manifest, "--json")
    greedy = json.loads(out)
    rc, out, _ = run(
        capsys, "eval", "--checkpoint", ckpt, "--manifest", manifest, "--json", "--lm", str(lm)
    )
    beam = json.loads(out)
    assert rc == 0 and beam["utterances"] == greedy["utterances"] == 6
    assert beam["wer"] <= greedy["wer"]  # the LM knows exactly these sentences
    assert beam["wer"] < 0.1


@pytest.mark.parametrize("by", ["wer", "cer"])
def test_tune_lm_reports_greedy_and_the_best_grid_point(overfit_run, lm, capsys, by):
    rc, out, _ = run(
        capsys,
        "tune-lm",
        "--checkpoint", str(overfit_run.checkpoint),
        "--manifest", str(overfit_run.manifest),
        "--lm", str(lm),
        "--alphas", "0,1",
        "--betas", "0,2",
        "--by", by,
        "--json",
    )  # fmt: skip
    assert rc == 0
    result = json.loads(out)
    assert len(result["grid"]) == 4
    other = "cer" if by == "wer" else "wer"
    assert result["best"] == min(result["grid"], key=lambda p: (p[by], p[other]))
    assert result["best"]["wer"] <= result["greedy"]["wer"]


def test_export_check_and_onnx_transcribe_match_pytorch(overfit_run, tmp_path, capsys):
    ckpt, onnx_path = str(overfit_run.checkpoint), str(tmp_path / "model.onnx")
    rc, out, _ = run(
        capsys, "export", "--checkpoint", ckpt, "--out", onnx_path, "--check", "--quantize", "int8"
    )
    assert rc == 0, out
    assert "max |log-prob diff|" in out and ": ok" in out
    assert (tmp_path / "model.int8.onnx").is_file()
    files = [u.audio for u in read_manifest(overfit_run.manifest)]
    rc, torch_out, torch_err = run(capsys, "transcribe", "--checkpoint", ckpt, *files)
    rc2, onnx_out, onnx_err = run(capsys, "transcribe", "--onnx", onnx_path, *files)
    assert rc == rc2 == 0
    assert onnx_out == torch_out and len(onnx_out.splitlines()) == 6
    assert "real-time factor" in torch_err and "onnxruntime" in onnx_err
    manifest = str(overfit_run.manifest)
    _, out, _ = run(capsys, "eval", "--checkpoint", ckpt, "--manifest", manifest, "--json")
    _, onnx_eval, _ = run(capsys, "eval", "--onnx", onnx_path, "--manifest", manifest, "--json")
    assert json.loads(onnx_eval)["wer"] == json.loads(out)["wer"]


def test_bad_decoder_inputs_fail_clearly(overfit_run, tmp_path, capsys):
    ckpt, manifest = str(overfit_run.checkpoint), str(overfit_run.manifest)
    missing = str(tmp_path / "missing.arpa")
    rc, _, err = run(capsys, "eval", "--checkpoint", ckpt, "--manifest", manifest, "--lm", missing)
    assert rc == 1 and "missing.arpa does not exist" in err and "lm build" in err
    rc, _, err = run(
        capsys, "transcribe", "--checkpoint", ckpt, "--decoder", "greedy", "--lm", missing, "x.wav"
    )
    assert rc == 1 and "needs beam search" in err
    rc, _, err = run(capsys, "transcribe", "--onnx", str(tmp_path / "none.onnx"), "x.wav")
    assert rc == 1 and "none.onnx does not exist" in err
