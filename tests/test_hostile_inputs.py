"""Hostile inputs to transcribe, eval and prepare: each is handled or refused in one line.

Audio: an hours-long file (refused by its header before decoding: `data.audio.
MAX_AUDIO_SECONDS`, lowered here to 2 s), 0 samples, NaN/inf float samples, 8 kHz, 48 kHz and
stereo (resampled and down-mixed), a FIFO. Manifests: a line that is not UTF-8, not JSON, not
a JSON object; absolute and `../` paths (read as given, counted by validate). Checkpoints
carrying pickle payloads (refused as unsafe, never run) or no model. TAR shards whose members
are links, devices or names outside the archive, and lying indexes. Client hooks that raise,
exit or return the wrong thing (one line naming the hook). The campaign that runs them all:
`speechswarm.chaos.hostile` (ARPA files: tests/decode/test_arpa.py)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from speechswarm.chaos.hostile import CASES, KINDS, run_campaign, run_case
from speechswarm.chaos.hostile_inputs import Attempt, Call, Case, Sandbox
from speechswarm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from speechswarm.cli import main
from speechswarm.data import audio
from speechswarm.data.audio import AudioError, load_audio
from speechswarm.data.clients import HookError, clients_from_hook, load_hook
from speechswarm.data.manifest import ManifestError, read_manifest
from speechswarm.data.shards import (
    MAX_MEMBER_BYTES,
    ShardDataset,
    ShardError,
    iter_shard,
    resolve_shards,
)
from speechswarm.data.tokenizer import CharTokenizer
from speechswarm.data.validate import validate_utterances
from speechswarm.errors import user_message
from speechswarm.p2p.workspace import _loads
from speechswarm.transcribe import transcribe_paths


@pytest.fixture(autouse=True)
def commands_through_the_cli(monkeypatch):
    """The campaign's cases run commands through the CLI (`speechswarm chaos hostile` hands
    it over; a campaign may not import it)."""
    from speechswarm.chaos import hostile_inputs
    from speechswarm.cli import main

    monkeypatch.setattr(hostile_inputs, "RUN_CLI", main)


SR = 16000
TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR) / SR)).astype(np.float32)  # 1 s


@pytest.fixture
def files(tmp_path):
    """name -> path of one hostile file each (all 1 s of a 440 Hz tone unless said)."""
    d = tmp_path
    nan = TONE.copy()
    nan[100], nan[200] = np.nan, np.inf
    sf.write(d / "ok.wav", TONE, SR, subtype="PCM_16")
    sf.write(d / "empty.wav", np.zeros(0, np.float32), SR, subtype="PCM_16")
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    sf.write(d / "8k.wav", soxr.resample(TONE, SR, 8000), 8000, subtype="PCM_16")
    sf.write(d / "48k.wav", soxr.resample(TONE, SR, 48000), 48000, subtype="PCM_16")
    sf.write(d / "stereo.wav", np.stack([TONE, 0.5 * TONE], 1), SR, subtype="PCM_16")
    sf.write(d / "long.flac", np.tile(TONE, 3), SR, subtype="PCM_16")  # 3 s > the 2 s cap
    (d / "junk.wav").write_bytes(b"<html>not audio</html>")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture
def two_second_cap(monkeypatch):
    monkeypatch.setattr(audio, "MAX_AUDIO_SECONDS", 2.0)


class LengthRecognizer:
    """Stands in for a model: the 'transcript' is the wave's length in samples."""

    sample_rate = SR

    def transcribe_batch(self, waves):
        return [str(len(w)) for w in waves]


def test_transcribe_handles_or_refuses_each_hostile_file(files, two_second_cap):
    names = ["ok", "empty", "nan", "8k", "48k", "stereo", "long", "junk"]
    out = list(transcribe_paths(LengthRecognizer(), [str(files[n]) for n in names], 4))
    assert [o[0] for o in out] == [str(files[n]) for n in names]  # every file, in order
    result = dict(zip(names, out, strict=True))
    for name in ("ok", "8k", "48k", "stereo"):  # resampled / down-mixed to 1 s at 16 kHz
        path, text, seconds, error = result[name]
        assert (
            error is None and abs(int(text) - SR) <= 1 and seconds == pytest.approx(1.0, abs=1e-3)
        )
    reasons = {n: result[n][3].reason for n in ("empty", "nan", "long", "junk")}
    assert reasons == {"empty": "empty_audio", "nan": "nonfinite_samples", "long": "too_long",
                       "junk": "unreadable_audio"}  # fmt: skip
    assert all(result[n][1] is None for n in reasons)


