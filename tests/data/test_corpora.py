"""Corpus importers on tiny trees laid out like the real corpora."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechswarm.data.corpora import (
    IMPORTERS,
    ImportResult,
    prepare,
    prepare_commonvoice,
    prepare_csv_manifest,
    prepare_librispeech,
    prepare_ljspeech,
    prepare_nemo,
    prepare_userlibri,
    userlibri_lm_metadata,
    userlibri_lm_texts,
)

SR = 16000


def write_audio(path: Path, frames: int, fmt: str | None = None, sr: int = SR) -> Path:
    """A short sine of `frames` samples; format from the suffix unless given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = 0.1 * np.sin(2 * np.pi * 440 * np.arange(frames) / sr).astype(np.float32)
    sf.write(str(path), wave, sr, format=fmt)
    return path


def tree_listing(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in sorted(root.rglob("*"))}


def reasons(result: ImportResult) -> dict[str, str]:
    """{file name (or file:line tail): reason code}."""
    return {Path(where).name: reason.split(":")[0] for where, reason in result.problems}


# ------------------------------------------------------------------------------ librispeech


@pytest.fixture
def libri(tmp_path) -> Path:
    chapter = tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123"
    write_audio(chapter / "84-121123-0000.flac", 1600)  # 0.1 s
    write_audio(chapter / "84-121123-0001.flac", 2400)  # 0.15 s
    write_audio(chapter / "84-121123-0002.wav", 800)  # .wav accepted
    write_audio(chapter / "84-121123-0004.flac", 800)  # no transcript line
    (chapter / "84-121123-0005.flac").write_bytes(b"not audio at all")
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n"
        "84-121123-0001 BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED\n"
        "84-121123-0002 ROOM 101\n"
        "84-121123-0003 THIS AUDIO IS MISSING\n"
        "84-121123-0005 THIS AUDIO IS BROKEN\n"
    )
    other = tmp_path / "LibriSpeech" / "test-other" / "1688" / "142285"
    write_audio(other / "1688-142285-0000.flac", 3200)
    (other / "1688-142285.trans.txt").write_text("1688-142285-0000 THERE'S IRON THEY SAY\n")
    return tmp_path / "LibriSpeech"


def test_librispeech_root(libri):
    before = tree_listing(libri)
    result = prepare_librispeech(libri)
    assert tree_listing(libri) == before  # reads only
    by_id = {u.id: u for u in result.utts}
    assert sorted(by_id) == [
        "1688-142285-0000",
        "84-121123-0000",
        "84-121123-0001",
        "84-121123-0002",
    ]
    u = by_id["84-121123-0001"]
    assert u.duration == pytest.approx(2400 / SR, abs=1e-9)
    assert u.text == "but in less than five minutes the staircase groaned"
    assert u.speaker == "84"
    assert u.extra == {
        "split": "dev-clean",
        "chapter": "121123",
        "raw_text": "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED",
    }
    assert Path(u.audio).is_absolute() and Path(u.audio).name == "84-121123-0001.flac"
    assert by_id["84-121123-0002"].audio.endswith(".wav")
    assert by_id["84-121123-0002"].text == "room one hundred one"
    assert by_id["1688-142285-0000"].extra["split"] == "test-other"
    assert by_id["1688-142285-0000"].text == "there's iron they say"
    assert reasons(result) == {
        "84-121123-0003.flac": "missing_file",
        "84-121123-0004.flac": "missing_transcript",
        "84-121123-0005.flac": "unreadable_audio",
    }
    assert result.summary() == "4 utts, 0.0 h audio, 3 problems"


def test_librispeech_split_folder_threads_and_rerun_agree(libri):
    split = prepare_librispeech(libri / "dev-clean", workers=2)
    assert [u.id for u in split.utts] == ["84-121123-0000", "84-121123-0001", "84-121123-0002"]
    assert {u.extra["split"] for u in split.utts} == {"dev-clean"}
    again = prepare_librispeech(libri / "dev-clean", workers=1)
    assert again == split  # idempotent, and thread count does not matter


def test_librispeech_keep_digits(libri):
    result = prepare_librispeech(libri / "dev-clean", digits="keep")
    assert {u.id: u.text for u in result.utts}["84-121123-0002"] == "room 101"


