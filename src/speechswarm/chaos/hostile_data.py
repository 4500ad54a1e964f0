"""Hostile data files for `speechswarm chaos hostile`: TAR shards, manifests, ARPA models.

    speechswarm chaos hostile --out runs/hostile

Shards are read the way `speechswarm train data.shards=DIR` reads them
(`train.shard_stream.shard_source`, batches from the stream; one case through a DataLoader
worker, one through the whole `train` command). Manifests go through `speechswarm validate`,
`shard` and `eval`; ARPA files through `transcribe --lm` (the beam decoder), `eval --lm` and
`lm`'s reader. See `chaos/hostile_inputs.py` for `Case`, `Sandbox` and `Attempt`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from speechswarm.chaos.hostile_inputs import (
    GOOD_ARPA,
    SR,
    Attempt,
    Case,
    Sandbox,
    call,
    cli,
    cli_process,
    good_checkpoint,
    tone,
    train_args,
    write_arpa_text,
    write_manifest_lines,
)

# ---------------------------------------------------------------------- TAR shards


def _flac() -> bytes:
    buf = io.BytesIO()
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(SR // 2) / SR)
    sf.write(buf, wave.astype(np.float32), SR, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _sample(key: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    record = {"id": key, "audio": f"{key}.flac", "duration": 0.5, "text": "a"}
    return [_file(f"{key}.flac", _flac()), _file(f"{key}.json", json.dumps(record).encode())]


def _file(name: str, data: bytes, kind: bytes = tarfile.REGTYPE, **fields) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, len(data), 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def _shards(box: Sandbox, members: list, index: dict | bytes | None = None) -> Path:
    """inputs/shards/ with one shard: a good sample, then `members`; and its shards.json."""
    folder = box.inputs / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / "shard-000000.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in [*_sample("ok"), *members]:
            tar.addfile(info, io.BytesIO(data) if info.size and data else None)
    index = index or {
        "sample_rate": SR, "num_utts": 2, "total_duration": 1.0, "skipped": [],
        "shards": [{"path": "shard-000000.tar", "num_utts": 2, "duration": 1.0}],
    }  # fmt: skip
    text = index if isinstance(index, bytes) else json.dumps(index).encode()
    (folder / "shards.json").write_bytes(text)
    return folder


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _stream(folder: Path, workers: int = 0) -> tuple[Attempt, list[str], list[str]]:
    """Read `folder` as training does; (attempt, utterance ids streamed, warnings)."""
    from speechswarm.config import load_config
    from speechswarm.data.tokenizer import CharTokenizer
    from speechswarm.train.ddp import DistEnv
    from speechswarm.train.shard_stream import shard_source

    overrides = [f"data.shards={folder}", f"data.num_workers={workers}"]
    cfg = load_config("tiny", overrides)
    ids: list[str] = []
    warnings, logger = _Warnings(), logging.getLogger("speechswarm.data.shards")
    logger.addHandler(warnings)
    try:
        log = logging.getLogger("speechswarm.chaos.hostile")
        attempt = call(
            lambda: ids.extend(
                i
                for batch in shard_source(cfg, CharTokenizer(), log, DistEnv())[1]
                for i in batch.ids
            )
        )
    finally:
        logger.removeHandler(warnings)
    return attempt, ids, warnings.lines


def _shard_case(name: str, members_of, index_of=None, via: str = "stream") -> Case:
    def run(box: Sandbox) -> Attempt:
        members = members_of(box)
        folder = _shards(box, members, index_of(box) if index_of else None)
        if via == "train":
            return cli(*train_args(box, f"data.shards={folder}"))
        attempt, ids, warnings = _stream(folder, workers=1 if via == "worker" else 0)
        if attempt.refused or not members:
            return attempt
        bad = Path(members[0][0].name).name.partition(".")[0]  # the hostile sample's key
        return Attempt(bad not in ids, "\n".join(warnings), attempt.traceback)

    where = {"stream": "training stream", "worker": "training stream, DataLoader worker",
             "train": "speechswarm train data.shards="}[via]  # fmt: skip
    return Case("shard", name, where, run)


def _outside_tar(box: Sandbox) -> Path:
    """A good shard outside the shard folder (what a lying index points to)."""
    path = box.inputs / "elsewhere" / "shard-000000.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for info, data in _sample("far"):
            tar.addfile(info, io.BytesIO(data))
    return path


def _index_to(paths: list[str]) -> dict:
    shards = [{"path": p, "num_utts": 1, "duration": 0.5} for p in paths]
    return {"sample_rate": SR, "num_utts": 1, "total_duration": 0.5, "shards": shards}


SHARD_CASES = [
    _shard_case("a member named ../ESCAPED.flac", lambda b: _sample("../ESCAPED")),
    _shard_case(
        "a member with an absolute name", lambda b: _sample(str(b.root / "ESCAPED_ABS"))
    ),  # fmt: skip
    _shard_case("a member sub/../../x climbing out", lambda b: _sample("sub/../../ESCAPED")),
    _shard_case(
        "a symlink member to /etc/passwd",
        lambda b: [_file("s.flac", b"", tarfile.SYMTYPE, linkname="/etc/passwd")],
    ),  # fmt: skip
    _shard_case(
        "a hard link member to ../../etc/passwd",
        lambda b: [_file("h.flac", b"", tarfile.LNKTYPE, linkname="../../etc/passwd")],
    ),  # fmt: skip
    _shard_case("a FIFO member", lambda b: [_file("f.flac", b"", tarfile.FIFOTYPE)]),
    _shard_case(
        "a character device member",
        lambda b: [_file("d.flac", b"", tarfile.CHRTYPE, devmajor=1, devminor=5)],
    ),  # fmt: skip
    _shard_case("a folder member named ../..", lambda b: [_file("../..", b"", tarfile.DIRTYPE)]),
    _shard_case("a member claiming 4 GiB", lambda b: [_file("big.flac", b"", size=4 << 30)]),
    _shard_case(
        "a record that is not JSON", lambda b: [_sample("bad")[0], _file("bad.json", b"{not json")]
    ),  # fmt: skip
    _shard_case(
        "an index listing ../elsewhere/shard.tar",
        lambda b: [],
        lambda b: _index_to(["../elsewhere/" + _outside_tar(b).name]),
    ),  # fmt: skip
    _shard_case(
        "an index listing an absolute path",
        lambda b: [],
        lambda b: _index_to([str(_outside_tar(b))]),
    ),  # fmt: skip
    _shard_case("an index that is not JSON", lambda b: [], lambda b: b"\x00{shards"),
    _shard_case(
        "a symlink member to /etc/passwd",
        lambda b: [_file("s.flac", b"", tarfile.SYMTYPE, linkname="/etc/passwd")],
        via="worker",
    ),  # fmt: skip
    _shard_case("a member named ../ESCAPED.flac", lambda b: _sample("../ESCAPED"), via="train"),
]


# ---------------------------------------------------------------------- manifests


def _record(audio, uid: str = "x", **fields) -> dict:
    return {"id": uid, "audio": audio, "duration": 0.5, "text": "a", **fields}


def _validated(box: Sandbox, records: list) -> tuple[Attempt, dict | None]:
    """`speechswarm validate` on a manifest of `records`; (attempt, its JSON report)."""
    manifest = write_manifest_lines(box.inputs / "manifests" / "m.jsonl", records)
    report = box.target / "report.json"
    attempt = cli("validate", str(manifest), "--json", "--report", str(report))
    return attempt, json.loads(report.read_text()) if report.is_file() else None


def _utterance_refused(records_of) -> callable:
    """The utterance "x" must be reported as a problem (skipped), named in one line."""

    def run(box: Sandbox) -> Attempt:
        attempt, report = _validated(box, records_of(box))
        if report is None:  # the manifest itself was refused
            return attempt
        problems = [p for p in report["problems"] if p["id"] == "x"]
        lines = [f"{p['reason']} {p['id']}: {p['detail']}" for p in problems]
        return Attempt(bool(problems), "\n".join(lines[:1]), attempt.traceback)

    return run


def _read_as_given(records_of, outside: int) -> callable:
    """The utterance is used, and validate counts `outside` paths outside the folder."""

    def run(box: Sandbox) -> Attempt:
        attempt, report = _validated(box, records_of(box))
        documented = (
            report is not None
            and report["num_ok"] == 1
            and report["notes"].get("outside_folder") == outside
        )
        return Attempt(report is None, attempt.message, attempt.traceback, documented)

    return run


def _hostile_names(box: Sandbox, text: str = "a") -> list[dict]:
    """Ids and an audio file name with shell syntax and climbing paths."""
    audio = tone(box.inputs / "a;touch PAYLOAD_RAN;b $(touch PAYLOAD_RAN).wav")
    return [
        _record(str(audio), uid="../../ESCAPED"),
        _record(str(audio), uid="$(touch PAYLOAD_RAN)", text=text),
    ]


def _sharded(box: Sandbox) -> Attempt:
    manifest = write_manifest_lines(box.inputs / "m.jsonl", _hostile_names(box))
    attempt = cli("shard", str(manifest), "--out", str(box.target / "shards"))
    with tarfile.open(box.target / "shards" / "shard-000000.tar") as tar:
        names = tar.getnames()
    documented = not attempt.refused and all("/" not in n and ".." not in n for n in names)
    return Attempt(attempt.refused, attempt.message, attempt.traceback, documented)


def _evaluated(text: str = "a"):
    """`speechswarm eval` on hostile ids and names: scored, rows written only to --utterances
    (with `text` a transcript outside the alphabet: refused in one line)."""

    def run(box: Sandbox) -> Attempt:
        manifest = write_manifest_lines(box.inputs / "m.jsonl", _hostile_names(box, text))
        rows = box.target / "utterances.jsonl"
        attempt = cli("eval", "--checkpoint", str(good_checkpoint(box)), "--manifest",
                      str(manifest), "--utterances", str(rows), "--device", "cpu")  # fmt: skip
        documented = attempt.refused or len(rows.read_text().splitlines()) == 2
        return Attempt(attempt.refused, attempt.message, attempt.traceback, documented)

    return run


def _fifo(box: Sandbox) -> list[dict]:
    box.inputs.mkdir(parents=True, exist_ok=True)
    os.mkfifo(box.inputs / "fifo.wav")  # opening it would wait for a writer forever
    return [_record(str(box.inputs / "fifo.wav"))]


def _manifest_case(name: str, run, via: str = "speechswarm validate", expect="refuse") -> Case:
    return Case("manifest", name, via, run, expect)


MANIFEST_CASES = [
    _manifest_case("an absolute path outside the folder", _read_as_given(
        lambda b: [_record(str(tone(b.inputs / "audio" / "a.wav")))], outside=1), expect="read"),
    _manifest_case("a relative path climbing out (../audio)", _read_as_given(
        lambda b: [_record(_relative(tone(b.inputs / "audio" / "a.wav")))], outside=1),
        expect="read"),
    _manifest_case("audio /dev/zero", _utterance_refused(lambda b: [_record("/dev/zero")])),
    _manifest_case("audio that is a FIFO", _utterance_refused(_fifo)),
    _manifest_case("audio null", _utterance_refused(lambda b: [_record(None)])),
    _manifest_case("audio '' (the manifest's folder)", _utterance_refused(lambda b: [_record("")])),
    _manifest_case("a line that is a JSON string", _utterance_refused(lambda b: ['"id audio"'])),
    _manifest_case("a line that is a JSON list", _utterance_refused(lambda b: ['["x", 1]'])),
    _manifest_case("a duration that is not a number",
                   _utterance_refused(lambda b: [_record("a.wav", duration="abc")])),
    _manifest_case("ids ../../x and shell syntax in names", _sharded, "speechswarm shard",
                   expect="read"),
    _manifest_case("ids ../../x and shell syntax in names", _evaluated(),
                   "speechswarm eval --utterances", expect="read"),
    _manifest_case("a transcript with shell syntax", _evaluated("a `touch PAYLOAD_RAN`"),
                   "speechswarm eval (DataLoader worker)"),
]  # fmt: skip


def _relative(audio: Path) -> str:
    """`audio` as the manifest in inputs/manifests/ spells it: ../audio/a.wav."""
    return os.path.relpath(audio, audio.parents[1] / "manifests")


# ---------------------------------------------------------------------- ARPA files


def _arpa_variants() -> dict[str, bytes]:
    good = GOOD_ARPA
    return {
        "a header count above the entries": good.replace("ngram 1=5", "ngram 1=9"),
        "a header count below the entries": good.replace("ngram 1=5", "ngram 1=2"),
        "a header count that is not a number": good.replace("ngram 1=5", "ngram 1=five"),
        "orders that skip (ngram 3= after 1=)": good.replace("ngram 2=2", "ngram 3=2"),
        "no ngram counts": good.replace("ngram 1=5\nngram 2=2\n", ""),
        "a probability that is not a number": good.replace("-0.7\ta\t", "abc\ta\t"),
        "a probability nan": good.replace("-0.7\ta\t", "nan\ta\t"),
        "a positive log probability": good.replace("-0.7\ta\t", "0.7\ta\t"),
        "a backoff that is not a number": good.replace("\ta\t-0.2", "\ta\txyz"),
        "a missing \\2-grams: section": good.split("\\2-grams:")[0] + "\\end\\\n",
        "a misspelt section header": good.replace("\\2-grams:", "\\two-grams:"),
        "no \\data\\ line": good.replace("\\data\\\n", ""),
        "no \\end\\ line": good.replace("\\end\\\n", ""),
        "truncated mid-line": good[: len(good) * 2 // 3],
        "a 2-gram of 4 words": good.replace("-0.3\ta b", "-0.3\ta b a b"),
        "a 2-gram word that is no unigram": good.replace("-0.3\ta b", "-0.3\ta zz"),
        "a NUL byte in a word": good.replace("\ta\t", "\ta\x00\t"),
        "an empty file": "",
        "binary garbage": bytes(range(256)) * 8,
        "Latin-1, not UTF-8": good.replace("\ta\t", "\tcaf\u00e9\t").encode("latin-1"),
    }


def _arpa_case(name: str, via: str = "transcribe") -> Case:
    def run(box: Sandbox) -> Attempt:
        lm = str(write_arpa_text(box.inputs / "lm.arpa", _arpa_variants()[name]))
        wav = str(tone(box.inputs / "a.wav"))
        ckpt = str(good_checkpoint(box))
        if via == "eval":
            manifest = write_manifest_lines(box.inputs / "m.jsonl", [_record(wav)])
            return cli("eval", "--checkpoint", ckpt, "--manifest", str(manifest), "--lm", lm)
        if via == "read_arpa":
            from speechswarm.decode.lm import read_arpa

            return call(lambda: read_arpa(lm))
        argv = ("transcribe", "--checkpoint", ckpt, "--lm", lm, wav)
        return cli_process(*argv) if via == "process" else cli(*argv)

    where = {"transcribe": "speechswarm transcribe --lm", "eval": "speechswarm eval --lm",
             "process": "speechswarm transcribe --lm (new process)",
             "read_arpa": "decode.lm.read_arpa"}[via]  # fmt: skip
    return Case("arpa", name, where, run)


ARPA_CASES = [
    *(_arpa_case(name) for name in _arpa_variants()),
    _arpa_case("a probability that is not a number", via="eval"),
    _arpa_case("truncated mid-line", via="read_arpa"),
    _arpa_case("a header count below the entries", via="process"),
]
