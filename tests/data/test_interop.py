"""Kaldi and lhotse importers, NeMo and lhotse exports (round trips), alphabet="auto"."""

import gzip
import json
from pathlib import Path

import pytest
from tests.data.test_corpora import write_audio

from speechswarm.data.corpora import (
    export_lhotse,
    export_nemo,
    prepare_kaldi,
    prepare_lhotse,
    prepare_nemo,
)
from speechswarm.data.manifest import Utterance
from speechswarm.data.text import AUTO_ALPHABET, alphabet_of, normalize_text


def kaldi_dir(tmp_path: Path, segments: bool) -> Path:
    d = tmp_path / "data" / "train"
    d.mkdir(parents=True)
    a = write_audio(tmp_path / "wav" / "rec-a.wav", 48000)
    b = write_audio(tmp_path / "wav" / "rec-b.flac", 16000)
    (d / "wav.scp").write_text(f"rec-a {a}\nrec-b {b}\nrec-c sox c.sph -t wav - |\n")
    if segments:
        (d / "segments").write_text(
            "a-1 rec-a 0.0 1.25\na-2 rec-a 1.5 -1\nc-1 rec-c 0 1\nb-1 rec-b 0.5 0.2\n"
        )
        (d / "text").write_text("a-1 HELLO THERE\na-2 SECOND PART\nc-1 PIPED\nb-1 BACKWARDS\n")
        (d / "utt2spk").write_text("a-1 spk1\na-2 spk1\nc-1 spk2\nb-1 spk3\n")
    else:
        (d / "text").write_text("rec-a HELLO THERE\nrec-c PIPED\nnope NO AUDIO\n")
        (d / "utt2spk").write_text("rec-a spk1\nrec-c spk2\n")
    return d


def test_kaldi_without_segments(tmp_path):
    result = prepare_kaldi(kaldi_dir(tmp_path, segments=False))
    [utt] = result.utts
    assert (utt.id, utt.text, utt.speaker, utt.duration, utt.offset) == (
        "rec-a", "hello there", "spk1", 3.0, 0.0,
    )  # fmt: skip
    got = {where.split()[-1]: reason.split(":")[0] for where, reason in result.problems}
    # the pipe is a counted skip, a text line without audio and audio without text too
    assert got == {
        "rec-c": "unsupported_audio",
        "nope": "missing_file",
        "rec-b": "missing_transcript",
    }
    assert "is a pipe" in dict(result.problems)[f"{tmp_path}/data/train/text: rec-c"]


def test_kaldi_segments_give_offset_and_duration(tmp_path):
    result = prepare_kaldi(kaldi_dir(tmp_path, segments=True))
    got = [(u.id, u.offset, u.duration, u.speaker, u.text) for u in result.utts]
    assert got == [
        ("a-1", 0.0, 1.25, "spk1", "hello there"),
        ("a-2", 1.5, 1.5, "spk1", "second part"),  # end -1: to the end of the 3 s file
    ]
    got = {where.split()[-1]: reason.split(":")[0] for where, reason in result.problems}
    assert got == {"c-1": "unsupported_audio", "b-1": "bad_line"}


def test_kaldi_folder_without_wav_scp_is_one_line_error(tmp_path):
    (tmp_path / "text").write_text("a hi\n")
    with pytest.raises(FileNotFoundError, match="wav.scp is missing"):
        prepare_kaldi(tmp_path)


def lhotse_cut(cut_id: str, source: dict, start=0.0, duration=1.0, sups=None, **kw) -> dict:
    recording = {
        "id": "rec", "sources": [source], "sampling_rate": 16000, "num_samples": 48000,
        "duration": 3.0, "channel_ids": [0],
    }  # fmt: skip
    return {"id": cut_id, "start": start, "duration": duration, "channel": 0,
            "supervisions": sups or [], "recording": recording, **kw}  # fmt: skip


@pytest.fixture
def cuts_file(tmp_path) -> Path:
    """A CutSet as lhotse writes it: gzip JSONL, one MonoCut a line, plus cuts we skip."""
    write_audio(tmp_path / "audio" / "rec.flac", 48000)
    file = {"type": "file", "channels": [0], "source": "audio/rec.flac"}
    sup = dict(recording_id="rec", channel=0, language="German")
    cuts = [
        lhotse_cut("c1", file, 0.5, 1.2, [
            dict(sup, id="s2", start=0.6, duration=0.6, text="Zweiter Teil.", speaker="anna"),
            dict(sup, id="s1", start=0.0, duration=0.5, text="Über Straßen", speaker="anna"),
        ], custom={"gender": "f", "nested": {"x": 1}}, type="MonoCut"),
        lhotse_cut("c2", file, 2.0, 1.0, [dict(sup, id="s3", start=0, duration=1, text="ça")]),
        lhotse_cut("c3", {"type": "url", "channels": [0], "source": "https://x/a.wav"},
                   sups=[dict(sup, id="s4", start=0, duration=1, text="url")]),
        {"id": "mix", "type": "MixedCut", "tracks": []},
        lhotse_cut("c4", file, 0.0, 1.0),  # no supervision
    ]  # fmt: skip
    path = tmp_path / "cuts.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(c) + "\n" for c in cuts)
    return path


