"""A corpus with a tenth of its entries broken, in every way we know of.

    python -m speechswarm.chaos.corpus data/synth-1h/train.jsonl --out runs/chaos-corpus

`corrupt_manifest` copies a manifest and breaks `fraction` of its entries, the faults dealt in
turn (`FAULTS`): files cut short, emptied, removed, replaced by text, written at a rate their
header lies about, holding NaN samples or only silence; transcripts emptied, in another
alphabet or far too long for their audio; durations absurd (an hour, negative, NaN); ids
repeated. The source corpus is never touched: broken files are written under `<out>/bad/`.
Each fault carries what must happen to it (`EXPECTED`): the `speechswarm validate` reason
that names it, `too_long` (skipped by `data.max_duration`, counted) or `ok` (a file that is
merely unusual, such as 8 kHz audio, which is resampled and trained on).

`run_corpus_campaign` then checks that `validate` reports every broken entry by its reason
and nothing else, and that `speechswarm train` on the manifest, with and without
`data.validate`, trains on the good entries to its last step and names every skipped one in a
report (`data_report_<name>.json`, `skipped_<name>.jsonl`): no crash mid-epoch, no silent loss.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from speechswarm.data.manifest import Utterance, read_manifest, write_manifest

# fault -> what must become of the entry: a `validate` problem reason, "too_long" (dropped by
# data.max_duration and counted) or "ok" (used for training).
EXPECTED = {
    "truncated_flac": "unreadable_audio",
    "zero_byte_file": "unreadable_audio",
    "missing_file": "missing_file",
    "non_audio_bytes": "unreadable_audio",
    "rate_8k": "ok",  # resampled to the corpus rate
    "header_rate_lie": "duration_mismatch",  # 16 kHz samples under a 32 kHz header: half as long
    "nan_samples": "nonfinite_samples",
    "silence": "ok",  # all-zero samples: a valid (if useless) wave, must not make the loss NaN
    "empty_text": "empty_text",
    "text_out_of_alphabet": "text_out_of_alphabet",
    "text_too_long": "too_short_for_ctc",
    "duration_hour": "too_long",  # `validate` alone: duration_mismatch (no max_duration)
    "duration_negative": "bad_duration",
    "duration_nan": "bad_duration",
    "duplicate_id": "duplicate_id",
}
FAULTS = tuple(EXPECTED)


@dataclass(frozen=True)
class Corruption:
    id: str
    fault: str  # one of FAULTS
    expected: str  # EXPECTED[fault]


def corrupt_manifest(
    manifest: str | Path, out: str | Path, fraction: float = 0.1, seed: int = 0
) -> tuple[Path, list[Corruption]]:
    """Write `<out>/train.jsonl`: `manifest` with round(fraction * n) entries broken (at
    least one per fault), chosen at random with `seed`; returns (path, what was broken)."""
    out = Path(out)
    bad_dir = out / "bad"
    if bad_dir.exists():
        shutil.rmtree(bad_dir)
    bad_dir.mkdir(parents=True)
    utts = read_manifest(manifest)
    n_bad = max(len(FAULTS), round(fraction * len(utts)))
    if n_bad > len(utts) - 1:
        raise ValueError(f"{manifest}: {len(utts)} utterances are too few to break {n_bad}")
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(1, len(utts)), n_bad))  # entry 0 stays: duplicate_id's twin
    done = []
    for k, i in enumerate(chosen):
        fault = FAULTS[k % len(FAULTS)]
        utts[i] = _break(utts[i], fault, bad_dir, first=utts[0])
        done.append(Corruption(utts[i].id, fault, EXPECTED[fault]))
    path = out / "train.jsonl"
    write_manifest(path, utts)
    (out / "corruptions.json").write_text(json.dumps([asdict(c) for c in done], indent=1) + "\n")
    return path, done


def _break(u: Utterance, fault: str, bad_dir: Path, first: Utterance) -> Utterance:
    """The utterance `u` with `fault`; files are written under `bad_dir`."""
    dst = bad_dir / f"{u.id}{Path(u.audio).suffix}"
    if fault == "truncated_flac":
        data = Path(u.audio).read_bytes()
        dst.write_bytes(data[: len(data) // 2])
    elif fault == "zero_byte_file":
        dst.write_bytes(b"")
    elif fault == "missing_file":
        dst = bad_dir / f"{u.id}.gone.flac"
    elif fault == "non_audio_bytes":
        dst.write_bytes(b"<html><body>404 Not Found</body></html>\n" * 50)
    elif fault in ("rate_8k", "header_rate_lie", "nan_samples", "silence"):
        return u.with_(audio=str(_rewrite(u, fault, bad_dir)))
    elif fault == "empty_text":
        return u.with_(text=" \t ")
    elif fault == "text_out_of_alphabet":
        return u.with_(text=u.text + " über 42 ☃")
    elif fault == "text_too_long":
        return u.with_(text=" ".join([u.text] * 40))
    elif fault == "duration_hour":
        return u.with_(duration=3600.0)
    elif fault == "duration_negative":
        return u.with_(duration=-1.5)
    elif fault == "duration_nan":
        return u.with_(duration=float("nan"))
    elif fault == "duplicate_id":
        return u.with_(id=first.id)
    else:
        raise ValueError(f"unknown fault {fault!r}; use one of {FAULTS}")
    return u.with_(audio=str(dst))


def _rewrite(u: Utterance, fault: str, bad_dir: Path) -> Path:
    """The utterance's audio decoded and written again as `fault` wants it (WAV)."""
    import soxr

    wave, rate = sf.read(u.audio, dtype="float32")
    dst = bad_dir / f"{u.id}.wav"
    if fault == "rate_8k":
        sf.write(dst, soxr.resample(wave, rate, 8000), 8000, subtype="PCM_16")
    elif fault == "header_rate_lie":
        sf.write(dst, wave, 2 * rate, subtype="PCM_16")
    elif fault == "nan_samples":
        wave = wave.copy()
        wave[len(wave) // 3 :: 997] = np.nan
        sf.write(dst, wave, rate, subtype="FLOAT")
    else:  # silence
        sf.write(dst, np.zeros_like(wave), rate, subtype="PCM_16")
    return dst


# The campaign's training run: the tiny preset cut to a ~30k-parameter model, one epoch.
TRAIN_OVERRIDES = (
    "data.num_workers=0",
    "data.speed_factors=[]",
    "train.num_threads=1",
    "train.precision=fp32",
    "train.device=cpu",
    "model.conv_channels=[4,4]",
    "model.rnn_hidden=32",
    "model.rnn_layers=1",
    "train.inter_ctc_layers=[]",
    "train.epochs=1",
    "train.dev_max_utterances=8",
)


@dataclass
class CommandCheck:
    """One command run on the broken manifest, and what it made of each broken entry."""

    name: str  # "validate", "train (data.validate=true)", ...
    returncode: int
    traceback: bool  # a Python traceback on stderr: a crash, not a user error
    found: dict[str, str] = field(default_factory=dict)  # fault -> reason it was reported as
    lost_good: list[str] = field(default_factory=list)  # unbroken ids reported or not trained
    used: int = 0  # utterances trained on (train) or passed (validate)
    nonfinite_losses: int = 0

    def caught(self, corruptions: list[Corruption], validate_only: bool) -> int:
        """How many broken entries got the outcome they must get."""
        return sum(_outcome_ok(c, self.found.get(c.fault, "ok"), validate_only)
                   for c in corruptions)  # fmt: skip


def _outcome_ok(c: Corruption, got: str, validate_only: bool) -> bool:
    if c.fault == "duration_hour" and validate_only:  # `validate` knows no max_duration
        return got == "duration_mismatch"
    if c.fault == "header_rate_lie" and got == "duration_mismatch":
        return True
    return got == c.expected


def run_corpus_campaign(
    manifest: str | Path, out: str | Path, fraction: float = 0.1, seed: int = 0, log=print
) -> dict:
    """Break `fraction` of `manifest`, then run `speechswarm validate` and `speechswarm train`
    (data.validate true and false) on it as a user would; writes and returns
    `<out>/corpus.json` (per command: exit code, crash or not, each fault's reported reason,
    good utterances lost, utterances used)."""
    out = Path(out)
    path, corruptions = corrupt_manifest(manifest, out, fraction, seed)
    n = len(read_manifest(path))
    log(f"chaos corpus: {len(corruptions)} of {n} entries broken ({len(FAULTS)} kinds)")
    checks = [_run_validate(path, corruptions)]
    for validate in (True, False):
        run_dir = out / f"train-validate-{str(validate).lower()}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        checks.append(_run_train(path, run_dir, validate, corruptions))
    expected_bad = sum(c.expected != "ok" for c in corruptions)
    result = {
        "utterances": n,
        "broken": len(corruptions),
        "faults": len(FAULTS),
        "expected_unusable": expected_bad,
        "corruptions": [asdict(c) for c in corruptions],
        "commands": [
            dict(asdict(ch), caught=ch.caught(corruptions, ch.name == "validate")) for ch in checks
        ],
    }
    (out / "corpus.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    for ch in result["commands"]:
        log(f"{ch['name']}: exit {ch['returncode']}, traceback {ch['traceback']}, "
            f"{ch['caught']}/{len(corruptions)} broken entries handled as expected, "
            f"{len(ch['lost_good'])} good lost, {ch['used']} used")  # fmt: skip
    return result


def _speechswarm(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "speechswarm", *args], capture_output=True,
                          text=True, env=env, timeout=1800)  # fmt: skip


def _run_validate(path: Path, corruptions: list[Corruption]) -> CommandCheck:
    proc = _speechswarm("validate", str(path), "--json", "--report", str(path.with_suffix(".report.json")))  # fmt: skip
    check = CommandCheck("validate", proc.returncode, "Traceback" in proc.stderr)
    if check.traceback:
        return check
    report = json.loads(proc.stdout)
    _attribute(check, report["problems"], corruptions)
    check.used = report["num_ok"]
    return check


def _run_train(path: Path, run_dir: Path, validate: bool, corruptions) -> CommandCheck:
    flag = str(validate).lower()
    proc = _speechswarm("train", "--config", "tiny", *TRAIN_OVERRIDES,
                        f"data.train_manifest={path}", f"data.dev_manifest={path}",
                        f"data.validate={flag}", f"train.out_dir={run_dir}")  # fmt: skip
    check = CommandCheck(f"train (data.validate={flag})", proc.returncode, "Traceback" in proc.stderr)  # fmt: skip
    report_path = run_dir / "data_report_train.json"
    if check.traceback or not report_path.is_file():
        return check
    report = json.loads(report_path.read_text())
    skipped = run_dir / "skipped_train.jsonl"
    skips = [json.loads(line) for line in skipped.read_text().splitlines()] if skipped.is_file() else []  # fmt: skip
    _attribute(check, report["problems"] + skips, corruptions)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        check.used = report["num_ok"] - summary.get("skipped_utterances", 0)
        check.nonfinite_losses = summary.get("nonfinite_losses", 0)
    return check


def _attribute(check: CommandCheck, problems: list[dict], corruptions: list[Corruption]) -> None:
    """Fill `found` (fault -> reason) and `lost_good` from a command's problem records.
    A duplicate id is told apart from its first occurrence by its reason."""
    fault_of = {c.id: c.fault for c in corruptions if c.fault != "duplicate_id"}
    dup = next((c for c in corruptions if c.fault == "duplicate_id"), None)
    for p in problems:
        if dup is not None and p["reason"] == "duplicate_id" and p["id"] == dup.id:
            check.found.setdefault("duplicate_id", "duplicate_id")
        elif p["id"] in fault_of:
            check.found.setdefault(fault_of[p["id"]], p["reason"])
        elif p["id"] not in check.lost_good:
            check.lost_good.append(p["id"])


def corpus_passed(result: dict) -> bool:
    """Every command caught every broken entry, lost no good one, printed no traceback."""
    return not [
        c
        for c in result["commands"]
        if c["traceback"] or c["lost_good"] or c["caught"] != result["broken"]
    ]