def test_librispeech_missing_folder_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="LibriSpeech root or split folder"):
        prepare_librispeech(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no \*\.trans\.txt"):
        prepare_librispeech(tmp_path)


# ------------------------------------------------------------------------------ ljspeech


def test_ljspeech(tmp_path):
    lj = tmp_path / "LJSpeech-1.1"
    write_audio(lj / "wavs" / "LJ001-0001.wav", 4000, sr=22050)
    write_audio(lj / "wavs" / "LJ001-0002.wav", 2205, sr=22050)
    (lj / "metadata.csv").write_text(
        'LJ001-0001|Printing, in the "only" sense|Printing, in the "only" sense\n'
        "LJ001-0002|in 1884 Mr. Smith|in eighteen eighty-four Mister Smith\n"
        "LJ001-0003|no audio here|no audio here\n",
        encoding="utf-8",
    )
    for src in (lj, tmp_path):  # the LJSpeech-1.1 folder or the folder holding it
        result = prepare_ljspeech(src)
        assert [u.id for u in result.utts] == ["LJ001-0001", "LJ001-0002"]
        first, second = result.utts
        assert first.text == "printing in the only sense"
        assert first.extra["raw_text"] == 'Printing, in the "only" sense'  # quotes literal
        assert first.duration == pytest.approx(4000 / 22050)
        assert second.text == "in eighteen eighty four mister smith"  # normalized column
        assert {u.speaker for u in result.utts} == {"LJ"}
        assert reasons(result) == {"LJ001-0003.wav": "missing_file"}


# ------------------------------------------------------------------------------ userlibri


@pytest.fixture
def userlibri(tmp_path) -> Path:
    root = tmp_path / "UserLibri"
    user = root / "audio_data" / "test-clean" / "speaker-84-book-1234"
    write_audio(user / "84-121123-0000.flac", 1600)
    write_audio(user / "84-121123-0001.flac", 800)
    (user / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 I SAY\n"
    )
    plain = root / "audio_data" / "test-other" / "1688_5678"
    write_audio(plain / "1688-142285-0000.flac", 3200)
    (plain / "1688-142285.trans.txt").write_text("1688-142285-0000 THERE'S IRON\n")
    odd = root / "audio_data" / "test-other" / "someone"
    write_audio(odd / "7-1-0000.flac", 800)
    (odd / "7-1.trans.txt").write_text("7-1-0000 ODD NAME\n")
    lm = root / "lm_data"
    lm.mkdir(parents=True)
    (lm / "1234_lm_train.txt").write_text("a sentence\nanother one\n")
    (lm / "5678_lm_train.txt").write_text("more text\n")
    (lm / "metadata.tsv").write_text(
        "Book ID\tNum Text Examples\tAverage Words Per Example\n1234\t2\t2.0\n5678\t1\t2.5\n"
    )
    return root


def test_userlibri_users_become_clients(userlibri):
    result = prepare_userlibri(userlibri)
    assert result.problems == []
    got = {
        u.id: (u.speaker, u.extra["client"], u.extra["book"], u.extra["split"]) for u in result.utts
    }
    assert got == {
        "84-121123-0000": ("84", "speaker-84-book-1234", "1234", "test-clean"),
        "84-121123-0001": ("84", "speaker-84-book-1234", "1234", "test-clean"),
        "1688-142285-0000": ("1688", "1688_5678", "5678", "test-other"),
        "7-1-0000": ("7", "someone", "", "test-other"),  # unparsable folder name
    }
    assert result.utts[0].text == "go do you hear"


@pytest.mark.parametrize(
    "sub, ids",
    [
        ("audio_data", 4),
        ("audio_data/test-other", 2),
        ("audio_data/test-clean/speaker-84-book-1234", 2),
    ],
)
def test_userlibri_accepts_any_level(userlibri, sub, ids):
    result = prepare_userlibri(userlibri / sub)
    assert len(result.utts) == ids
    assert result.utts == [
        u for u in prepare_userlibri(userlibri).utts if u.id in {v.id for v in result.utts}
    ]


def test_userlibri_subsets_select_split_folders(userlibri):
    # the P2P seed's clients: test-clean's speaker-book folders only
    clean = prepare_userlibri(userlibri, subsets=("test-clean",))
    assert {u.extra["client"] for u in clean.utts} == {"speaker-84-book-1234"}
    assert [u.id for u in clean.utts] == ["84-121123-0000", "84-121123-0001"]
    other = prepare_userlibri(userlibri / "audio_data", subsets=["test-other"])
    assert {u.extra["split"] for u in other.utts} == {"test-other"} and len(other.utts) == 2
    both = prepare_userlibri(userlibri, subsets=("test-clean", "test-other"))
    assert both.utts == prepare_userlibri(userlibri).utts  # the default: every split


def test_userlibri_unknown_subset_names_what_is_there(userlibri):
    with pytest.raises(FileNotFoundError, match=r"subsets \['test_clean'\] not found") as err:
        prepare_userlibri(userlibri, subsets=("test_clean",))
    assert "['test-clean', 'test-other']" in str(err.value)
    with pytest.raises(FileNotFoundError, match="test-clean"):  # src is test-other's folder
        prepare_userlibri(userlibri / "audio_data" / "test-other", subsets=("test-clean",))


def test_userlibri_lm_texts_and_metadata(userlibri):
    texts = userlibri_lm_texts(userlibri)
    assert texts == {
        "1234": userlibri / "lm_data" / "1234_lm_train.txt",
        "5678": userlibri / "lm_data" / "5678_lm_train.txt",
    }
    assert userlibri_lm_metadata(userlibri) == {
        "1234": {"num_text_examples": 2, "avg_words_per_example": 2.0},
        "5678": {"num_text_examples": 1, "avg_words_per_example": 2.5},
    }
    (userlibri / "lm_data" / "5678_lm_train.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"\['5678'\]"):
        userlibri_lm_texts(userlibri)


# ------------------------------------------------------------------------------ commonvoice


def test_commonvoice_reads_columns_by_name(tmp_path):
    cv = tmp_path / "en"
    write_audio(cv / "clips" / "common_voice_en_1.mp3", 16000, fmt="MP3")  # as released
    write_audio(cv / "clips" / "common_voice_en_2.wav", 8000)
    (cv / "train.tsv").write_text(
        # newer column order, with sentence_id and an unknown column
        "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage"
        "\tgender\taccents\tvariant\tlocale\tsegment\n"
        'abc\tcommon_voice_en_1.mp3\ts1\t"Hi," she said.\t\t2\t0\ttwenties\tfemale\t\t\ten\t\n'
        "def\tcommon_voice_en_2.wav\ts2\tIt costs 5 euros\t\t2\t0\t\t\t\t\ten\t\n"
        "ghi\tcommon_voice_en_3.mp3\ts3\tmissing clip\t\t2\t0\t\t\t\t\ten\t\n",
        encoding="utf-8",
    )
    (cv / "dev.tsv").write_text("client_id\tpath\tsentence\n")
    result = prepare_commonvoice(cv, split="train")
    first, second = result.utts
    assert first.id == "common_voice_en_1"
    assert first.text == "hi she said"
    assert first.extra == {
        "split": "train",
        "age": "twenties",
        "gender": "female",
        "locale": "en",
        "raw_text": '"Hi," she said.',
    }
    assert first.duration == pytest.approx(1.0, abs=0.05)  # MP3 via libsndfile
    assert first.speaker == "abc"
    assert second.text == "it costs five euros"
    assert second.duration == pytest.approx(0.5)
    assert reasons(result) == {"common_voice_en_3.mp3": "missing_file"}
    assert prepare_commonvoice(cv, split="dev").utts == []


def test_commonvoice_errors_name_the_fix(tmp_path):
    (tmp_path / "train.tsv").write_text("who\tfile\n")
    with pytest.raises(FileNotFoundError, match=r"a split named in \['train'\]"):
        prepare_commonvoice(tmp_path, split="validated")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['client_id', 'path', 'sentence'\]"):
        prepare_commonvoice(tmp_path, split="train")


# ------------------------------------------------------------------------------ csv, nemo


def test_csv_manifest(tmp_path):
    data = tmp_path / "data"
    write_audio(data / "wav" / "a.wav", 1600)
    write_audio(data / "wav" / "b.wav", 3200)
    (data / "txt").mkdir()
    (data / "txt" / "a.txt").write_text("HELLO THERE\n")
    (data / "txt" / "b.txt").write_text("GENERAL KENOBI")
    absolute_b = data / "wav" / "b.wav"
    (data / "manifest.csv").write_text(
        "wav/a.wav,txt/a.txt\n"
        f"{absolute_b},{data / 'txt' / 'b.txt'}\n"
        "wav/c.wav,txt/c.txt\n"  # transcript missing
        "just-one-field\n"
        "wav/a.wav,txt/a.txt\n"  # listed twice
    )
    result = prepare_csv_manifest(data / "manifest.csv")
    assert [(u.id, u.text, u.duration) for u in result.utts] == [
        ("a", "hello there", 0.1),
        ("b", "general kenobi", 0.2),
    ]
    assert result.utts[0].audio == str(data / "wav" / "a.wav")
    assert reasons(result) == {
        "c.txt": "missing_transcript",
        "manifest.csv:4": "bad_line",
        "a.wav": "duplicate_id",
    }


def test_nemo_manifest(tmp_path):
    write_audio(tmp_path / "audio" / "one.wav", 16000)
    write_audio(tmp_path / "audio" / "long.flac", 48000)
    records = [
        {"audio_filepath": "audio/one.wav", "duration": 99.0, "text": "First one", "lang": "en"},
        {"audio_filepath": str(tmp_path / "audio" / "long.flac"), "duration": 1.0,
         "offset": 1.5, "text": "segment", "speaker": 7},
        {"audio_filepath": "audio/long.flac", "duration": 1.0, "offset": 5.0, "text": "too late"},
        {"audio_filepath": "audio/none.wav", "duration": 1.0, "text": "missing"},
        {"duration": 1.0, "text": "no path"},
    ]  # fmt: skip
    lines = [json.dumps(r) for r in records] + ["{not json"]
    (tmp_path / "manifest.json").write_text("\n".join(lines) + "\n")
    result = prepare_nemo(tmp_path / "manifest.json")
    one, seg = result.utts
    assert (one.id, one.duration, one.offset, one.text) == ("one", 1.0, 0.0, "first one")
    assert one.extra == {"lang": "en", "raw_text": "First one"}  # header length, not 99
    assert (seg.id, seg.duration, seg.offset, seg.speaker) == ("long_00001500", 1.0, 1.5, "7")
    assert reasons(result) == {
        "long.flac": "offset_beyond_end",
        "none.wav": "missing_file",
        "manifest.json:5": "bad_line",
        "manifest.json:6": "bad_line",
    }


# ------------------------------------------------------------------------------ registry


def test_registry_dispatches_by_format_name(libri):
    assert set(IMPORTERS) == {
        *("librispeech", "ljspeech", "userlibri", "commonvoice", "csv", "nemo", "kaldi", "lhotse")
    }
    assert prepare("librispeech", libri) == prepare_librispeech(libri)
    with pytest.raises(ValueError, match="unknown corpus format 'timit'; choose one of"):
        prepare("timit", libri)


def test_spread_subset_keeps_every_part_of_a_sorted_manifest():
    from speechswarm.data.manifest import Utterance, spread_subset

    # 441 utterances sorted by voice, like the built-in dev split: 221, 132, 88
    utts = [
        Utterance(f"{engine}{i}", "a.flac", 1.0, "a", engine)
        for engine, n in (("espeak", 221), ("flite", 132), ("festival", 88))
        for i in range(n)
    ]
    subset = spread_subset(utts, 200)
    assert len(subset) == 200 and len({u.id for u in subset}) == 200
    assert [u.id for u in subset] == sorted((u.id for u in subset), key=[u.id for u in utts].index)
    counts = {e: sum(u.speaker == e for u in subset) for e in ("espeak", "flite", "festival")}
    assert counts == pytest.approx({"espeak": 100, "flite": 60, "festival": 40}, abs=1)
    assert spread_subset(utts, 0) == utts and spread_subset(utts[:5], 200) == utts[:5]
