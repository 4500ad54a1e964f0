"""Commands that turn data on disk into manifests: prepare, synth, clients, validate.

    speechswarm prepare librispeech /data/LibriSpeech/dev-clean --out data/dev-clean.jsonl
    speechswarm prepare kaldi data/de/train --alphabet auto --out data/de/train.jsonl
    speechswarm manifest export --format lhotse --manifest data/dev.jsonl --out dev_cuts.jsonl.gz
    speechswarm synth --out data/synth
    speechswarm prepare clients my_module:load_clients_data --out data/clients
    speechswarm validate data/dev-clean.jsonl

Each writes its outputs atomically and prints one summary line with units; problems go to a
JSON report beside the manifest, never silently dropped.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from speechswarm.data.manifest import Utterance, read_manifest, total_hours, write_manifest
from speechswarm.data.text import AUTO_ALPHABET, DEFAULT_ALPHABET, alphabet_of, normalize_text
from speechswarm.errors import UsageError


def prepare_manifest(
    fmt: str,
    src: Path,
    out: Path,
    *,
    split: str = "train",
    alphabet: str = "english",
    digits: str | None = None,
    workers: int = 4,
    subsets: tuple[str, ...] = (),
) -> list[Utterance]:
    """Import corpus `src` of format `fmt` into manifest `out` (+ `out`.problems.json if any,
    + `out`.text.json when normalisation changed characters outside the alphabet).

    `alphabet`: "english" (a-z, apostrophe, space; accents folded, numbers spelled) or
    "auto" (the data's own letters, nothing folded; digits kept unless `digits="spell"`).
    `subsets`: UserLibri split folders to import (e.g. ("test-clean",)); default: all."""
    from speechswarm.data.corpora import prepare

    if alphabet not in ("english", "auto"):
        raise UsageError(f"--alphabet must be 'english' or 'auto', got {alphabet!r}")
    auto = alphabet == "auto"
    digits = digits or ("keep" if auto else "spell")
    kwargs = {"alphabet": AUTO_ALPHABET if auto else DEFAULT_ALPHABET}
    kwargs |= {"digits": digits, "workers": workers}
    if fmt == "commonvoice":
        kwargs["split"] = split
    if subsets:
        if fmt != "userlibri":
            raise UsageError(f"--subsets applies to userlibri only, not {fmt}")
        kwargs["subsets"] = tuple(subsets)
    result = prepare(fmt, src, **kwargs)
    write_manifest(out, result.utts)
    problems_path = _write_problems(out, result.problems)
    print(_summary(f"prepare {fmt}", result.utts, len(result.problems), problems_path, out))
    for line in _text_report(out, result, kwargs["alphabet"], digits):
        print(line)
    return result.utts


def _text_report(out: Path, result, alphabet: str, digits: str) -> list[str]:
    """Lines saying what normalisation changed, and `out`.text.json with every count."""
    texts = [u.text for u in result.utts]
    found = alphabet_of(texts)
    path = out.with_suffix(".text.json")
    changed = {
        ch: {"count": n, "becomes": _becomes(ch, alphabet, digits)}
        for ch, n in result.outside.items()
    }
    report = {"alphabet": alphabet, "digits": digits, "alphabet_found": found}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report | {"outside_alphabet": changed}, ensure_ascii=False, indent=1))
    os.replace(tmp, path)
    lines = []
    if changed:
        shown = ", ".join(
            f"{c!r}->{v['becomes']!r} x{v['count']:,}" for c, v in list(changed.items())[:6]
        )
        total = sum(result.outside.values())
        lines.append(
            f"text: {total:,} characters outside the alphabet folded, spelled or removed "
            f"({shown}{', ...' if len(changed) > 6 else ''}) — see {path}"
        )
    if alphabet == AUTO_ALPHABET:
        lines.append(
            f"alphabet (auto): {len(found)} characters {found!r}; train with tokenizer.alphabet=auto"
        )
        with_digits = sum(any(c.isdigit() for c in t) for t in texts)
        if with_digits and digits == "keep":
            lines.append(
                f"note: digits kept as written in {with_digits:,} transcripts (the model learns "
                "them as characters); spell them out in the corpus's language for a spoken-form "
                "model, or use --digits spell for English number words"
            )
    return lines


def _becomes(ch: str, alphabet: str, digits: str) -> str:
    """What normalisation makes of one character outside the alphabet, for the report."""
    if ch.isdigit() and digits == "spell":
        return "(number words)"
    return normalize_text(ch, alphabet, digits) or "(removed)"


def export_manifest(fmt: str, manifest: str | os.PathLike, out: str | os.PathLike) -> int:
    """`speechswarm manifest export`: write `manifest` in format `fmt` (nemo, lhotse) at `out`."""
    from speechswarm.data.corpora import EXPORTERS

    if fmt not in EXPORTERS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {sorted(EXPORTERS)}")
    utts = read_manifest(manifest)
    n = EXPORTERS[fmt](utts, out)
    print(f"manifest export {fmt}: {n:,} utts, {total_hours(utts):.2f} h audio -> {out}")
    return n


def synthesize_and_prepare(
    out_dir: Path,
    *,
    hours: float | None = None,
    seed: int = 0,
    workers: int | None = None,
    text_file: str | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Synthesise the built-in corpus (cached) and write out_dir/{train,dev,test}.jsonl."""
    from speechswarm.data.corpora import prepare
    from speechswarm.data.synth import DEFAULT_HOURS, synthesize_corpus

    result = synthesize_corpus(
        out_dir,
        hours=DEFAULT_HOURS if hours is None else hours,
        seed=seed,
        workers=workers or os.cpu_count() or 1,
        text_file=text_file,
        progress=progress,
    )
    manifests = {}
    for split in ("train", "dev", "test"):
        imported = prepare("librispeech", out_dir / split)
        if imported.problems:
            raise RuntimeError(
                f"synthesised audio in {out_dir / split} failed to import: {imported.problems[:3]}"
            )
        voices = _voices(out_dir)
        utts = [u.with_(extra={**u.extra, **voices.get(u.speaker, {})}) for u in imported.utts]
        manifests[split] = out_dir / f"{split}.jsonl"
        write_manifest(manifests[split], utts)
        print(_summary(f"synth {split}", utts, 0, None, manifests[split]))
    if result.failures:
        print(
            f"synth: {len(result.failures)} utterances failed to synthesise (see {out_dir / 'failures.json'})"
        )
    return manifests


def prepare_clients(
    spec: str, out_dir: Path, sample_rate: int = 16000, *, digits: str = "spell"
) -> dict[str, Path]:
    """Run a `load_clients_data()`-style hook and write one manifest per split into out_dir.

    A hook that cannot be loaded, raises or returns something else raises HookError (a user
    error: one line naming the hook and what went wrong)."""
    from speechswarm.data.clients import clients_from_hook, load_hook

    hook = load_hook(spec)
    splits = clients_from_hook(hook(), out_dir, sample_rate=sample_rate, digits=digits)
    paths = {}
    for split, utts in splits.items():
        paths[split] = out_dir / f"{split}.jsonl"
        write_manifest(paths[split], utts)
        clients = len({u.extra.get("client") for u in utts})
        print(_summary(f"clients {split} ({clients} clients)", utts, 0, None, paths[split]))
    return paths


def validate_manifest_cli(
    manifest: str,
    *,
    config: str | None = None,
    report_path: str | None = None,
    as_json: bool = False,
) -> int:
    """`speechswarm validate`: check every utterance; exit 1 if any problem was found."""
    from speechswarm.config import load_config
    from speechswarm.data.tokenizer import make_tokenizer
    from speechswarm.data.validate import validate_utterances
    from speechswarm.frames import time_reduction

    cfg = load_config(config or "tiny")
    tok = cfg.tokenizer
    report = validate_utterances(
        read_manifest(manifest),
        make_tokenizer(tok.kind, tok.alphabet, tok.path, manifest),
        sample_rate=cfg.data.sample_rate,
        frames_per_second=1000.0 / cfg.features.hop_ms,
        time_reduction=time_reduction(cfg.model.conv_strides, cfg.model.output_upsample),
        workers=os.cpu_count() or 1,
        progress=not as_json,
        base_dir=Path(manifest).parent.resolve(),  # as read_manifest resolves it
    )
    path = Path(report_path) if report_path else Path(manifest).with_suffix(".report.json")
    report.write(path)
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        print(f"validate {manifest}: {report.summary()} — report: {path}")
        for problem in report.problems[:10]:
            print(f"  {problem.reason:<20} {problem.id}: {problem.detail}")
        if len(report.problems) > 10:
            print(f"  ... {len(report.problems) - 10} more in {path}")
    return 1 if report.problems else 0


def _voices(out_dir: Path) -> dict[str, dict]:
    path = out_dir / "voices.json"
    if not path.is_file():
        return {}
    voices = json.loads(path.read_text())
    keep = ("engine", "voice", "identity", "split")
    return {spk: {k: v[k] for k in keep if k in v} for spk, v in voices.items()}


def _write_problems(out: Path, problems: list) -> Path | None:
    """`out`.problems.json listing (path, reason) with counts per reason code; a report
    left by an earlier run is removed when there are no problems now (re-runs stay honest)."""
    path = out.with_suffix(".problems.json")
    if not problems:
        path.unlink(missing_ok=True)
        return None
    rows = [{"path": str(p), "reason": r} for p, r in problems]
    counts = Counter(r.split(":", 1)[0] for _, r in problems)  # "unreadable_audio: ..." -> code
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"problems": rows, "counts": counts}, indent=1))
    os.replace(tmp, path)
    return path


def _summary(what: str, utts: list[Utterance], skipped: int, report: Path | None, out: Path) -> str:
    speakers = len({u.speaker for u in utts})
    line = f"{what}: {total_hours(utts):.2f} h audio, {len(utts):,} utts, {speakers:,} speakers"
    if skipped:
        line += f", {skipped:,} skipped — see {report}"
    return line + f" -> {out}"
