"""The intelligibility gate for neural persons: each candidate reads the same sentences, an
independent recognizer (PocketSphinx, en-us, from PyPI) transcribes them, and a person enters
the corpus only when its word error rate is near that of the recorded voices.

    python -m speechswarm.data.voice_gate --out gate.json            # all candidates (~20 min)
    python -m speechswarm.data.voice_gate --only kumo gongitsune50     # names containing these
    python -m speechswarm.data.voice_gate --mix jf_alpha=0.7,jm_kumo=0.3  # only these blends

Candidates: every Kokoro style, every 50/50 blend of two styles, the Piper voice, and as the
yardsticks the flite and festival persons of the corpus. Each reads `--sentences` fortune
sentences (6-14 words, a fixed seeded sample) at speed 1.0, with no effects; the table gives
corpus WER (speechswarm.metrics), the median pitch of voiced frames (median_pitch_hz) and the
real-time factor of synthesis. The numbers the corpus was built on are in docs/corpus.md;
kokoro.PERSONS records the choice. Needs `pip install pocketsphinx` (a dev dependency).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speechswarm.data import kokoro, piper
from speechswarm.data.sentences import load_sentences
from speechswarm.data.tts import Voice, tts_command
from speechswarm.metrics import wer

RECOGNIZER_RATE = 16000
YARDSTICKS = (  # (engine, voice) of the corpus's recorded persons
    ("flite", "slt"), ("flite", "kal"), ("flite", "awb"), ("flite", "rms"),
    ("festival", "kal_diphone"), ("festival", "ked_diphone"), ("festival", "cmu_us_slt_arctic_hts"),
)  # fmt: skip


@dataclass(frozen=True)
class GateRow:
    name: str  # "kokoro:kumo50+nezumi50", "piper:joe", "flite:slt"
    wer: float  # corpus WER over the sentences, 0..1
    pitch_hz: float  # median F0 of voiced frames
    rtf: float  # synthesis seconds / audio seconds (one thread)
    audio_s: float


# ----------------------------------------------------------------------------- pitch


def median_pitch_hz(wave: np.ndarray, sample_rate: int, fmin: float = 60.0,
                    fmax: float = 400.0, threshold: float = 0.15) -> float:  # fmt: skip
    """Median F0 (Hz) over voiced frames, by YIN (de Cheveigné & Kawahara 2002): per 10 ms hop,
    the cumulative-mean-normalised difference d'(tau) over one longest period; a frame is
    voiced when d' dips below `threshold` at a lag within [1/fmax, 1/fmin] (the first dip, so
    a strong second harmonic does not halve the pitch) and its energy is within 30 dB of the
    loudest frame's. nan when no frame is voiced."""
    lo, hi = int(sample_rate / fmax), int(sample_rate / fmin)
    x = np.asarray(wave, dtype=np.float64)
    starts = range(0, len(x) - 2 * hi, int(0.01 * sample_rate))
    energies = np.array([np.sum(x[s : s + hi] ** 2) for s in starts])
    if energies.size == 0 or energies.max() == 0:
        return float("nan")
    f0s = []
    for s, energy in zip(starts, energies, strict=True):
        if energy < energies.max() * 1e-3:
            continue
        head, frame = x[s : s + hi], x[s : s + 2 * hi]  # (W,), (2W,)
        shifted = np.cumsum(
            frame**2
        )  # sum of squares of frame[tau : tau + W] = c[tau+W-1]-c[tau-1]
        e_tau = shifted[hi - 1 : 2 * hi] - np.concatenate(([0.0], shifted[:hi]))  # (W+1,)
        r = np.correlate(frame[: 2 * hi], head, mode="valid")[: hi + 1]  # (W+1,) lags 0..W
        d = energy + e_tau - 2 * r  # (W+1,) difference function, d[0] = 0
        cmnd = d[1:] * np.arange(1, hi + 1) / np.maximum(np.cumsum(d[1:]), 1e-12)  # lags 1..W
        below = np.flatnonzero(cmnd[lo - 1 :] < threshold)
        if below.size:
            lag = lo - 1 + below[0]
            while lag + 1 < hi and cmnd[lag + 1] < cmnd[lag]:  # walk down to the dip's bottom
                lag += 1
            f0s.append(sample_rate / (lag + 1))
    return float(np.median(f0s)) if f0s else float("nan")


# ----------------------------------------------------------------------------- candidates