def test_lhotse_cuts_become_utterances(cuts_file):
    result = prepare_lhotse(cuts_file, alphabet=AUTO_ALPHABET, digits="keep")
    c1, c2 = result.utts
    assert (c1.id, c1.offset, c1.duration, c1.speaker) == ("c1", 0.5, 1.2, "anna")
    assert c1.text == "über straßen zweiter teil"  # supervisions in time order
    assert c1.audio == str(cuts_file.parent / "audio" / "rec.flac")
    assert c1.extra == {"gender": "f", "raw_text": "Über Straßen Zweiter Teil."}
    assert (c2.id, c2.text, c2.offset) == ("c2", "ça", 2.0)
    got = [reason.split(":")[0] for _, reason in result.problems]
    assert got == ["unsupported_audio", "unsupported_cut", "empty_text"]


def test_lhotse_unreadable_gzip_is_one_line_error(tmp_path):
    (tmp_path / "cuts.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="lhotse: cannot read"):
        prepare_lhotse(tmp_path / "cuts.jsonl.gz")


@pytest.fixture
def manifest(tmp_path) -> list[Utterance]:
    """Utterances carrying every field: offsets, speakers, extras, non-English text."""
    long = str(write_audio(tmp_path / "corpus" / "long.flac", 64000))
    short = str(write_audio(tmp_path / "corpus" / "sub" / "short.wav", 8000))
    return [
        Utterance("u1", long, 1.5, "grüße aus köln", "anna", 0.25, {"raw_text": "Grüße aus Köln!"}),
        Utterance("u2", long, 2.0, "où est la forêt", "", 2.0, {"client": 3, "ok": True}),
        Utterance("u3", short, 0.5, "daß ich's weiß", "bernd", 0.0, {}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "export, prepare, name",
    [(export_nemo, prepare_nemo, "nemo.json"), (export_lhotse, prepare_lhotse, "cuts.jsonl.gz")],
)
def test_export_then_import_gives_the_manifest_back(tmp_path, manifest, export, prepare, name):
    out = tmp_path / "corpus" / name
    assert export(manifest, out) == 3
    back = prepare(out, alphabet=AUTO_ALPHABET, digits="keep")
    assert back.problems == []
    assert back.utts == manifest


def test_paths_are_relative_to_the_export_when_under_it(tmp_path, manifest):
    export_nemo(manifest, tmp_path / "corpus" / "nemo.json")
    first = json.loads((tmp_path / "corpus" / "nemo.json").read_text().splitlines()[0])
    assert first == {"raw_text": "Grüße aus Köln!", "audio_filepath": "long.flac",
                     "duration": 1.5, "text": "grüße aus köln", "offset": 0.25,
                     "speaker": "anna", "id": "u1"}  # fmt: skip
    export_lhotse(manifest, tmp_path / "cuts.jsonl.gz")
    with gzip.open(tmp_path / "cuts.jsonl.gz", "rt") as f:
        cuts = [json.loads(line) for line in f]
    assert cuts[0]["recording"] is not None and cuts[0]["recording"]["num_samples"] == 64000
    assert cuts[0]["recording"] == cuts[1]["recording"]  # one recording, two cuts
    assert cuts[0]["recording"]["sources"][0]["source"] == "corpus/long.flac"
    assert [c["type"] for c in cuts] == ["MonoCut"] * 3


@pytest.mark.parametrize(
    "export, prepare", [(export_nemo, prepare_nemo), (export_lhotse, prepare_lhotse)]
)
def test_each_importer_reads_its_own_export_unchanged(tmp_path, cuts_file, export, prepare):
    first = prepare_lhotse(cuts_file).utts  # English alphabet: folded, spelled, raw_text kept
    export(first, tmp_path / "again")
    assert prepare(tmp_path / "again").utts == first
    export(first, tmp_path / "twice")  # and the bytes are stable
    assert (tmp_path / "again").read_bytes() == (tmp_path / "twice").read_bytes()


GERMAN = "Größere Äpfel über Öfen – „Süße“ Grüße, daß's 3 Mädchen weiß!"
FRENCH = "L'élève à côté: « Ça va? » Où est la forêt, très près; Noël, œuvre, naïve."


def test_auto_alphabet_keeps_german_and_french_letters():
    de = normalize_text(GERMAN, AUTO_ALPHABET, "keep")
    fr = normalize_text(FRENCH, AUTO_ALPHABET, "keep")
    assert de == "größere äpfel über öfen süße grüße daß's 3 mädchen weiß"
    assert fr == "l'élève à côté ça va où est la forêt très près noël œuvre naïve"
    # the English default folds them (and reports them, see test_prepare_auto_alphabet_cli)
    assert normalize_text("Größere Äpfel", digits="keep") == "grossere apfel"
    assert set("äöüßéèçàêôœï") <= set(alphabet_of([de, fr]))


def test_auto_alphabet_never_folds_nfd_input_and_lowercases():
    nfd = "Mu\u0308nchen E\u0301TE\u0301"  # decomposed ü and É
    assert normalize_text(nfd, AUTO_ALPHABET) == "münchen été"


def test_manifest_export_command(tmp_path, manifest, capsys):
    from speechswarm.cli import main
    from speechswarm.data.manifest import write_manifest

    write_manifest(tmp_path / "m.jsonl", manifest)
    out = tmp_path / "cuts.jsonl.gz"
    args = ["manifest", "export", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(out)]
    assert main([*args, "--format", "lhotse"]) == 0
    assert capsys.readouterr().out.startswith("manifest export lhotse: 3 utts, 0.00 h audio")
    assert prepare_lhotse(out, alphabet=AUTO_ALPHABET, digits="keep").utts == manifest
