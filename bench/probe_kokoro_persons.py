"""How much do the corpus's neural persons teach about voices never heard? A probe, not a feature.

    .venv/bin/python bench/probe_kokoro_persons.py --data data/synth    # ~9 min on 2 cores

Writes, beside the corpus's `train.jsonl` (which it never changes), training manifests that
differ from it only in who speaks:
- `train-nokokoro.jsonl`: without the Kokoro persons (six blends, ~0.5 h);
- `train-noawb.jsonl`: without flite's awb, one of the two recorded persons;
- `train-k18same.jsonl`: 18 Kokoro blends in the minutes the six had (25 utterances each);
- `train-k18double.jsonl`: the six blends plus 12 new ones, twice the Kokoro minutes;
- `train-krep2.jsonl`: every Kokoro utterance listed twice (twice the exposure, no new audio).

The 12 new blends mix the train styles only (alpha, tebukuro, kumo; kumo at 0.4-0.7, where
every two-style blend tried passed the intelligibility gate; these were not gated), so no test
style is heard. Their utterances (`kokoro-extra.jsonl`, `train/9xxx/`) are rendered as the
corpus renders Kokoro: speakers of 8 utterances with their own speed and pitch, the same
per-utterance effects and noise, sentences of the train split only. Train each manifest with the demo's recipe and
score dev (bench/RESULTS.md, "Who teaches the unseen persons").
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import tempfile
from multiprocessing import Pool
from pathlib import Path

import soundfile as sf

from speechswarm.data import kokoro
from speechswarm.data import synth_plan as plan
from speechswarm.data.synth import flac_path
from speechswarm.data.tts import Voice, render_utterance

ALPHA, TEBUKURO, KUMO = "jf_alpha", "jf_tebukuro", "jm_kumo"
# (alpha, tebukuro, kumo) weights of the new train blends
NEW_MIXES = (
    (0.2, 0.2, 0.6), (0.1, 0.3, 0.6), (0.3, 0.1, 0.6), (0.25, 0.25, 0.5), (0.15, 0.35, 0.5),
    (0.35, 0.15, 0.5), (0.3, 0.3, 0.4), (0.2, 0.4, 0.4), (0.4, 0.2, 0.4), (0.15, 0.15, 0.7),
    (0.4, 0.0, 0.6), (0.0, 0.4, 0.6),
)  # fmt: skip
FIRST_SPEAKER = 9000  # above every speaker id of the default corpus
SAMPLE_RATE = 16000


def new_persons() -> list[kokoro.Person]:
    """The 12 blends; sex by the kumo share (the gate measured >= 160 Hz at kumo <= 0.5)."""
    out = []
    for a, t, k in NEW_MIXES:
        mix = tuple((s, w) for s, w in ((ALPHA, a), (TEBUKURO, t), (KUMO, k)) if w > 0)
        out.append(kokoro.Person(mix, "F" if k <= 0.5 else "M", "train"))
    return out


def plan_extra(train: list[dict], persons: list[kokoro.Person], count: int) -> list:
    """(Speaker, UtterancePlan) pairs: `count` train sentences read by the new persons
    (seeded: the measured runs used these seeds)."""
    texts = [r["text"] for r in train if r["engine"] != "kokoro"]
    random.Random("kx:texts").shuffle(texts)
    rng = random.Random("kx:speakers")
    n_spk = -(-count // plan.UTTS_PER_SPEAKER)
    voices = [Voice("kokoro", p.name, "", f"kokoro:{p.name}", p.sex) for p in persons]
    speakers = [plan._make_speaker(FIRST_SPEAKER + k, "train", voices[k % len(voices)], rng)
                for k in range(n_spk)]  # fmt: skip
    items, per_speaker = [], collections.Counter()
    for i, text in enumerate(texts[:count]):
        spk = speakers[i % n_spk]
        uid = f"{spk.id}-{spk.chapter}-{per_speaker[spk.id]:04d}"
        per_speaker[spk.id] += 1
        items.append((spk, plan._draw_utterance(uid, spk, text, 0)))
    return items


def render(job: tuple[Path, object, object]) -> dict:
    """One utterance into the corpus folder (kept if already there); its manifest record."""
    data, spk, utt = job
    out = flac_path(data, utt, spk)
    if out.exists():
        seconds = sf.info(out).duration
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            seconds = render_utterance(utt, spk.voice, out, SAMPLE_RATE, Path(work))
    return {"id": utt.id, "audio": str(out.relative_to(data)), "duration": seconds, "text": utt.text,
            "speaker": str(spk.id), "offset": 0.0, "split": "train", "chapter": str(spk.chapter),
            "engine": "kokoro", "voice": spk.voice.voice, "identity": spk.voice.identity}  # fmt: skip


def per_person(rows: list[dict], n: int) -> list[dict]:
    """The first `n` utterances of each person (identity), persons in sorted order."""
    by: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by[r["identity"]].append(r)
    return [r for ident in sorted(by) for r in by[ident][:n]]


def twice_if_kokoro(record: dict) -> list[dict]:
    """[record], or [record, its copy under a new id] for a Kokoro utterance."""
    if record["engine"] != "kokoro":
        return [record]
    return [record, {**record, "id": record["id"] + "-again"}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/synth"))
    p.add_argument("--utterances", type=int, default=445, help="new Kokoro utterances")
    p.add_argument("--same-per-person", type=int, default=25, help="k18same: per blend")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    train = [json.loads(line) for line in (args.data / "train.jsonl").read_text().splitlines()]
    persons = new_persons()
    kokoro.PERSONS = kokoro.PERSONS + tuple(persons)  # render_utterance looks blends up here
    jobs = [(args.data, s, u) for s, u in plan_extra(train, persons, args.utterances)]
    with Pool(args.workers) as pool:  # fork: the workers inherit the extended PERSONS
        extra = list(pool.imap(render, jobs, chunksize=4))
    old = [r for r in train if r["engine"] == "kokoro"]
    rest = [r for r in train if r["engine"] != "kokoro"]
    manifests = {
        "kokoro-extra": extra,
        "train-nokokoro": rest,
        "train-noawb": [r for r in train if r["identity"] != "awb"],
        "train-k18same": rest
        + per_person(old, args.same_per_person)
        + per_person(extra, args.same_per_person),
        "train-k18double": train + extra,
        "train-krep2": [c for r in train for c in twice_if_kokoro(r)],
    }
    for name, rows in manifests.items():
        with open(args.data / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        neural = [r for r in rows if r["engine"] == "kokoro"]
        hours = sum(r["duration"] for r in neural) / 3600
        print(f"{name}.jsonl: {len(rows):,} utterances, Kokoro {len(neural):,} "
              f"({hours:.2f} h, {len({r['identity'] for r in neural})} persons)")  # fmt: skip


if __name__ == "__main__":
    main()
