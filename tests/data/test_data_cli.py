"""The data commands as a user types them: `speechswarm prepare|synth|validate|tokenizer|shard`.

    .venv/bin/python -m pytest tests/data/test_data_cli.py -q

Every test runs the installed `speechswarm` script in a subprocess, in a folder holding a
tiny corpus the test writes with soundfile, with relative paths as a person would type
them, and checks the files written and the lines printed. The synth test needs the Debian
TTS engines (`make setup`) and takes ~10 s on 2 cores; the rest take about a second each.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechswarm.data import synth
from speechswarm.data.audio import load_audio
from speechswarm.data.shards import ShardDataset
from speechswarm.data.tokenizer import CharTokenizer, load_tokenizer

SR = 16000
SPEECHSWARM = Path(sys.executable).parent / "speechswarm"  # the [project.scripts] entry point


def speechswarm(cwd: Path, *args) -> subprocess.CompletedProcess:
    """Run `speechswarm ARGS...` in `cwd` as a user would; output captured as text."""
    assert SPEECHSWARM.is_file(), f"{SPEECHSWARM} missing; install the package (pip install -e .)"
    return subprocess.run(
        [str(SPEECHSWARM), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def tone(frames: int, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    """(frames,) float32 sine at 0.1 amplitude (tests compare durations, ids and texts)."""
    return (0.1 * np.sin(2 * np.pi * freq * np.arange(frames) / sr)).astype(np.float32)


def write_audio(path: Path, frames: int, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(frames, sr), sr, subtype="PCM_16")  # format from the suffix
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def librispeech_tree(root: Path) -> Path:
    """dev-clean with 2 speakers, 3 good FLACs (0.5, 1.0, 1.5 s), one WAV (0.25 s) and one
    file that is not audio. Returns the split folder."""
    split = root / "LibriSpeech" / "dev-clean"
    ch = split / "84" / "121123"
    write_audio(ch / "84-121123-0000.flac", 8000)
    write_audio(ch / "84-121123-0001.flac", 16000)
    (ch / "84-121123-0002.flac").write_bytes(b"this is not a flac file")
    (ch / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n"
        "84-121123-0001 ROOM 101\n"
        "84-121123-0002 THIS AUDIO IS BROKEN\n"
    )
    ch = split / "1688" / "142285"
    write_audio(ch / "1688-142285-0000.flac", 24000)
    write_audio(ch / "1688-142285-0001.wav", 4000)
    (ch / "1688-142285.trans.txt").write_text(
        "1688-142285-0000 THERE'S IRON THEY SAY\n1688-142285-0001 YES\n"
    )
    return split


# ----------------------------------------------------------------------------- prepare


def test_prepare_librispeech_writes_manifest_summary_and_problems(tmp_path):
    librispeech_tree(tmp_path)
    proc = ok(speechswarm(tmp_path, "prepare", "librispeech", "LibriSpeech", "--out", "m.jsonl"))

    # 0.5 + 1.0 + 1.5 + 0.25 s = 3.25 s = 0.0009 h; 4 utts; speakers 84 and 1688
    assert proc.stdout.splitlines() == [
        "prepare librispeech: 0.00 h audio, 4 utts, 2 speakers, 1 skipped"
        " — see m.problems.json -> m.jsonl",
        "text: 3 characters outside the alphabet folded, spelled or removed"
        " ('1'->'(number words)' x2, '0'->'(number words)' x1) — see m.text.json",
    ]
    got = records(tmp_path / "m.jsonl")
    assert [(r["id"], r["text"], r["duration"], r["speaker"]) for r in got] == [
        ("1688-142285-0000", "there's iron they say", 1.5, "1688"),
        ("1688-142285-0001", "yes", 0.25, "1688"),
        ("84-121123-0000", "go do you hear", 0.5, "84"),
        ("84-121123-0001", "room one hundred one", 1.0, "84"),
    ]
    # audio paths are relative to the manifest's folder; extras sit flat beside the core keys
    assert got[2]["audio"] == "LibriSpeech/dev-clean/84/121123/84-121123-0000.flac"
    assert got[1]["audio"].endswith("1688-142285-0001.wav")
    assert (got[2]["split"], got[2]["chapter"], got[2]["raw_text"]) == (
        "dev-clean",
        "121123",
        "GO DO YOU HEAR",
    )

    report = json.loads((tmp_path / "m.problems.json").read_text())
    [problem] = report["problems"]
    assert problem["path"].endswith("84/121123/84-121123-0002.flac")
    assert problem["reason"].startswith("unreadable_audio: ")
    assert report["counts"] == {"unreadable_audio": 1}  # counted by reason code

    # Re-running after the broken file is fixed: same manifest, and no stale problem report.
    manifest_before = (tmp_path / "m.jsonl").read_text()
    (tmp_path / "LibriSpeech/dev-clean/84/121123/84-121123-0002.flac").unlink()
    trans = tmp_path / "LibriSpeech/dev-clean/84/121123/84-121123.trans.txt"
    trans.write_text("\n".join(trans.read_text().splitlines()[:2]) + "\n")
    proc = ok(speechswarm(tmp_path, "prepare", "librispeech", "LibriSpeech", "--out", "m.jsonl"))
    assert proc.stdout.splitlines()[0].endswith("0.00 h audio, 4 utts, 2 speakers -> m.jsonl")
    assert (tmp_path / "m.jsonl").read_text() == manifest_before
    assert not (tmp_path / "m.problems.json").exists()


def test_prepare_librispeech_digits_keep(tmp_path):
    librispeech_tree(tmp_path)
    args = ("prepare", "librispeech", "LibriSpeech/dev-clean/84", "--out", "k.jsonl")
    ok(speechswarm(tmp_path, *args, "--digits", "keep"))
    texts = {r["id"]: r["text"] for r in records(tmp_path / "k.jsonl")}
    assert texts == {"84-121123-0000": "go do you hear", "84-121123-0001": "room 101"}


def test_prepare_ljspeech(tmp_path):
    lj = tmp_path / "LJSpeech-1.1"
    write_audio(lj / "wavs" / "LJ001-0001.wav", 22050, sr=22050)
    write_audio(lj / "wavs" / "LJ001-0002.wav", 11025, sr=22050)
    (lj / "metadata.csv").write_text(
        'LJ001-0001|Printing, in the "only" sense|Printing, in the "only" sense\n'
        "LJ001-0002|in 1884 Mr. Smith|in eighteen eighty-four Mister Smith\n"
    )
    proc = ok(speechswarm(tmp_path, "prepare", "ljspeech", ".", "--out", "lj.jsonl"))
    assert "2 utts, 1 speakers" in proc.stdout
    got = records(tmp_path / "lj.jsonl")
    assert [(r["id"], r["text"], r["duration"], r["speaker"]) for r in got] == [
        ("LJ001-0001", "printing in the only sense", 1.0, "LJ"),
        ("LJ001-0002", "in eighteen eighty four mister smith", 0.5, "LJ"),
    ]


def test_prepare_commonvoice_dev_split(tmp_path):
    cv = tmp_path / "cv" / "en"
    for name, frames in (("cv_1.wav", 16000), ("cv_2.wav", 8000), ("cv_3.wav", 4000)):
        write_audio(cv / "clips" / name, frames)
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\n"
    (cv / "train.tsv").write_text(header + "aaa\tcv_1.wav\tTrain only.\t2\t0\t\t\t\ten\n")
    (cv / "dev.tsv").write_text(
        header
        + "bbb\tcv_2.wav\tIt's 5 o'clock!\t2\t0\tthirties\tmale\t\ten\n"
        + 'ccc\tcv_3.wav\t"Quoted," she said.\t3\t1\t\t\t\ten\n'
    )
    ok(
        speechswarm(
            tmp_path, "prepare", "commonvoice", "cv/en", "--split", "dev", "--out", "d.jsonl"
        )
    )
    got = records(tmp_path / "d.jsonl")
    assert [(r["id"], r["text"], r["speaker"], r["duration"]) for r in got] == [
        ("cv_2", "it's five o'clock", "bbb", 0.5),
        ("cv_3", "quoted she said", "ccc", 0.25),
    ]
    assert (got[0]["split"], got[0]["age"], got[0]["gender"]) == ("dev", "thirties", "male")
    assert "age" not in got[1]  # empty optional columns are not copied


def test_prepare_csv(tmp_path):
    data = tmp_path / "data"
    write_audio(data / "wav" / "a.wav", 1600)
    write_audio(data / "wav" / "b.wav", 3200)
    (data / "txt").mkdir()
    (data / "txt" / "a.txt").write_text("HELLO THERE\n")
    (data / "txt" / "b.txt").write_text("General Kenobi")
    (data / "train.csv").write_text("wav/a.wav,txt/a.txt\nwav/b.wav,txt/b.txt\n")
    ok(speechswarm(tmp_path, "prepare", "csv", "data/train.csv", "--out", "c.jsonl"))
    got = records(tmp_path / "c.jsonl")
    assert [(r["id"], r["text"], r["duration"], r["audio"]) for r in got] == [
        ("a", "hello there", 0.1, "data/wav/a.wav"),
        ("b", "general kenobi", 0.2, "data/wav/b.wav"),
    ]


def test_prepare_nemo_with_segments(tmp_path):
    write_audio(tmp_path / "an4" / "one.wav", 16000)
    write_audio(tmp_path / "an4" / "long.wav", 48000)
    lines = [
        {"audio_filepath": "one.wav", "duration": 1.0, "text": "First one", "lang": "en"},
        {"audio_filepath": "long.wav", "duration": 1.0, "offset": 1.5, "text": "a segment"},
    ]
    (tmp_path / "an4" / "train_manifest.json").write_text(
        "".join(json.dumps(r) + "\n" for r in lines)
    )
    ok(speechswarm(tmp_path, "prepare", "nemo", "an4/train_manifest.json", "--out", "n.jsonl"))
    got = records(tmp_path / "n.jsonl")
    assert [(r["id"], r["text"], r["duration"], r["offset"]) for r in got] == [
        ("one", "first one", 1.0, 0.0),
        ("long_00001500", "a segment", 1.0, 1.5),
    ]
    assert got[0]["lang"] == "en"


def test_prepare_userlibri_users_are_clients(tmp_path):
    audio = tmp_path / "UserLibri" / "audio_data"
    user = audio / "test-clean" / "speaker-84-book-1234"
    write_audio(user / "84-121123-0000.flac", 1600)
    (user / "84-121123.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n")
    other = audio / "test-other" / "speaker-1688-book-5678"
    write_audio(other / "1688-142285-0000.flac", 3200)
    (other / "1688-142285.trans.txt").write_text("1688-142285-0000 THERE'S IRON\n")
    proc = ok(speechswarm(tmp_path, "prepare", "userlibri", "UserLibri", "--out", "u.jsonl"))
    assert "2 utts, 2 speakers" in proc.stdout
    got = records(tmp_path / "u.jsonl")
    assert [
        (r["id"], r["text"], r["speaker"], r["client"], r["book"], r["split"]) for r in got
    ] == [
        ("84-121123-0000", "go do you hear", "84", "speaker-84-book-1234", "1234", "test-clean"),
        (
            "1688-142285-0000",
            "there's iron",
            "1688",
            "speaker-1688-book-5678",
            "5678",
            "test-other",
        ),
    ]
    # --subsets test-clean: the P2P seed's clients only
    proc = ok(speechswarm(tmp_path, "prepare", "userlibri", "UserLibri", "--subsets",
                          "test-clean", "--out", "clean.jsonl"))  # fmt: skip
    assert [r["split"] for r in records(tmp_path / "clean.jsonl")] == ["test-clean"]
    bad = speechswarm(tmp_path, "prepare", "nemo", "x.json", "--subsets", "test-clean",
                      "--out", "n2.jsonl")  # fmt: skip
    assert bad.returncode == 1 and "--subsets applies to userlibri only" in bad.stderr


HOOK = """\
import numpy as np