def test_an_hours_long_file_is_refused_by_its_header_before_decoding(files, two_second_cap, monkeypatch):  # fmt: skip
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a file that is too long")

    with monkeypatch.context() as m, pytest.raises(AudioError) as caught:
        m.setattr(sf.SoundFile, "read", no_decoding)
        load_audio(files["long"], SR)
    assert str(caught.value) == (
        f"{files['long']}: too_long (3.0 s > 2 s at once); split it into parts (e.g. "
        "`ffmpeg -i IN -f segment -segment_time 600 part%03d.flac`) or raise "
        "SPEECHSWARM_MAX_AUDIO_SECONDS if memory allows"
    )
    assert len(load_audio(files["long"], SR, offset=1.0, duration=1.5)) == 24000  # a part fits


def test_stereo_and_other_rates_become_the_same_mono_wave(files):
    mono = load_audio(files["ok"], SR)
    np.testing.assert_allclose(load_audio(files["stereo"], SR), 0.75 * mono, atol=1e-4)
    for name in ("8k", "48k"):
        wave = load_audio(files[name], SR)
        assert abs(len(wave) - SR) <= 1
        assert np.abs(wave[1000:-1000] - mono[1000 : len(wave) - 1000]).max() < 0.02, name


def _manifest(tmp_path, *lines: bytes):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


GOOD = json.dumps({"id": "a", "audio": "ok.wav", "duration": 1.0, "text": "a"}).encode()


def test_a_manifest_line_that_is_not_utf8_is_named(tmp_path):
    bad = b'{"id": "b", "audio": "ok.wav", "duration": 1.0, "text": "caf\xe9"}'
    path = _manifest(tmp_path, GOOD, bad)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert str(caught.value) == (
        f"{path}:2: not UTF-8 (byte 0xe9 at column 61); re-save the manifest as UTF-8"
    )


