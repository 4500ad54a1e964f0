"""The `speechswarm` command as a user types it: train, resume, eval, transcribe, and the errors.

    .venv/bin/python -m pytest tests/test_cli.py -q

Every command runs in a subprocess of the installed entry point (or `python -m speechswarm`),
in a scratch folder, with OMP_NUM_THREADS=1: the test machine's cores are shared, and torch's
default pool of one thread per core runs ~10x slower when they are busy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest

import speechswarm
from speechswarm.checkpoint import load_checkpoint
from speechswarm.config import load_config
from speechswarm.data.manifest import read_manifest, write_manifest
from speechswarm.metrics import cer
from speechswarm.report import read_metrics

SPEECHSWARM = Path(sys.executable).with_name("speechswarm")  # the venv's entry point
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, cwd: Path, module: bool = False) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "speechswarm"] if module else [str(SPEECHSWARM)]
    return subprocess.run(
        [*argv, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


def assert_clean_failure(proc: subprocess.CompletedProcess, command: str, *words: str) -> None:
    """Exit 1 with one `speechswarm <command>: error: ...` line naming `words`, no traceback."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"speechswarm {command}: error: "), proc.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])


# ----------------------------------------------------------------------------- train


def train_args(corpus, *extra: str) -> list[str]:
    """`speechswarm train` on the 6 shortest utterances with a ~30k-parameter cut of `tiny`
    (augmentation as the preset has it), one epoch of 3 batches."""
    return [
        "train",
        "--config",
        "tiny",
        "--device",
        "cpu",
        f"data.train_manifest={corpus.few}",
        f"data.dev_manifest={corpus.few}",
        "train.out_dir=run",
        "data.num_workers=0",
        "data.max_batch_size=2",
        "train.epochs=1",
        "train.log_every=1",
        "train.num_threads=1",
        "train.precision=fp32",
        "model.conv_channels=[4,4]",
        "model.rnn_hidden=32",
        "model.rnn_layers=1",
        "train.inter_ctc_layers=[]",  # one layer: no intermediate CTC
        *extra,
    ]


@pytest.fixture(scope="module")
def cli_run(synth_corpus, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    return cli(*train_args(synth_corpus), cwd=cwd), cwd / "run"


def test_train_from_the_command_line(cli_run):
    proc, run = cli_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == (
        "stopped: epochs; run folder run; best checkpoint run/checkpoints/best.pt"
    )
    cfg = load_config(str(run / "config.yaml"))
    assert (cfg.model.rnn_hidden, cfg.train.device, cfg.train.epochs) == (32, "cpu", 1)
    assert (cfg.features.kind, cfg.optim.lr) == (
        "logmel",
        4e-3,
    )  # the preset's values where not overridden
    assert load_checkpoint(run / "checkpoints/last.pt")["train_state"]["step"] == 3
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "dev_wer" in r] == [3]
    assert (run / "summary.md").is_file() and (run / "plots/overview.png").is_file()


