"""The plan of the built-in corpus: which sentence, voice, speed, pitch and effects each
utterance gets, decided before any audio exists.

    plan = plan_corpus(load_sentences(), discover_voices(), hours=3.6, seed=0)

Deterministic in (sentences, voices, hours, seed, sample rate, voice sources):
`CorpusPlan.spec_hash` names it, and `synth.synthesize_corpus` keys its cache on that hash, so
audio lengths are estimated from word counts here, never measured. Splits hold out voice
identities and sentences (see `speechswarm.data.synth`). The neural engines (kokoro, piper)
are optional: a split gets the shares of the engines it has voices of.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass

from speechswarm.data.tts import IDENTITIES, SETUP_HINT, SynthError, Voice, pitch_effect

SPLITS = ("train", "dev", "test")
DEFAULT_HOURS = 3.6  # train audio (+2 x 0.36 h dev/test): ~8 min to synthesise on 2 cores
EVAL_FRACTION = 0.1  # dev and test each hold ~10 % of the train audio ...
MIN_EVAL_UTTERANCES = 40  # ... but never fewer utterances than this
# Of each split's utterances, normalised over the engines the split has voices of. Kokoro reads
# at ~0.55-1.0 x real time on one core (the Debian engines at < 0.05, Piper ~0.1), so its
# ~10 % of train is most of the synthesis time; it makes the train and test women.
ENGINE_SHARES = {"espeak": 0.45, "flite": 0.25, "festival": 0.15, "kokoro": 0.1, "piper": 0.1}
REQUIRED_ENGINES = ("espeak", "flite", "festival")  # in every split; the others are optional
UTTS_PER_SPEAKER = 8  # few utterances per voice setting -> many settings
EVAL_VARIANT_FRACTION = 0.15  # of espeak-ng variants (per gender) held out for dev and for test
# Planning estimate of audio length (the plan must not depend on synthesised audio, or the cache
# could not be checked before synthesis); calibrated on the default corpus.
SECONDS_PER_WORD = 0.245  # least squares over 242 utterances: 0.57 s + 0.24 s/word
SECONDS_PER_UTTERANCE = 0.55  # leading/trailing silence
SPEC_VERSION = 2  # bump when rendering changes, so old caches are detected as different

# Per-utterance effect probabilities (seeded); see _draw_utterance for the ranges.
EFFECT_PROBS = {"tempo": 0.3, "reverb": 0.3, "telephone": 0.15, "noise": 0.5, "gain": 0.3}
NOISE_KINDS = ("white", "pink", "brown")


@dataclass(frozen=True)
class Speaker:
    id: int
    chapter: int
    split: str
    voice: Voice
    speed: float  # speaking-rate factor, 1.0 = engine default
    pitch: float  # espeak: -p 0..99 (50 = variant default); flite/festival: semitones via sox

    def effects(self) -> list[str]:
        """Speaker-level sox effects (flite/festival pitch shift, in cents)."""
        return pitch_effect(self.voice.engine, self.pitch)


@dataclass(frozen=True)
class UtterancePlan:
    id: str  # <speaker>-<chapter>-<nnnn>
    split: str
    speaker: int
    text: str  # normalised lower-case, exactly what the engine reads
    speed: float  # speaker speed x per-utterance jitter
    pitch: float  # speaker pitch + per-utterance jitter (units as Speaker.pitch)
    effects: tuple[str, ...]  # sox effects after TTS: tempo, reverb, band-limit
    noise: str  # "" or one of NOISE_KINDS
    snr_db: float
    peak_db: float  # final peak level, dBFS (-1 unless the "gain" effect drew a lower one)
    seed: int  # noise RNG seed


@dataclass(frozen=True)
class CorpusPlan:
    speakers: tuple[Speaker, ...]
    utterances: tuple[UtterancePlan, ...]
    sample_rate: int
    sources: tuple[tuple[str, str], ...] = ()  # optional engine -> package version or "missing"

    def spec_hash(self) -> str:
        blob = json.dumps([SPEC_VERSION, asdict(self)], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def split_voices(voices: list[Voice], seed: int) -> dict[str, list[Voice]]:
    """Voices per split; no identity is in two splits; every split has every required engine."""
    identity_split = {ident: split for ident, (_, split) in IDENTITIES.items()}
    rng = random.Random(f"voices:{seed}")
    espeak = sorted({(v.gender, v.identity) for v in voices if v.engine == "espeak"})
    for gender in sorted({g for g, _ in espeak}):
        group = [ident for g, ident in espeak if g == gender]
        rng.shuffle(group)
        k = max(1, round(len(group) * EVAL_VARIANT_FRACTION)) if len(group) >= 3 else 0
        for i, ident in enumerate(group):
            identity_split[ident] = "test" if i < k else "dev" if i < 2 * k else "train"
    by_split: dict[str, list[Voice]] = {s: [] for s in SPLITS}
    for v in voices:
        by_split[identity_split.get(v.identity, "train")].append(v)
    for split in SPLITS:
        have = {v.engine for v in by_split[split]}
        for engine in REQUIRED_ENGINES:
            if engine not in have:
                raise SynthError(f"no {engine} voice available for the {split} split; {SETUP_HINT}")
    return by_split


def plan_corpus(
    sentences: list[str],
    voices: list[Voice],
    *,
    hours: float,
    seed: int = 0,
    sample_rate: int = 16000,
    eval_fraction: float = EVAL_FRACTION,
    min_eval_utterances: int = MIN_EVAL_UTTERANCES,
    sources: dict[str, str] | None = None,
) -> CorpusPlan:
    """The deterministic plan: which text, voice and effects each utterance gets.

    `sources` (tts.voice_sources: optional engine -> version or why missing) only enters the
    spec hash: a new model version or a package that went missing makes a different corpus."""
    if hours <= 0:
        raise SynthError(f"hours must be > 0, got {hours}")
    order = list(sentences)
    random.Random(f"sentences:{seed}").shuffle(order)
    eval_s = hours * 3600 * eval_fraction
    test, pos = _take(order, 0, eval_s, min_eval_utterances)
    dev, pos = _take(order, pos, eval_s, min_eval_utterances)
    train_pool = order[pos:]
    if not train_pool:
        raise SynthError(f"only {len(sentences)} sentences, none left for train; use more text")
    n_train = _count_for(train_pool, hours * 3600)
    train = [train_pool[i % len(train_pool)] for i in range(n_train)]  # reuses only train texts
    pools = split_voices(voices, seed)
    rng = random.Random(f"speakers:{seed}")
    speakers: list[Speaker] = []
    utts: list[UtterancePlan] = []
    for split, texts in (("train", train), ("dev", dev), ("test", test)):
        s, u = _plan_split(split, texts, pools[split], rng, seed, first_id=100 + len(speakers))
        speakers += s
        utts += u
    versions = tuple(sorted((sources or {}).items()))
    return CorpusPlan(tuple(speakers), tuple(utts), sample_rate, versions)


def estimate_seconds(text: str) -> float:
    return SECONDS_PER_UTTERANCE + SECONDS_PER_WORD * len(text.split())


def _take(order: list[str], start: int, seconds: float, min_count: int) -> tuple[list[str], int]:
    total, end = 0.0, start
    while end < len(order) and (total < seconds or end - start < min_count):
        total += estimate_seconds(order[end])
        end += 1
    if end - start < min_count:
        raise SynthError(f"only {len(order)} sentences, too few for dev and test; use more text")
    return order[start:end], end


def _count_for(pool: list[str], seconds: float) -> int:
    total, n = 0.0, 0
    while total < seconds:
        total += estimate_seconds(pool[n % len(pool)])
        n += 1
    return max(n, 1)


def _engine_counts(n: int, engines: list[str]) -> dict[str, int]:
    """Split n utterances by ENGINE_SHARES normalised over `engines` (largest remainder), at
    least 1 each when n allows."""
    total = sum(ENGINE_SHARES[e] for e in engines)
    shares = {e: ENGINE_SHARES[e] / total * n for e in engines}
    counts = {e: int(s) for e, s in shares.items()}
    for e in sorted(engines, key=lambda e: counts[e] - shares[e])[: n - sum(counts.values())]:
        counts[e] += 1
    for e in engines:
        if counts[e] == 0 and n >= len(engines):
            counts[max(counts, key=counts.get)] -= 1
            counts[e] = 1
    return counts


def _plan_split(split, texts, pool, rng, seed, first_id) -> tuple[list[Speaker], list]:
    present = {v.engine for v in pool}
    counts = _engine_counts(len(texts), [e for e in ENGINE_SHARES if e in present])
    speakers: list[Speaker] = []
    utts: list[UtterancePlan] = []
    pos = 0
    for engine, n in counts.items():
        choices = [v for v in pool if v.engine == engine]
        rng.shuffle(choices)
        n_spk = math.ceil(n / UTTS_PER_SPEAKER)
        spks = [
            _make_speaker(first_id + len(speakers) + k, split, choices[k % len(choices)], rng)
            for k in range(n_spk)
        ]
        speakers += spks
        per_spk: dict[int, int] = {}
        for i, text in enumerate(texts[pos : pos + n]):
            spk = spks[i % n_spk]
            nnnn = per_spk.get(spk.id, 0)
            per_spk[spk.id] = nnnn + 1
            utts.append(_draw_utterance(f"{spk.id}-{spk.chapter}-{nnnn:04d}", spk, text, seed))
        pos += n
    return speakers, utts


def _make_speaker(sid: int, split: str, voice: Voice, rng: random.Random) -> Speaker:
    speed = round(rng.uniform(0.85, 1.2), 3)
    espeak = voice.engine == "espeak"
    pitch = float(rng.randint(25, 75)) if espeak else round(rng.uniform(-3.0, 3.0), 2)
    return Speaker(sid, chapter=10 * sid + 1, split=split, voice=voice, speed=speed, pitch=pitch)


def _draw_utterance(uid: str, spk: Speaker, text: str, seed: int) -> UtterancePlan:
    rng = random.Random(f"utt:{seed}:{uid}")  # str seeds hash with sha512: stable across runs
    speed = round(spk.speed * rng.uniform(0.95, 1.05), 3)
    if spk.voice.engine == "espeak":
        pitch = float(min(99, max(0, round(spk.pitch + rng.uniform(-4, 4)))))
    else:
        pitch = round(spk.pitch + rng.uniform(-0.5, 0.5), 2)
    effects: list[str] = []
    if rng.random() < EFFECT_PROBS["tempo"]:
        effects += ["tempo", f"{rng.uniform(0.9, 1.1):.3f}"]
    if rng.random() < EFFECT_PROBS["reverb"]:  # reverberance %, HF damping %, room scale %
        effects += ["reverb", f"{rng.uniform(10, 60):.0f}", "50", f"{rng.uniform(20, 100):.0f}"]
    if rng.random() < EFFECT_PROBS["telephone"]:
        effects += ["sinc", "300-3400"]
    noise = rng.choice(NOISE_KINDS) if rng.random() < EFFECT_PROBS["noise"] else ""
    snr_db = round(rng.uniform(10, 30), 1) if noise else 0.0
    peak_db = round(rng.uniform(-20, -3), 1) if rng.random() < EFFECT_PROBS["gain"] else -1.0
    noise_seed = rng.getrandbits(32)
    return UtterancePlan(uid, spk.split, spk.id, text, speed, pitch, tuple(effects), noise,
                         snr_db, peak_db, noise_seed)  # fmt: skip