def test_a_manifest_line_that_is_not_json_is_named(tmp_path):
    path = _manifest(tmp_path, GOOD, b"this is not json")
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not a manifest record \(Expecting"):
        read_manifest(path)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    assert [u.id for u in read_manifest(_manifest(tmp_path, b"\xef\xbb\xbf" + GOOD))] == ["a"]


def test_validate_on_a_non_utf8_manifest_fails_in_one_line(tmp_path):
    """`eval` and `train` read manifests the same way (`read_manifest`)."""
    path = _manifest(tmp_path, GOOD, b'{"id": "b", "text": "\xff"}')
    proc = subprocess.run([sys.executable, "-m", "speechswarm", "validate", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"speechswarm validate: error: {path}:2: not UTF-8 (byte 0xff at column 22); "
        "re-save the manifest as UTF-8"
    ]


def test_a_fifo_is_refused_unopened(tmp_path):
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(AudioError, match=r"fifo.wav: missing_file \(not a regular file"):
        load_audio(fifo, SR)


def test_a_manifest_line_that_is_not_an_object_is_named(tmp_path):
    path = _manifest(tmp_path, GOOD, b'"id audio duration text"')  # `"id" in str` would match
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not a manifest record \(a JSON string"):
        read_manifest(path)


def test_absolute_and_climbing_paths_are_read_as_given_and_counted(tmp_path):
    sf.write(tmp_path / "audio.wav", TONE, SR, subtype="PCM_16")
    (tmp_path / "m").mkdir()
    sf.write(tmp_path / "m" / "in.wav", TONE, SR, subtype="PCM_16")
    records = [dict(json.loads(GOOD), id=i, audio=a)
               for i, a in [("abs", str(tmp_path / "audio.wav")), ("up", "../audio.wav"),
                            ("in", "in.wav")]]  # fmt: skip
    path = _manifest(tmp_path / "m", *(json.dumps(r).encode() for r in records))
    utts = read_manifest(path)
    assert [Path(u.audio).resolve() for u in utts] == [
        tmp_path / "audio.wav",
        tmp_path / "audio.wav",
        tmp_path / "m" / "in.wav",
    ]
    report = validate_utterances(utts, CharTokenizer(), base_dir=path.parent.resolve())
    assert len(report.ok) == 3 and report.notes["outside_folder"] == 2
    assert "outside_folder 2" in report.summary()


# ---------------------------------------------------------------------- checkpoints


def _live(path: Path, marker: Path) -> bool:
    """Whether loading `path` the unsafe way runs its payload (the test's own control)."""
    with contextlib.suppress(Exception):
        torch.load(path, weights_only=False)
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_payload_is_refused_as_unsafe_and_never_runs(tmp_path, legacy):
    marker, path = tmp_path / "PAYLOAD_RAN", tmp_path / "evil.pt"
    state = {"model": {}, "x": Call(os.system, f"touch '{marker}'")}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    assert _live(path, marker)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert caught.value.reason == "unsafe_content" and not marker.exists()
    # torch 2.6+ says "unsupported GLOBAL posix.system whose module posix is blocked"
    assert "holds a pickled posix.system object" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_payload_reaches_no_command(tmp_path, capsys):
    marker, path = tmp_path / "PAYLOAD_RAN", tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Call(os.system, f"touch '{marker}'")}, path)
    sf.write(tmp_path / "a.wav", TONE, SR, subtype="PCM_16")
    assert main(["transcribe", "--checkpoint", str(path), str(tmp_path / "a.wav")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechswarm transcribe: error: checkpoint ") and "\n" not in err
    assert "refusing to unpickle it" in err and not marker.exists()


def test_pickle_opcodes_weights_only_refuses_are_named_in_one_line(tmp_path):
    path = tmp_path / "proto0.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=0))  # DICT (opcode 100): not read
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert caught.value.reason == "corrupt_file" and "\n" not in str(caught.value)
    assert "pickle opcode 100, which weights-only loading refuses" in str(caught.value)


def test_model_readers_refuse_a_checkpoint_without_a_model(tmp_path):
    plain = save_checkpoint(tmp_path / "plain.pt", {"step": 1})
    assert load_checkpoint(plain) == {"step": 1}  # a plain state dict is still a checkpoint
    with pytest.raises(CheckpointError, match="has no model, model_settings, features"):
        load_checkpoint(plain, model=True)
    listed = save_checkpoint(tmp_path / "listed.pt", {"model": [1, 2]})
    with pytest.raises(CheckpointError, match="its 'model' is a list, not a dict"):
        load_checkpoint(listed)


def test_a_p2p_worker_payload_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    buf = io.BytesIO()
    torch.save((Call(os.system, f"touch '{marker}'"),), buf)
    with pytest.raises(RuntimeError) as caught:
        _loads(buf.getvalue())
    assert str(caught.value) == "p2p worker payload refused: it holds a pickled posix.system object"
    assert not marker.exists()


# ---------------------------------------------------------------------- TAR shards


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _member(name: str, data: bytes = b"", kind=tarfile.REGTYPE, **fields):
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../x.flac", b"x"), "climbs out of the archive with '..'"),
        (_member("a/../../x.json", b"x"), "climbs out of the archive with '..'"),
        (_member("/tmp/x.flac", b"x"), "has an absolute name"),
        (_member("s.flac", kind=tarfile.SYMTYPE, linkname="/etc/passwd"),
         "is a symbolic link to '/etc/passwd'"),
        (_member("h.flac", kind=tarfile.LNKTYPE, linkname="../../etc/passwd"),
         "is a hard link to '../../etc/passwd'"),
        (_member("f.flac", kind=tarfile.FIFOTYPE), "is a device, FIFO or other special file"),
        (_member("../..", kind=tarfile.DIRTYPE), "climbs out of the archive with '..'"),
        (_member("big.flac", size=MAX_MEMBER_BYTES + 1), "claims 1,073,741,825 bytes (more than 1,073,741,824)"),
    ],
)  # fmt: skip
def test_a_shard_with_a_member_outside_the_archive_is_refused_whole(tmp_path, member, why):
    path = _tar(tmp_path / "shard-000000.tar", _member("ok.json", b"{}"), member)
    with pytest.raises(ShardError) as caught:
        list(iter_shard(path))
    assert str(caught.value).startswith(f"shard {path}: member {member[0].name!r} {why}; ")
    assert "\n" not in str(caught.value) and list(tmp_path.iterdir()) == [path]


def test_folders_and_plain_members_are_read(tmp_path):
    path = _tar(tmp_path / "s.tar", _member("sub", kind=tarfile.DIRTYPE),
                _member("sub/a.json", b"{}"), _member("sub/a.flac", b"f"))  # fmt: skip
    assert list(iter_shard(path)) == [("a", {"json": b"{}", "flac": b"f"})]


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"shards": [{"path": "../other/shard.tar"}]}, "shard '../other/shard.tar' is not a file"),
        ({"shards": [{"path": "/data/shard.tar"}]}, "shard '/data/shard.tar' is not a file name"),
        ("{not json", "is not a shard index (JSONDecodeError"),
        ({"shards": {"path": "x.tar"}}, "is not a shard index (TypeError"),
    ],
)
def test_an_index_listing_shards_elsewhere_is_refused(tmp_path, index, message):
    if isinstance(index, dict):
        index = json.dumps({"num_utts": 1, "total_duration": 1.0, **index})
    (tmp_path / "shards.json").write_text(index)
    with pytest.raises(ShardError, match=re.escape(message)):
        resolve_shards(tmp_path)


