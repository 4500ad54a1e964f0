"""The main job on the built-in corpus: synthesise, train, test on unseen voices, transcribe.

    make demo          (or: speechswarm demo --out runs/demo --minutes 15)

Test voices and test sentences never occur in training, so the WER/CER printed at the end
measure generalisation to new speakers and new text, not memorisation.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

from speechswarm.config import load_config
from speechswarm.data.manifest import read_manifest
from speechswarm.data.prepare import synthesize_and_prepare
from speechswarm.evaluate import EvalResult, evaluate_checkpoint, format_report
from speechswarm.train.loop import train

DEMO_PRESET = "tiny"
DEMO_MINUTES = 15.0


def run_demo(
    out_dir: Path,
    data_dir: Path,
    minutes: float | None = None,
    extra_overrides: tuple[str, ...] = (),
) -> int:
    started = time.perf_counter()
    print(f"[1/4] built-in corpus in {data_dir} (cached after the first run)")
    manifests = synthesize_and_prepare(data_dir)
    budget = DEMO_MINUTES if minutes is None else minutes
    print(f"[2/4] training the '{DEMO_PRESET}' preset for up to {budget:g} min -> {out_dir}")
    cfg = load_config(
        DEMO_PRESET,
        [
            f"train.out_dir={out_dir}",
            f"data.train_manifest={manifests['train']}",
            f"data.dev_manifest={manifests['dev']}",
            f"data.test_manifest={manifests['test']}",
            f"train.time_budget_min={budget}",
            *extra_overrides,
        ],
    )
    result = train(cfg)
    best = result.best_checkpoint
    if best is None:
        print("demo: training produced no checkpoint; see the log above")
        return 1
    print(f"[3/4] evaluating {best} on the test split (voices and sentences unseen in training)")
    test = evaluate_checkpoint(str(best), str(manifests["test"]), device=cfg.train.device)
    print(format_report(test, worst=3))
    by_engine = engine_breakdown(test, manifests["test"])
    print("\nby TTS engine (all test voices unseen):")
    for engine, row in by_engine.items():
        print(
            f"  {engine:<10} {row['utterances']:>5} utts  WER {row['wer']:7.2%}  CER {row['cer']:7.2%}"
        )

    print("\n[4/4] transcribing three test files with `speechswarm transcribe`:")
    _transcribe_examples(best, manifests["test"])
    summary = {
        "test_wer": test.wer,
        "test_cer": test.cer,
        "test_utterances": test.utterances,
        "by_engine": by_engine,
        "train_minutes": round(result.state.train_seconds / 60, 2),
        "steps": result.state.step,
        "stop_reason": result.stop_reason,
        "best_checkpoint": str(best),
        "plots": sorted(str(p) for p in (out_dir / "plots").glob("*.png")),
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
    }
    (out_dir / "demo_results.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\ndemo: test WER {test.wer:.1%}, CER {test.cer:.1%} on {test.utterances} utterances of unseen voices; "
        f"{summary['train_minutes']:.1f} min of training, {summary['wall_minutes']:.1f} min in all"
    )
    print(f"  best checkpoint: {best}")
    print(f"  plots:           {out_dir / 'plots'}  (loss, dev WER/CER, learning rate)")
    print(f"  run summary:     {out_dir / 'summary.md'}; results: {out_dir / 'demo_results.json'}")
    return 0


def engine_breakdown(result: EvalResult, manifest: Path) -> dict[str, dict]:
    """WER/CER per TTS engine of the test voices (from the manifest's `engine` field)."""
    engine_of = {u.id: u.extra.get("engine", "?") for u in read_manifest(manifest)}
    groups = defaultdict(list)
    for score in result.scores:
        groups[engine_of.get(score.id, "?")].append(score)
    rows = {}
    for engine, scores in sorted(groups.items()):
        sub = EvalResult(scores)
        rows[engine] = {"utterances": sub.utterances, "wer": sub.wer, "cer": sub.cer}
    return rows


def _transcribe_examples(checkpoint: Path, manifest: Path) -> None:
    from speechswarm.inference import load

    asr = load(checkpoint)
    utts = read_manifest(manifest)
    by_engine = {}
    for u in utts:  # one example per engine where possible
        by_engine.setdefault(u.extra.get("engine", "?"), u)
    examples = list(by_engine.values())[:3] or utts[:3]
    for u in examples:
        print(f"  {os.path.relpath(u.audio)}  ({u.extra.get('engine', '?')} voice {u.speaker})")
        print(f"    said:  {u.text}")
        print(f"    heard: {asr.transcribe(u.audio)}")