def test_resume_auto_continues_the_run(cli_run, synth_corpus, tmp_path):
    _, run = cli_run
    shutil.copytree(run, tmp_path / "run")
    proc = cli(*train_args(synth_corpus, "train.epochs=2"), "--resume", "auto", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from run/checkpoints/last.pt at step 3, epoch 1" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("stopped: epochs;")
    records = read_metrics(tmp_path / "run/metrics.jsonl")
    assert [r["step"] for r in records if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "dev_wer" in r] == [3, 6]
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert (ckpt["train_state"]["step"], ckpt["train_state"]["epoch"]) == (6, 2)


def test_bad_override_names_the_key(tmp_path):
    proc = cli("train", "--config", "tiny", "optim.lrr=1", cwd=tmp_path, module=True)
    assert_clean_failure(proc, "train", "optim", "lrr", "valid keys", "lr,")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_resume_of_a_missing_checkpoint(tmp_path):
    proc = cli(
        "train", "--config", "tiny", "--resume", "nope.pt", "train.out_dir=run", cwd=tmp_path
    )
    assert_clean_failure(proc, "train", "--resume nope.pt: no such checkpoint")
    assert not (tmp_path / "run").exists()  # failed before setting anything up


# ----------------------------------------------------------------------------- eval


@pytest.fixture(scope="module")
def mixed_manifest(synth_corpus, tmp_path_factory) -> Path:
    """The 6 memorised utterances and 4 dev utterances of unseen voices and sentences: a
    manifest the overfit model gets partly right."""
    utts = read_manifest(synth_corpus.few) + read_manifest(synth_corpus.dev)[:4]
    path = tmp_path_factory.mktemp("mixed") / "mixed.jsonl"
    write_manifest(path, utts)
    return path


@pytest.fixture(scope="module")
def eval_json(overfit_run, mixed_manifest, tmp_path_factory) -> dict:
    proc = cli(
        "eval", "--checkpoint", overfit_run.checkpoint, "--manifest", mixed_manifest,
        "--json", "--worst", "100", cwd=tmp_path_factory.mktemp("eval"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


@pytest.mark.slow  # needs overfit_run (~25 s)
def test_eval_json_agrees_with_jiwer_and_the_python_api(
    overfit_run, mixed_manifest, eval_json, one_torch_thread
):
    result = eval_json
    utts = read_manifest(mixed_manifest)
    assert (result["utterances"], result["skipped"]) == (10, 0)
    cli_hyps = {w["id"]: w["hyp"] for w in result["worst"]}  # --worst 100: every utterance
    assert sorted(cli_hyps) == sorted(u.id for u in utts)
    refs, hyps = [u.text for u in utts], [cli_hyps[u.id] for u in utts]
    assert result["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert result["cer"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert 0.05 < result["wer"] < 0.95  # memorised utterances right, unseen ones not
    assert {r["speaker"] for r in result["per_speaker"]} == {u.speaker for u in utts}
    assert sum(r["utterances"] for r in result["per_speaker"]) == 10

    # The Python API, one file at a time, hears the same. Exactly on the memorised
    # utterances; on unseen voices the model is unsure between characters, and batch padding
    # changes float rounding (bf16 where the CPU has it: precision "auto"), so a few flip.
    asr = speechswarm.load(overfit_run.checkpoint)
    api = {u.id: " ".join(asr.transcribe(u.audio).split()) for u in utts}
    memorised = [u.id for u in read_manifest(overfit_run.manifest)]
    assert {i: api[i] for i in memorised} == {i: cli_hyps[i] for i in memorised}
    unseen = [u.id for u in utts if u.id not in memorised]
    assert cer([cli_hyps[i] for i in unseen], [api[i] for i in unseen]) < 0.1


@pytest.mark.slow  # needs overfit_run (~25 s)
def test_eval_prints_a_per_speaker_table(overfit_run, mixed_manifest, eval_json, tmp_path):
    per_utt = tmp_path / "utts.jsonl"
    proc = cli(
        "eval", "--checkpoint", overfit_run.checkpoint, "--manifest", mixed_manifest,
        "--utterances", per_utt, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lines = [json.loads(x) for x in per_utt.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(u.id for u in read_manifest(mixed_manifest))
    assert all("words" in str(x) or "timings" in x for x in lines)
    utts = read_manifest(mixed_manifest)
    hyps = {w["id"]: w["hyp"] for w in eval_json["worst"]}  # same batches, same transcripts
    first = out.splitlines()[0]
    refs = [u.text for u in utts]
    all_hyps = [hyps[u.id] for u in utts]
    assert first.startswith(
        f"WER {jiwer.wer(refs, all_hyps):.2%}  CER {jiwer.cer(refs, all_hyps):.2%}"
    )
    assert "on 10 utterances" in first
    assert re.search(r"^speaker\s+utts\s+WER\s+CER$", out, re.M)
    for speaker in sorted({u.speaker for u in utts}):
        mine = [u for u in utts if u.speaker == speaker]
        r, h = [u.text for u in mine], [hyps[u.id] for u in mine]
        cells = (speaker, str(len(mine)), f"{jiwer.wer(r, h):.2%}", f"{jiwer.cer(r, h):.2%}")
        row = "^" + r"\s+".join(map(re.escape, cells)) + "$"
        assert re.search(row, out, re.M), (row, out)
    assert "worst 5 utterances (by CER):" in out


@pytest.mark.slow  # needs overfit_run (~25 s)
def test_eval_precision_reaches_the_model(overfit_run, mixed_manifest, tmp_path, one_torch_thread):
    args = ("eval", "--checkpoint", overfit_run.checkpoint, "--manifest", mixed_manifest)
    proc = cli(*args, "--precision", "fp32", "--json", "--worst", "100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    hyps = {w["id"]: w["hyp"] for w in json.loads(proc.stdout)["worst"]}
    # fp32 pads a batch without changing an utterance's outputs: the API, one file at a time
    asr = speechswarm.load(overfit_run.checkpoint, precision="fp32")
    assert hyps == {
        u.id: " ".join(asr.transcribe(u.audio).split()) for u in read_manifest(mixed_manifest)
    }
    proc = cli(*args, "--precision", "fp16", cwd=tmp_path)  # fp16 autocast is CUDA-only
    assert_clean_failure(proc, "eval", "precision fp16 needs a CUDA device")


def test_eval_of_a_missing_checkpoint(synth_corpus, tmp_path):
    proc = cli("eval", "--checkpoint", "nope.pt", "--manifest", synth_corpus.few, cwd=tmp_path)
    assert_clean_failure(proc, "eval", "checkpoint nope.pt: no such file")


# ----------------------------------------------------------------------------- transcribe


@pytest.fixture
def good_and_corrupt(overfit_run, tmp_path) -> tuple[Path, Path]:
    good = tmp_path / "good.flac"
    shutil.copy(read_manifest(overfit_run.manifest)[1].audio, good)
    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)  # a FLAC header, then garbage
    return good, corrupt


@pytest.mark.slow  # needs overfit_run (~25 s)
def test_transcribe_prints_a_line_per_file_and_an_error_for_a_bad_one(
    overfit_run, good_and_corrupt, tmp_path, one_torch_thread
):
    expected = speechswarm.load(overfit_run.checkpoint).transcribe(good_and_corrupt[0])
    assert expected  # words, not an empty string
    proc = cli(
        "transcribe", "--checkpoint", overfit_run.checkpoint, "good.flac", "corrupt.flac",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # one file failed, not all of them
    assert proc.stdout == f"good.flac\t{expected}\n"
    assert "Traceback" not in proc.stderr
    assert re.search(r"^corrupt\.flac\tERROR: corrupt\.flac: unreadable_audio", proc.stderr, re.M)

    proc = cli(
        "transcribe", "--checkpoint", overfit_run.checkpoint, "good.flac", "corrupt.flac",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert (rows[0]["file"], rows[0]["text"]) == ("good.flac", expected)
    assert [w["word"] for w in rows[0]["words"]] == expected.split()  # with start, end, confidence
    assert rows[1]["file"] == "corrupt.flac" and "unreadable_audio" in rows[1]["error"]
    assert len(rows) == 2

    # A folder: its audio files at any depth, sorted; a non-audio file in it is not picked up.
    (tmp_path / "more" / "deeper").mkdir(parents=True)
    shutil.copy(good_and_corrupt[0], tmp_path / "more" / "deeper" / "b.FLAC")
    shutil.copy(good_and_corrupt[0], tmp_path / "more" / "a.flac")
    (tmp_path / "more" / "notes.txt").write_text("not audio")
    proc = cli("transcribe", "--checkpoint", overfit_run.checkpoint, "more", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"more/a.flac\t{expected}\nmore/deeper/b.FLAC\t{expected}\n"


@pytest.mark.slow  # needs overfit_run (~25 s)
def test_transcribe_exits_1_when_every_file_fails(overfit_run, good_and_corrupt, tmp_path):
    proc = cli(
        "transcribe", "--checkpoint", overfit_run.checkpoint, "corrupt.flac", "missing.flac",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "corrupt.flac\tERROR:" in proc.stderr and "missing.flac\tERROR:" in proc.stderr
    assert "missing_file" in proc.stderr


@pytest.mark.slow  # needs overfit_run (~25 s)
def test_transcribe_in_batches_keeps_order_and_takes_a_precision(
    overfit_run, good_and_corrupt, tmp_path, one_torch_thread
):
    files = [u.audio for u in read_manifest(overfit_run.manifest)][::-1]  # not by length
    files.insert(2, str(good_and_corrupt[1]))
    asr = speechswarm.load(overfit_run.checkpoint, precision="fp32")
    expected = {f: asr.transcribe(f) for f in files if f != str(good_and_corrupt[1])}
    proc = cli(
        "transcribe", "--checkpoint", overfit_run.checkpoint, "--precision", "fp32",
        "--batch-size", "4", "--json", *files, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["file"] for r in rows] == files
    assert "unreadable_audio" in rows[2]["error"]
    # in fp32 a batch pads, but eval-mode outputs do not depend on neighbours
    assert {r["file"]: r["text"] for r in rows if "text" in r} == expected
    assert "PyTorch on cpu, fp32" in proc.stderr and "batches of <= 4" in proc.stderr


def test_precision_is_for_checkpoints_only(tmp_path):
    proc = cli("transcribe", "--onnx", "m.onnx", "--precision", "bf16", "x.wav", cwd=tmp_path)
    assert_clean_failure(proc, "transcribe", "--precision applies to --checkpoint")
    proc = cli("eval", "--onnx", "m.onnx", "--manifest", "m.jsonl", "--precision", "fp32",
               cwd=tmp_path)  # fmt: skip
    assert_clean_failure(proc, "eval", "--precision applies to --checkpoint")
    proc = cli("transcribe", "--checkpoint", "c.pt", "--batch-size", "0", "x.wav", cwd=tmp_path)
    assert_clean_failure(proc, "transcribe", "--batch-size must be >= 1")


# ----------------------------------------------------------------------------- errors


def test_a_user_error_is_one_line_and_exit_code_1(tmp_path, capsys):
    from speechswarm.cli import main

    code = main(["lm", "build", "--text", str(tmp_path / "none.txt"), "--out", "lm.arpa"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        f"speechswarm lm: error: lm build: text file {tmp_path / 'none.txt'} does not exist"
    ]


@pytest.mark.parametrize("kind", ["RuntimeError", "ValueError"])
def test_an_unexpected_exception_keeps_its_traceback(tmp_path, kind):
    """Only SpeechswarmErrors (and a missing input file) are user errors: a bug, or an
    out-of-memory RuntimeError, must show where it happened."""
    script = (
        "import speechswarm.decode.lm as lm\n"
        "def boom(*args, **kwargs):\n"
        f"    raise {kind}('boom')\n"
        "lm.build_lm_from = boom\n"
        "from speechswarm.cli import main\n"
        "raise SystemExit(main(['lm', 'build', '--text', 't.txt', '--out', 'lm.arpa']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert "in _lm_build" in proc.stderr and "in boom" in proc.stderr  # where it happened
    assert proc.stderr.strip().splitlines()[-1] == f"{kind}: boom"
    assert "error:" not in proc.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--nproc", "-1"], "--nproc, --hogwild and --max-restarts take counts >= 0"),
        (["train", "--config", "tiny", "--resume", "nope.pt"], "--resume nope.pt: no such"),
        (["p2p", "--config", "p2p-tiny", "p2p.runs=[gossip/torus_kn]", "p2p.degree=3",
          "data.train_manifest=/nonexistent.jsonl"], "does not exist"),
    ],
)  # fmt: skip
def test_training_commands_report_user_errors_in_one_line(argv, message, capsys, tmp_path):
    from speechswarm.cli import main

    code = main([*argv, f"train.out_dir={tmp_path / 'run'}"] if "--config" in argv else argv)
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