def test_a_record_that_is_not_json_is_skipped_with_a_warning(tmp_path, caplog):
    buf = io.BytesIO()
    sf.write(buf, TONE, SR, format="FLAC", subtype="PCM_16")
    flac, good = buf.getvalue(), json.dumps({"id": "a", "text": "a"}).encode()
    path = _tar(tmp_path / "shard-000000.tar", _member("a.flac", flac), _member("a.json", good),
                _member("b.flac", flac), _member("b.json", b"{not json"))  # fmt: skip
    samples = list(ShardDataset(path, CharTokenizer(), shuffle_shards=False))
    assert [s.id for s in samples] == ["a"]
    assert "sample b: .json is not a record with a text; skipped" in caplog.text


def test_a_user_error_from_a_loader_worker_is_one_line_again(tmp_path):
    path = _tar(tmp_path / "shard-000000.tar", _member("../x.flac", b"x"))
    loader = torch.utils.data.DataLoader(ShardDataset(path, CharTokenizer()), num_workers=1)
    with pytest.raises(ShardError) as caught:
        next(iter(loader))
    assert str(caught.value).startswith("Caught ShardError in DataLoader worker process 0.")
    assert user_message(caught.value) == (
        f"shard {path}: member '../x.flac' climbs out of the archive with '..'; shards hold only "
        "plain files named inside the archive (refused whole; rebuild it with `speechswarm shard`)"
    )


# ---------------------------------------------------------------------- client hooks

HOOKS = textwrap.dedent(
    """
    import sys

    def raises():
        raise ValueError("the corpus\\nserver said no")

    def exits():
        sys.exit(3)

    def a_list():
        return [1]

    def a_number_per_split():
        return {"train": 5}

    def paths_that_do_not_exist():
        return {"train": [(["nope.wav"], ["a"])]}
    """
)