SR = 16000


def wave(n, freq):
    return (0.25 * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


def load_clients_data():
    return {
        "train": [([wave(16000, 300), wave(8000, 400)], ["Hello there", "call 911"]),
                  (["from_disk.wav"], ["read from a file"])],
        "val": [([wave(4000, 500)], ["validation"]), ([], [])],
        "test": [([], []), ([np.zeros(800, dtype=np.int16)], ["silence"])],
        "dataset_name": ["speaker a", "speaker/b"],
    }
"""


def test_prepare_clients_hook_writes_one_manifest_per_split(tmp_path):
    (tmp_path / "hook.py").write_text(HOOK)
    write_audio(tmp_path / "from_disk.wav", 12000)  # relative path: from the current folder
    proc = ok(
        speechswarm(tmp_path, "prepare", "clients", "hook.py:load_clients_data", "--out", "cl")
    )
    assert proc.stdout.splitlines() == [
        "clients train (2 clients): 0.00 h audio, 3 utts, 2 speakers -> cl/train.jsonl",
        "clients val (1 clients): 0.00 h audio, 1 utts, 1 speakers -> cl/val.jsonl",
        "clients test (1 clients): 0.00 h audio, 1 utts, 1 speakers -> cl/test.jsonl",
    ]
    train = records(tmp_path / "cl" / "train.jsonl")
    fields = [
        (r["id"], r["text"], r["duration"], r["client"], r["dataset"], r["speaker"]) for r in train
    ]
    assert fields == [
        ("speaker_a-train-c0000-000000", "hello there", 1.0, 0, "speaker_a", "client0"),
        ("speaker_a-train-c0000-000001", "call nine hundred eleven", 0.5, 0, "speaker_a", "client0"),
        ("speaker_b-train-c0001-000000", "read from a file", 0.75, 1, "speaker_b", "client1"),
    ]  # fmt: skip
    assert {r["split"] for r in train} == {"train"}
    assert train[0]["audio"] == "train/client0000/000000.flac"  # arrays become 16-bit FLAC
    assert train[2]["audio"] == str(tmp_path / "from_disk.wav")  # files are referenced
    flac, rate = sf.read(tmp_path / "cl" / train[0]["audio"], dtype="float32")
    expected = 0.25 * np.sin(2 * np.pi * 300 * np.arange(16000) / SR)
    assert rate == SR and np.abs(flac - expected).max() <= 0.5 / 32768 + 1e-6

    [val] = records(tmp_path / "cl" / "val.jsonl")
    assert (val["id"], val["client"], val["duration"]) == ("speaker_a-val-c0000-000000", 0, 0.25)
    [test] = records(tmp_path / "cl" / "test.jsonl")
    assert (test["id"], test["client"], test["text"], test["duration"]) == (
        "speaker_b-test-c0001-000000",
        1,
        "silence",
        0.05,
    )


def test_prepare_clients_passes_digits_keep(tmp_path):
    (tmp_path / "hook.py").write_text(HOOK)
    write_audio(tmp_path / "from_disk.wav", 12000)
    args = ("prepare", "clients", "hook.py:load_clients_data", "--out", "cl", "--digits", "keep")
    ok(speechswarm(tmp_path, *args))
    assert records(tmp_path / "cl" / "train.jsonl")[1]["text"] == "call 911"


# ----------------------------------------------------------------------------- synth


def test_synth_writes_librispeech_layout_and_rerun_is_cached(tmp_path):
    try:
        synth.check_tools()
    except synth.SynthError as e:  # fail, never skip: the synthetic corpus is the default data
        pytest.fail(f"{e}\nThe synthetic corpus needs the Debian TTS engines: run `make setup`.")
    # 120 short sentences (4-6 words): dev and test need >= 40 each, train the rest.
    subjects = ["the cat", "a dog", "my friend", "the teacher", "our neighbour", "the baby"]
    verbs = ["sees", "likes", "finds", "paints", "carries"]
    objects = ["the box", "a red cup", "the door", "some bread"]
    sentences = [" ".join(t) for t in itertools.product(subjects, verbs, objects)]
    (tmp_path / "short.txt").write_text("\n".join(sentences) + "\n")
    cmd = ("synth", "--out", "syn", "--hours", "0.01", "--text", "short.txt", "--workers", "2")

    start = time.perf_counter()
    first = ok(speechswarm(tmp_path, *cmd))
    first_s = time.perf_counter() - start
    out = tmp_path / "syn"
    manifests = {s: records(out / f"{s}.jsonl") for s in synth.SPLITS}
    counts = {s: len(m) for s, m in manifests.items()}
    assert counts["dev"] == counts["test"] == synth.MIN_EVAL_UTTERANCES  # 0.01 h: the minimum
    assert 10 <= counts["train"] <= 40  # 36 s at ~1.5 s per planned utterance = 24
    total = sum(counts.values())
    assert re.search(rf"; {total} new, 0 cached, 0 failed, ", first.stdout), first.stdout
    for split in synth.SPLITS:
        assert f"synth {split}: " in first.stdout and f"-> syn/{split}.jsonl" in first.stdout

    voices = json.loads((out / "voices.json").read_text())
    for split, recs in manifests.items():
        for r in recs:
            spk, chapter, _ = r["id"].split("-")
            # LibriSpeech layout: <split>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac
            assert r["audio"] == f"{split}/{spk}/{chapter}/{r['id']}.flac"
            trans = out / split / spk / chapter / f"{spk}-{chapter}.trans.txt"
            assert f"{r['id']} {r['text'].upper()}" in trans.read_text().splitlines()
            assert r["text"] in sentences
            assert voices[spk]["split"] == split
            assert (r["engine"], r["voice"]) == (voices[spk]["engine"], voices[spk]["voice"])
            assert 0.5 < r["duration"] < 6.0
    train_texts = {r["text"] for r in manifests["train"]}
    assert not train_texts & {r["text"] for r in manifests["dev"] + manifests["test"]}

    before = {s: (out / f"{s}.jsonl").read_text() for s in synth.SPLITS}
    start = time.perf_counter()
    second = ok(speechswarm(tmp_path, *cmd))
    second_s = time.perf_counter() - start
    assert f"; 0 new, {total} cached, 0 failed, " in second.stdout, second.stdout
    assert {s: (out / f"{s}.jsonl").read_text() for s in synth.SPLITS} == before
    assert second_s < 0.4 * first_s, (first_s, second_s)


# ----------------------------------------------------------------------------- validate


def _clean_manifest(root: Path) -> Path:
    librispeech_tree(root)
    (root / "LibriSpeech/dev-clean/84/121123/84-121123-0002.flac").unlink()
    ok(speechswarm(root, "prepare", "librispeech", "LibriSpeech", "--out", "m.jsonl"))
    return root / "m.jsonl"


def test_validate_reports_problems_and_exits_1(tmp_path):
    good = records(_clean_manifest(tmp_path))
    bad = [
        good[0],
        {**good[1], "id": "gone", "audio": "missing.flac"},
        {**good[2], "id": "oov", "text": "héllo 42"},
        {**good[3], "id": "junk", "audio": "LibriSpeech/dev-clean/84/121123/84-121123.trans.txt"},
        {**good[0], "text": "same id again"},
        {**good[1], "id": "short", "text": "a much too long transcript for a quarter second"},
    ]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))

    proc = speechswarm(tmp_path, "validate", "bad.jsonl")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (
        "validate bad.jsonl: 1 utts (1.5 s) ok, 5 skipped: missing_file 1, "
        "text_out_of_alphabet 1, unreadable_audio 1, duplicate_id 1, too_short_for_ctc 1"
        " — report: bad.report.json"
    )
    reasons = {line.split()[1].rstrip(":"): line.split()[0] for line in lines[1:]}
    assert reasons == {
        "gone": "missing_file",
        "oov": "text_out_of_alphabet",
        "junk": "unreadable_audio",
        "1688-142285-0000": "duplicate_id",
        "short": "too_short_for_ctc",
    }
    assert "'2' '4' 'é'" in proc.stdout  # the detail names the characters
    report = json.loads((tmp_path / "bad.report.json").read_text())
    assert (report["num_utts"], report["num_ok"], report["num_skipped"]) == (6, 1, 5)
    assert sum(report["problem_counts"].values()) == 5

    proc = speechswarm(tmp_path, "validate", "bad.jsonl", "--json", "--report", "r/x.json")
    assert proc.returncode == 1
    parsed = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert parsed["problem_counts"] == {
        "missing_file": 1,
        "text_out_of_alphabet": 1,
        "unreadable_audio": 1,
        "duplicate_id": 1,
        "too_short_for_ctc": 1,
    }
    assert (parsed["num_utts"], parsed["num_ok"]) == (6, 1)
    assert json.loads((tmp_path / "r" / "x.json").read_text()) == parsed


def test_validate_clean_manifest_exits_0(tmp_path):
    _clean_manifest(tmp_path)
    proc = ok(speechswarm(tmp_path, "validate", "m.jsonl", "--json"))
    parsed = json.loads(proc.stdout)
    assert (parsed["num_utts"], parsed["num_ok"], parsed["num_skipped"]) == (4, 4, 0)
    assert parsed["problems"] == [] and parsed["hours_ok"] == round(3.25 / 3600, 4)
    assert (tmp_path / "m.report.json").is_file()


def test_validate_counts_the_output_frames_of_an_upsampling_model(tmp_path):
    """Time stride 4 leaves too few frames for a long transcript; two output frames per
    recurrent frame (`model.output_upsample=2`) give them back."""
    good = records(_clean_manifest(tmp_path))[0]
    at50, at25 = math.ceil(good["duration"] * 50), math.ceil(good["duration"] * 25)
    text = ("ab" * at50)[: (at25 + at50) // 2]  # no repeated letters: one frame each
    (tmp_path / "t.jsonl").write_text(json.dumps({**good, "text": text}) + "\n")
    stride4 = "model:\n  conv_strides: [[2, 2], [2, 2]]\n"
    (tmp_path / "s4.yaml").write_text(stride4)
    (tmp_path / "up.yaml").write_text(stride4 + "  output_upsample: 2\n")
    proc = speechswarm(tmp_path, "validate", "t.jsonl", "--config", "s4.yaml", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["problem_counts"] == {"too_short_for_ctc": 1}
    proc = ok(speechswarm(tmp_path, "validate", "t.jsonl", "--config", "up.yaml", "--json"))
    assert json.loads(proc.stdout)["num_ok"] == 1


# ----------------------------------------------------------------------------- tokenizer, shard


TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "how much wood would a woodchuck chuck",
    "peter piper picked a peck of pickled peppers",
    "a stitch in time saves nine",
    "red lorry yellow lorry",
    "it's a long way to tipperary",
]


def _seven_utterance_manifest(root: Path) -> tuple[Path, list[str]]:
    """m7.jsonl: 7 utterances of 0.25-1.75 s with TEXTS as transcripts; returns (path, ids)."""
    ids = [f"spk-1-{i:04d}" for i in range(len(TEXTS))]
    recs = []
    for i, (uid, text) in enumerate(zip(ids, TEXTS, strict=True)):
        write_audio(root / "audio" / f"{uid}.flac", 4000 * (i + 1))
        recs.append({"id": uid, "audio": f"audio/{uid}.flac", "duration": 0.25 * (i + 1),
                     "text": text, "speaker": "spk"})  # fmt: skip
    path = root / "m7.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path, ids


def test_tokenizer_train_round_trips_the_manifest(tmp_path):
    _seven_utterance_manifest(tmp_path)
    args = (
        "tokenizer",
        "train",
        "--manifest",
        "m7.jsonl",
        "--vocab-size",
        "40",
        "--out",
        "tok.json",
    )
    proc = ok(speechswarm(tmp_path, *args))
    assert proc.stdout.splitlines()[0] == (
        "tokenizer: 40 tokens (incl. blank) from 7 transcripts -> tok.json"
    )
    tok = load_tokenizer(tmp_path / "tok.json")
    assert len(tok) == 40 and tok.tokens[0] == "<blank>"
    for text in TEXTS:
        ids = tok.encode(text)
        assert 0 not in ids and tok.unk not in ids
        assert tok.decode(ids) == text


def test_shard_then_read_back_with_shard_dataset(tmp_path):
    _, ids = _seven_utterance_manifest(tmp_path)
    proc = ok(speechswarm(tmp_path, "shard", "m7.jsonl", "--out", "sh", "--shard-size", "3"))
    assert proc.stdout.strip() == "shards: 3 files, 7 utts -> sh"
    assert sorted(p.name for p in (tmp_path / "sh").iterdir()) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
        "shards.json",
    ]
    index = json.loads((tmp_path / "sh" / "shards.json").read_text())
    assert [s["num_utts"] for s in index["shards"]] == [3, 3, 1]
    assert index["total_duration"] == pytest.approx(0.25 * sum(range(1, 8)))

    tok = CharTokenizer()
    samples = list(ShardDataset(tmp_path / "sh", tok, SR, shuffle_shards=False))
    assert [s.id for s in samples] == ids
    for s, text in zip(samples, TEXTS, strict=True):
        assert tok.decode(s.tokens.tolist()) == text
        wave = load_audio(tmp_path / "audio" / f"{s.id}.flac", SR)
        np.testing.assert_array_equal(s.wave.numpy(), wave)  # FLAC copied byte for byte


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "args, says",
    [
        (("prepare", "librispeech", "nope", "--out", "o.jsonl"), "nope is not a folder"),
        (("prepare", "nemo", "nope.json", "--out", "o.jsonl"), "nope.json is not a file"),
        (("prepare", "commonvoice", ".", "--split", "dev", "--out", "o.jsonl"), "dev.tsv"),
        (("prepare", "clients", "nope.py:load", "--out", "o"), "nope.py does not exist"),
        (("prepare", "clients", "no_such_module_x:load", "--out", "o"), "cannot import module"),
        (("validate", "nope.jsonl"), "manifest nope.jsonl does not exist"),
        (("tokenizer", "train", "--manifest", "nope.jsonl", "--vocab-size", "40", "--out", "o"),
         "manifest nope.jsonl does not exist"),
        (("shard", "nope.jsonl", "--out", "o"), "manifest nope.jsonl does not exist"),
        (("synth", "--out", "o", "--text", "nope.txt"), "sentence file nope.txt does not exist"),
    ],
)  # fmt: skip
def test_missing_input_is_one_line_error_without_traceback(tmp_path, args, says):
    proc = speechswarm(tmp_path, *args)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"speechswarm {args[0]}: error: ") and says in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
