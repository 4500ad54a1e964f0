"""The main job on the built-in corpus: synthesise, train, test on unseen voices, transcribe.

    make demo          (or: speechswarm demo --out runs/demo --minutes 15)

Test voices and test sentences never occur in training, so the WER/CER printed at the end
measure generalisation to new speakers and new text, not memorisation. The test split is
scored twice: greedy CTC decoding (the acoustic model alone) and beam search with a word
3-gram LM estimated from the built-in text minus every dev and test sentence, with common
English words beyond that text (`decode.word_prior`), its weights tuned on dev utterances by
CER.
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
from speechswarm.decode import DecoderOptions
from speechswarm.errors import UnavailableError
from speechswarm.evaluate import EvalResult, evaluate_checkpoint, format_report, tune_lm
from speechswarm.train.loop import train

DEMO_PRESET = "tiny"
DEMO_MINUTES = 15.0
LM_ORDER = 3
# Words beyond the built-in text (decode/word_prior.py): 4.5 % of the test split's words are
# not in the text's 16,000. With the prior, beam 128 and the weights chosen by dev CER, dev
# CER with the LM fell from 31.0 % (no prior, beam 32, chosen by WER) to 28.9 %
# (bench/RESULTS.md, "Decoding with the LM").
LM_PRIOR = "wordfreq:50000"
# The LM weight grid searched on dev, by CER (the demo's target): alpha 1.5 won at beam 128,
# 2.5 was 1.7 points behind; beta 0 was best for CER at every alpha (-1 only helps WER).
LM_ALPHAS = (1.0, 1.5, 2.0)
LM_BETAS = (0.0,)
LM_TUNE_UTTERANCES = 200
LM_BEAM_SIZE = 128


def run_demo(
    out_dir: Path,
    data_dir: Path,
    minutes: float | None = None,
    extra_overrides: tuple[str, ...] = (),
    hours: float | None = None,
) -> int:
    started = time.perf_counter()
    print(f"[1/5] built-in corpus in {data_dir} (cached after the first run)")
    manifests = synthesize_and_prepare(data_dir, hours=hours)
    budget = DEMO_MINUTES if minutes is None else minutes
    print(f"[2/5] training the '{DEMO_PRESET}' preset for up to {budget:g} min -> {out_dir}")
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
    # The model the demo tests is the final one: the one-cycle schedule ends with the budget,
    # so the last weights are the annealed ones. best.pt (by CER on a 200-utterance dev
    # subset) is kept beside it, but that subset is too small to rank snapshots a point
    # apart (its noise is about 1 CER point on test).
    final = result.run_dir / "checkpoints" / "last.pt"
    if result.best_checkpoint is None or not final.is_file():
        print("demo: training produced no checkpoint; see the log above")
        return 1
    device = cfg.train.device
    print(f"[3/5] word {LM_ORDER}-gram LM from the built-in text minus dev and test sentences")
    lm = build_demo_lm(out_dir / "lm.arpa", manifests)
    decoder = tune_demo_lm(final, manifests["dev"], lm, device)
    print(f"[4/5] evaluating {final} on the test split (voices and sentences unseen in training)")
    greedy = evaluate_checkpoint(str(final), str(manifests["test"]), device=device)
    test = evaluate_checkpoint(str(final), str(manifests["test"]), device=device, decoder=decoder)
    print(f"greedy decoding (the acoustic model alone): WER {greedy.wer:.2%}, CER {greedy.cer:.2%}")
    print(f"beam search + LM (alpha {decoder.alpha:g}, beta {decoder.beta:g}):")
    print(format_report(test, worst=3))
    engine_of, person_of = engines_and_persons(manifests["test"])
    by_engine, greedy_by_engine = breakdown(test, engine_of), breakdown(greedy, engine_of)
    by_person, greedy_by_person = breakdown(test, person_of), breakdown(greedy, person_of)
    for title, rows, greedy_rows in (
        ("TTS engine", by_engine, greedy_by_engine),
        ("person", by_person, greedy_by_person),
    ):
        print(f"\nby {title} (all test persons unseen; CER greedy -> with LM):")
        for name, row in rows.items():
            print(
                f"  {name:<30} {row['utterances']:>5} utts  WER {row['wer']:7.2%}  "
                f"CER {greedy_rows[name]['cer']:7.2%} -> {row['cer']:7.2%}"
            )

    print("\n[5/5] transcribing three test files (beam search + LM):")
    _transcribe_examples(final, manifests["test"], decoder)
    summary = {
        "test_wer": test.wer,
        "test_cer": test.cer,
        "test_utterances": test.utterances,
        "greedy_wer": greedy.wer,
        "greedy_cer": greedy.cer,
        "lm": {
            "path": str(lm),
            "order": LM_ORDER,
            "alpha": decoder.alpha,
            "beta": decoder.beta,
            "beam_size": decoder.beam_size,
        },
        "by_engine": by_engine,
        "greedy_by_engine": greedy_by_engine,
        "by_person": by_person,
        "greedy_by_person": greedy_by_person,
        "train_minutes": round(result.state.train_seconds / 60, 2),
        "steps": result.state.step,
        "stop_reason": result.stop_reason,
        "checkpoint": str(final),
        "best_checkpoint": str(result.best_checkpoint),
        "plots": sorted(str(p) for p in (out_dir / "plots").glob("*.png")),
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
    }
    (out_dir / "demo_results.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\ndemo: {test.utterances} test utterances of unseen voices: WER {test.wer:.1%}, "
        f"CER {test.cer:.1%} with the LM (greedy: WER {greedy.wer:.1%}, CER {greedy.cer:.1%}); "
        f"{summary['train_minutes']:.1f} min of training, {summary['wall_minutes']:.1f} min in all"
    )
    print(f"  model:           {final} (final weights; by dev CER: {result.best_checkpoint})")
    print(f"  language model:  {lm} (--decoder beam --lm {lm} --alpha {decoder.alpha:g} "
          f"--beta {decoder.beta:g} --beam-size {decoder.beam_size})")  # fmt: skip
    print(f"  plots:           {out_dir / 'plots'}  (loss, dev WER/CER, learning rate)")
    print(f"  run summary:     {out_dir / 'summary.md'}; results: {out_dir / 'demo_results.json'}")
    return 0


def build_demo_lm(path: Path, manifests: dict[str, Path]) -> Path:
    """An order-LM_ORDER word LM from the built-in sentences that are not dev or test
    transcripts (text only: the LM never sees a held-out sentence)."""
    from speechswarm.data.sentences import load_sentences
    from speechswarm.decode.lm import build_lm, lm_sentences
    from speechswarm.decode.word_prior import load_prior

    held_out = [u.text for split in ("dev", "test") for u in read_manifest(manifests[split])]
    sentences, dropped = lm_sentences(load_sentences(), held_out)
    try:
        prior = load_prior(LM_PRIOR)
    except UnavailableError as e:  # the LM is made without it; one line says so
        print(f"  no word prior: {e}")
        prior = None
    build_lm(sentences, LM_ORDER, path, prior and prior.weights)
    words = f", a prior of {len(prior.weights):,} words ({LM_PRIOR})" if prior else ""
    print(f"  {len(sentences):,} sentences ({dropped:,} held-out ones left out){words} -> {path}")
    return path


def tune_demo_lm(checkpoint: Path, dev: Path, lm: Path, device: str) -> DecoderOptions:
    """Beam search options with the LM weights that scored best on dev."""
    points = tune_lm(str(checkpoint), str(dev), str(lm), alphas=LM_ALPHAS, betas=LM_BETAS,
                     beam_size=LM_BEAM_SIZE, device=device,
                     max_utterances=LM_TUNE_UTTERANCES, by="cer")  # fmt: skip
    base, best = points[0], points[1]
    n = min(LM_TUNE_UTTERANCES, len(read_manifest(dev)))
    print(
        f"  tuned on {n} dev utterances by CER: alpha {best.alpha:g}, beta {best.beta:g}"
        f" (dev WER {base.wer:.1%} -> {best.wer:.1%}, CER {base.cer:.1%} -> {best.cer:.1%})"
    )
    return DecoderOptions("beam", lm=lm, beam_size=LM_BEAM_SIZE, alpha=best.alpha, beta=best.beta)


def engines_and_persons(manifest: Path) -> tuple[dict[str, str], dict[str, str]]:
    """utterance id -> TTS engine, and -> person (the corpus's voices.json `identity`, e.g.
    "kokoro:gongitsune100" or "rms"; without it, "engine:voice")."""
    voices_path = Path(manifest).parent / "voices.json"
    voices = json.loads(voices_path.read_text()) if voices_path.is_file() else {}
    engine_of, person_of = {}, {}
    for u in read_manifest(manifest):
        engine = u.extra.get("engine", "?")
        engine_of[u.id] = engine
        person_of[u.id] = voices.get(u.speaker, {}).get("identity") or (
            f"{engine}:{u.extra.get('voice', '?')}"
        )
    return engine_of, person_of


def breakdown(result: EvalResult, group_of: dict[str, str]) -> dict[str, dict]:
    """WER/CER of `result`'s utterances per group (`group_of`: utterance id -> group)."""
    groups = defaultdict(list)
    for score in result.scores:
        groups[group_of.get(score.id, "?")].append(score)
    rows = {}
    for name, scores in sorted(groups.items()):
        sub = EvalResult(scores)
        rows[name] = {"utterances": sub.utterances, "wer": sub.wer, "cer": sub.cer}
    return rows


def _transcribe_examples(checkpoint: Path, manifest: Path, decoder: DecoderOptions) -> None:
    from speechswarm.inference import load

    asr = load(checkpoint, decoder=decoder)
    utts = read_manifest(manifest)
    by_engine = {}
    for u in utts:  # one example per engine where possible
        by_engine.setdefault(u.extra.get("engine", "?"), u)
    examples = list(by_engine.values())[:3] or utts[:3]
    for u in examples:
        print(f"  {os.path.relpath(u.audio)}  ({u.extra.get('engine', '?')} voice {u.speaker})")
        print(f"    said:  {u.text}")
        print(f"    heard: {asr.transcribe(u.audio)}")