@pytest.fixture
def hooks(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_hook adds the file's folder
    (tmp_path / "broken.py").write_text("def f(:\n    pass\n")
    (tmp_path / "loud.py").write_text("import os\n\nraise RuntimeError('no server')\n")
    path = tmp_path / "hooks.py"
    path.write_text(HOOKS)
    yield path
    for name in [n for n in sys.modules if n.startswith("speechswarm_hook_")]:
        del sys.modules[name]  # what load_hook registered


@pytest.mark.parametrize(
    ("func", "message"),
    [
        ("raises", "raised ValueError: the corpus server said no (at hooks.py:5)"),
        ("exits", "raised SystemExit: 3 (at hooks.py:8)"),
        ("a_list", "result is a list; expected a dict with 'train'"),
        ("a_number_per_split", "result: split 'train' is a int; expected a list of (xs, ys)"),
    ],
)
def test_a_hook_that_fails_is_named_in_one_line(hooks, func, message):
    spec = f"{hooks}:{func}"
    with pytest.raises(HookError) as caught:
        load_hook(spec)()
    assert str(caught.value).startswith(f"hook {spec!r} ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("broken.py", "raised SyntaxError: invalid syntax (at broken.py:1)"),
        ("loud.py", "raised RuntimeError: no server (at loud.py:3)"),
    ],
)
def test_a_hook_file_that_fails_to_load_is_named(hooks, file, message):
    spec = f"{hooks.parent / file}:f"
    with pytest.raises(HookError, match=re.escape(f"hook {spec!r}: loading ")) as caught:
        load_hook(spec)
    assert str(caught.value).endswith(message)


def test_an_item_error_names_the_hook_too(hooks, tmp_path):
    spec = f"{hooks}:paths_that_do_not_exist"
    with pytest.raises(
        HookError, match=re.escape(f"hook {spec!r} result: split 'train', client 0")
    ):
        clients_from_hook(load_hook(spec)(), tmp_path / "out")


def test_a_dataset_name_that_climbs_out_stays_an_id(tmp_path):
    wave = np.zeros(1600, np.float32)
    result = {"train": [([wave], ["a"])], "dataset_name": "../../x"}
    (utt,) = clients_from_hook(result, tmp_path / "out")["train"]
    assert utt.id == "x-train-c0000-000000" and Path(utt.audio).is_relative_to(tmp_path / "out")


def test_p2p_names_a_failing_hook_in_one_line(hooks, tmp_path, capsys):
    spec = f"{hooks}:raises"
    argv = ["p2p", "--config", "p2p-tiny", "--clients", spec, f"train.out_dir={tmp_path / 'p2p'}"]
    assert main(argv) == 1
    assert capsys.readouterr().err.strip() == (
        f"speechswarm p2p: error: hook {spec!r} raised ValueError: the corpus server said no "
        "(at hooks.py:5)"
    )


# ---------------------------------------------------------------------- the campaign


def test_the_judge_sees_code_tracebacks_and_writes_outside(tmp_path):
    def misbehaves(box: Sandbox) -> Attempt:
        box.marker.touch()
        (box.root / "ESCAPED").touch()
        (box.target / "fine").touch()
        return Attempt(True, "Traceback (most recent call last):\n  ...", traceback=True)

    outcome = run_case(Case("shard", "misbehaves", "test", misbehaves), tmp_path / "case")
    assert outcome.code_executed and outcome.traceback and not outcome.one_line
    assert outcome.written_outside == ["ESCAPED"] and not outcome.passed


def test_one_case_per_kind_passes(tmp_path):
    picked = {c.kind: c for c in reversed(CASES)}  # the first case of each kind
    outcomes = run_campaign(tmp_path, list(picked.values()), progress=lambda line: None)
    assert [o.kind for o in outcomes if o.passed] == list(picked)


@pytest.mark.slow
def test_the_campaign_refuses_every_hostile_input(tmp_path, capsys):
    from speechswarm.cli import main

    before = (logging.root.manager.disable, torch.get_num_threads())
    assert main(["chaos", "hostile", "--out", str(tmp_path)]) == 0  # as a user types it
    assert (logging.root.manager.disable, torch.get_num_threads()) == before  # put back
    table = (tmp_path / "hostile.md").read_text()
    assert re.search(r"^\| all \| (\d+) \|.*\| \1/\1 \(100 %\) \|$", table, re.M), table
    rows = json.loads((tmp_path / "hostile.json").read_text())["inputs"]
    assert len(rows) >= 25 and {r["kind"] for r in rows} == set(KINDS)
    assert not (tmp_path / "sandbox").exists()
