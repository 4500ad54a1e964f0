"""A German corpus end to end: `prepare kaldi --alphabet auto` keeps every letter, reports
what it changed, and `train` with `tokenizer.alphabet=auto` builds its vocabulary from it.

    .venv/bin/python -m pytest tests/test_languages.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
from tests.data.test_corpora import write_audio

from speechswarm.checkpoint import load_checkpoint
from speechswarm.cli import main
from speechswarm.data.manifest import read_manifest
from speechswarm.data.tokenizer import make_tokenizer
from speechswarm.errors import ConfigError

SENTENCES = {
    "de-1": "Größere Äpfel über Öfen!",
    "de-2": "„Süße“ Grüße – daß's 3 Mädchen weiß.",
    "de-3": "Fünf Bäume, schön & grün",
    "fr-1": "L'élève à côté: « Ça va? »",
    "fr-2": "Où est la forêt? Noël, œuvre naïve.",
}


@pytest.fixture
def kaldi_corpus(tmp_path):
    d = tmp_path / "data" / "de"
    d.mkdir(parents=True)
    wavs = {u: write_audio(tmp_path / "wav" / f"{u}.wav", 16000 + 4000 * i) for i, u in
            enumerate(SENTENCES)}  # fmt: skip
    (d / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in wavs.items()))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in SENTENCES.items()))
    return d


def test_prepare_auto_keeps_letters_and_reports_the_rest(kaldi_corpus, tmp_path, capsys):
    out = tmp_path / "de.jsonl"
    assert (
        main(["prepare", "kaldi", str(kaldi_corpus), "--alphabet", "auto", "--out", str(out)]) == 0
    )
    texts = {u.id: u.text for u in read_manifest(out)}
    assert texts == {
        "de-1": "größere äpfel über öfen",
        "de-2": "süße grüße daß's 3 mädchen weiß",
        "de-3": "fünf bäume schön grün",  # "&" is not read as English "and"
        "fr-1": "l'élève à côté ça va",
        "fr-2": "où est la forêt noël œuvre naïve",
    }
    printed = capsys.readouterr().out
    assert "alphabet (auto): " in printed and "tokenizer.alphabet=auto" in printed
    assert "note: digits kept as written in 1 transcripts" in printed
    report = json.loads(out.with_suffix(".text.json").read_text())
    outside = report["outside_alphabet"]
    assert outside["&"] == {"count": 1, "becomes": "(removed)"}
    assert outside["„"]["count"] == 1 and outside["!"]["count"] == 1
    assert not {c for c in outside if c.isalpha()}  # no letter was folded or removed


def test_english_alphabet_reports_what_it_folded(kaldi_corpus, tmp_path, capsys):
    out = tmp_path / "en.jsonl"
    assert main(["prepare", "kaldi", str(kaldi_corpus), "--out", str(out)]) == 0
    assert read_manifest(out)[0].text == "grossere apfel uber ofen"
    outside = json.loads(out.with_suffix(".text.json").read_text())["outside_alphabet"]
    assert outside["ö"] == {"count": 3, "becomes": "o"}  # Größere, Öfen, schön
    assert outside["ß"] == {"count": 5, "becomes": "ss"}
    assert "'ö'->'o'" in capsys.readouterr().out


def test_auto_tokenizer_needs_a_manifest():
    with pytest.raises(ConfigError, match="data.train_manifest"):
        make_tokenizer("char", "auto")


def test_a_german_corpus_trains_in_its_own_alphabet(kaldi_corpus, tmp_path, make_config):
    from speechswarm.train.loop import train

    out = tmp_path / "de.jsonl"
    main(["prepare", "kaldi", str(kaldi_corpus), "--alphabet", "auto", "--out", str(out)])
    cfg = make_config("tokenizer.alphabet=auto", "train.max_steps=3", manifest=out)
    threads = torch.get_num_threads()
    try:
        train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(cfg.train.out_dir + "/checkpoints/last.pt")
    alphabet = ckpt["tokenizer"]["alphabet"]
    assert set("äöüßéèçàêôœï") <= set(alphabet) and "3" in alphabet
    assert ckpt["model"]["classifier.weight"].shape[0] == len(alphabet) + 1  # + blank