def parse_mix(spec: str) -> tuple[tuple[str, float], ...]:
    """ "jf_alpha=0.7,jm_kumo=0.3" -> (("jf_alpha", 0.7), ("jm_kumo", 0.3))"""
    mix = tuple((name, float(w)) for name, w in (part.split("=") for part in spec.split(",")))
    unknown = [name for name, _ in mix if name not in kokoro.STYLES]
    if unknown:
        raise SystemExit(f"unknown Kokoro styles {unknown}; known: {list(kokoro.STYLES)}")
    return mix


def candidates() -> dict[str, object]:
    """name -> what to synthesise with: a Kokoro mix, "piper", or a recorded Voice."""
    out: dict[str, object] = {}
    for style in kokoro.STYLES:
        out[f"kokoro:{style[3:]}100"] = ((style, 1.0),)
    for a, b in itertools.combinations(kokoro.STYLES, 2):
        out[f"kokoro:{a[3:]}50+{b[3:]}50"] = ((a, 0.5), (b, 0.5))
    out["piper:joe"] = "piper"
    for engine, name in YARDSTICKS:
        out[f"{engine}:{name}"] = Voice(engine, name, "", name)
    return out


def synthesize(target: object, text: str, work: Path) -> np.ndarray:
    """(S,) float32 audio at RECOGNIZER_RATE of `text` read by `target` at speed 1.0."""
    if isinstance(target, Voice):
        wav = work / "gate.wav"
        argv, stdin = tts_command(target, text, 1.0, 0.0, wav)
        subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, check=True)
        audio, rate = sf.read(wav, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
    elif target == "piper":
        model = piper.load()
        audio, rate = model.synthesize(text, 1.0), model.sample_rate
    else:
        audio, rate = kokoro.load().synthesize(text, target, 1.0), kokoro.SAMPLE_RATE
    return soxr.resample(audio, rate, RECOGNIZER_RATE).astype(np.float32)


def recognize(decoder, audio: np.ndarray) -> str:
    """PocketSphinx's best hypothesis, lower case, fillers dropped."""
    pcm = np.clip(audio / max(1e-9, float(np.abs(audio).max())) * 0.9, -1, 1) * 32767
    decoder.start_utt()
    decoder.process_raw(pcm.astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    words = (hyp.hypstr if hyp is not None else "").lower().split()
    return " ".join(w for w in words if not w.startswith(("<", "[", "++")))


def gate_sentences(n: int, seed: int = 0) -> list[str]:
    pool = [s for s in load_sentences() if 6 <= len(s.split()) <= 14]
    random.Random(f"gate:{seed}").shuffle(pool)
    return pool[:n]


def measure(name: str, target: object, sentences: list[str], decoder, work: Path) -> GateRow:
    hyps, waves, synth_s = [], [], 0.0
    for text in sentences:
        start = time.perf_counter()
        audio = synthesize(target, text, work)
        synth_s += time.perf_counter() - start
        waves.append(audio)
        hyps.append(recognize(decoder, audio))
    audio_s = sum(len(w) for w in waves) / RECOGNIZER_RATE
    pitch = median_pitch_hz(np.concatenate(waves), RECOGNIZER_RATE)
    return GateRow(name, wer(sentences, hyps), pitch, synth_s / audio_s, audio_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--only", nargs="*", default=[], help="candidates whose name holds one")
    parser.add_argument("--mix", action="append", default=[], help="style=weight,...: gate these")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.mix:
        mixes = [parse_mix(m) for m in args.mix]
        todo = {f"kokoro:{kokoro.Person(m, '', '').name}": m for m in mixes}
    else:
        todo = {n: t for n, t in candidates().items()
                if not args.only or any(part in n for part in args.only)}  # fmt: skip
    from pocketsphinx import Decoder  # dev dependency: only the gate needs it

    decoder = Decoder(samprate=RECOGNIZER_RATE, loglevel="FATAL")
    sentences = gate_sentences(args.sentences)
    rows = []
    print("| candidate | WER % | median pitch Hz | RTF |\n|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="speechswarm-gate-") as work:
        for name, target in todo.items():
            row = measure(name, target, sentences, decoder, Path(work))
            rows.append(row)
            print(f"| {name} | {100 * row.wer:.1f} | {row.pitch_hz:.0f} | {row.rtf:.2f} |",
                  flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
