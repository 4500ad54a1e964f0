"""Decode a data set with a model and score it: corpus WER/CER, per speaker, worst utterances.

speechswarm eval --checkpoint runs/demo/checkpoints/best.pt --manifest data/synth/test.jsonl
speechswarm eval --checkpoint best.pt --manifest test.jsonl --decoder beam --lm lm.arpa
speechswarm tune-lm --checkpoint best.pt --manifest dev.jsonl --lm lm.arpa

`evaluate_checkpoint(..., utterances_out="utts.jsonl")` (and `evaluate_onnx`) also writes one
JSON line per utterance: its scores, reference, hypothesis and the hypothesis's words with
start, end (seconds) and confidence (`decode/timestamps.py`).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from speechswarm.build import autocast
from speechswarm.data.dataset import Batch, SpeechDataset, make_loader
from speechswarm.data.manifest import Utterance, read_manifest, spread_subset
from speechswarm.data.sampler import BucketBatchSampler
from speechswarm.data.tokenizer import Tokenizer
from speechswarm.decode import Decoder, DecoderOptions, GreedyDecoder
from speechswarm.decode.greedy import greedy_decode
from speechswarm.decode.timestamps import WordTiming, frame_seconds, timed_transcripts
from speechswarm.errors import UsageError
from speechswarm.metrics import edit_distance


@dataclass(frozen=True)
class UtteranceScore:
    id: str
    speaker: str
    ref: str
    hyp: str
    word_edits: int
    words: int
    char_edits: int
    chars: int

    @property
    def wer(self) -> float:
        return self.word_edits / max(self.words, 1)

    @property
    def cer(self) -> float:
        return self.char_edits / max(self.chars, 1)


@dataclass
class EvalResult:
    """Corpus-level scores: total edits over total reference words (characters)."""

    scores: list[UtteranceScore] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    audio_seconds: float = 0.0
    timings: dict[str, list[WordTiming]] = field(default_factory=dict)  # id -> hyp's words

    @property
    def utterances(self) -> int:
        return len(self.scores)

    @property
    def wer(self) -> float:
        return sum(s.word_edits for s in self.scores) / max(sum(s.words for s in self.scores), 1)

    @property
    def cer(self) -> float:
        return sum(s.char_edits for s in self.scores) / max(sum(s.chars for s in self.scores), 1)

    def per_speaker(self) -> list[dict]:
        groups: dict[str, list[UtteranceScore]] = defaultdict(list)
        for s in self.scores:
            groups[s.speaker].append(s)
        rows = []
        for speaker, items in sorted(groups.items()):
            sub = EvalResult(items)
            rows.append(
                {"speaker": speaker, "utterances": len(items), "wer": sub.wer, "cer": sub.cer}
            )
        return rows

    def worst(self, k: int = 5) -> list[UtteranceScore]:
        return sorted(self.scores, key=lambda s: (s.cer, s.wer), reverse=True)[:k]

    def write_utterances(self, path: str | os.PathLike) -> None:
        """One JSON line per utterance, in decoding order: id, speaker, ref, hyp, edit counts,
        wer, cer and, when timed, `timings`: [{word, start, end, confidence}] of the hyp."""
        with open(path, "w", encoding="utf-8") as f:
            for s in self.scores:
                row = {**asdict(s), "wer": s.wer, "cer": s.cer}
                if s.id in self.timings:
                    row["timings"] = [w.to_json() for w in self.timings[s.id]]
                f.write(json.dumps(row) + "\n")

    def to_json(self, worst: int = 10) -> dict:
        return {
            "wer": self.wer,
            "cer": self.cer,
            "utterances": self.utterances,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
            "audio_seconds": round(self.audio_seconds, 3),
            "per_speaker": self.per_speaker(),
            "worst": [asdict(s) for s in self.worst(worst)],
        }


def score_utterance(utt_id: str, speaker: str, ref: str, hyp: str) -> UtteranceScore:
    ref_words, hyp_words = ref.split(), hyp.split()
    ref_chars, hyp_chars = " ".join(ref_words), " ".join(hyp_words)
    return UtteranceScore(
        id=utt_id,
        speaker=speaker,
        ref=ref_chars,
        hyp=hyp_chars,
        word_edits=edit_distance(ref_words, hyp_words),
        words=len(ref_words),
        char_edits=edit_distance(ref_chars, hyp_chars),
        chars=len(ref_chars),
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    extractor: torch.nn.Module,
    batches: Iterable[Batch],
    tokenizer: Tokenizer,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    speakers: dict[str, str] | None = None,
    references: dict[str, str] | None = None,
    decoder: Decoder | None = None,
    timed: bool = False,
) -> EvalResult:
    """Decode every batch (greedy unless `decoder` is given) and score it against its references.

    `references` maps utterance id to its reference text (the manifest's text; decoding the
    token ids instead would hide unknown-token losses of a subword tokenizer). `timed`: also
    keep each hypothesis's word timings in `result.timings`.
    """
    was_training = model.training
    model.eval()
    result = EvalResult()
    start = time.perf_counter()
    for batch in batches:
        result.skipped += batch.skipped
        if not batch.ids:
            continue
        batch = batch.to(device)
        feats, feat_lens = extractor(batch.waves, batch.wave_lens)  # (N, T, F), (N,)
        with autocast(device, amp_dtype):
            log_probs, out_lens = model(feats, feat_lens)  # (N, T', V) float32
        if timed:
            timed_hyps = _timed(model, extractor, batch, tokenizer, decoder, log_probs, out_lens)
            hyps = [t.text for t in timed_hyps]
            result.timings.update((u, t.words) for u, t in zip(batch.ids, timed_hyps, strict=True))
        elif decoder is None:
            hyps = [tokenizer.decode(x) for x in greedy_decode(log_probs.float(), out_lens)]
        else:
            hyps = [tokenizer.decode(x) for x in decoder.decode(log_probs.float(), out_lens)]
        for i, utt_id in enumerate(batch.ids):
            ref = (
                references[utt_id]
                if references
                else tokenizer.decode(batch.tokens[i, : batch.token_lens[i]].tolist())
            )
            speaker = (speakers or {}).get(utt_id, "")
            result.scores.append(score_utterance(utt_id, speaker, ref, hyps[i]))
        result.audio_seconds += float(batch.wave_lens.sum()) / extractor.sample_rate
    result.seconds = time.perf_counter() - start
    model.train(was_training)
    return result


def _timed(model, extractor, batch: Batch, tokenizer, decoder, log_probs, out_lens):
    """The batch's hypotheses with word timings (`timestamps.timed_transcripts`)."""
    durations = (batch.wave_lens.float() / extractor.sample_rate).tolist()
    seconds_per_frame = frame_seconds(extractor.hop, extractor.sample_rate, model.time_reduction)
    return timed_transcripts(
        decoder or GreedyDecoder(),
        tokenizer,
        log_probs.float().cpu().numpy(),
        out_lens.cpu().numpy(),
        seconds_per_frame,
        durations,
    )


def eval_batches(
    utts: list[Utterance],
    tokenizer: Tokenizer,
    sample_rate: int,
    *,
    max_batch_seconds: float = 160.0,
    max_batch_size: int = 64,
    num_workers: int = 2,
):
    """Length-sorted batches over `utts`: no shuffling, no augmentation."""
    dataset = SpeechDataset(utts, tokenizer, sample_rate)
    sampler = BucketBatchSampler(
        [u.duration for u in utts],
        max_batch_seconds,
        max_batch_size=max_batch_size,
        shuffle=False,
        sortagrad=True,
        seed=0,
    )
    return make_loader(dataset, sampler, num_workers=num_workers)


def evaluate_checkpoint(
    checkpoint: str,
    manifest: str,
    *,
    device: str = "auto",
    precision: str = "auto",
    batch_seconds: float = 160.0,
    decoder: DecoderOptions | None = None,
    utterances_out: str | os.PathLike | None = None,
) -> EvalResult:
    """Score a checkpoint on every utterance of a manifest (unreadable audio is counted, not
    fatal); `utterances_out`: also write one JSON line per utterance with word timings."""
    from speechswarm.inference import load

    asr = load(checkpoint, device=device, precision=precision, decoder=decoder)
    utts = read_manifest(manifest)
    batches = eval_batches(utts, asr.tokenizer, asr.sample_rate, max_batch_seconds=batch_seconds)
    result = evaluate(
        asr.model,
        asr.extractor,
        batches,
        asr.tokenizer,
        device=asr.device,
        amp_dtype=asr.amp_dtype,
        speakers={u.id: u.speaker for u in utts},
        references={u.id: u.text for u in utts},
        decoder=asr.decoder,
        timed=utterances_out is not None,
    )
    if utterances_out is not None:
        result.write_utterances(utterances_out)
    return result


def evaluate_onnx(
    onnx_path: str,
    manifest: str,
    *,
    decoder: DecoderOptions | None = None,
    batch_size: int = 16,
    threads: int = 0,
    utterances_out: str | os.PathLike | None = None,
) -> EvalResult:
    """Score an exported ONNX model (onnxruntime) on a manifest, batches of similar length;
    unreadable audio is counted as skipped, as in `evaluate_checkpoint`, and `utterances_out`
    is written the same way."""
    from speechswarm.data.audio import AudioError, load_audio
    from speechswarm.onnx_runtime import OnnxRecognizer

    asr = OnnxRecognizer(onnx_path, decoder=decoder, threads=threads)
    utts = sorted(read_manifest(manifest), key=lambda u: u.duration)
    result = EvalResult()
    start = time.perf_counter()
    for first in range(0, len(utts), batch_size):
        chunk, waves = [], []
        for u in utts[first : first + batch_size]:
            try:
                waves.append(load_audio(u.audio, asr.sample_rate, u.offset, u.duration))
                chunk.append(u)
            except AudioError:
                result.skipped += 1
        if not chunk:
            continue
        for u, timed in zip(chunk, asr.recognize_batch(waves), strict=True):
            result.scores.append(score_utterance(u.id, u.speaker, u.text, timed.text))
            result.timings[u.id] = timed.words
        result.audio_seconds += sum(len(w) for w in waves) / asr.sample_rate
    result.seconds = time.perf_counter() - start
    if utterances_out is not None:
        result.write_utterances(utterances_out)
    return result


def format_report(result: EvalResult, worst: int = 5) -> str:
    """The eval report for people: totals, a per-speaker table, the worst utterances."""
    lines = [
        f"WER {result.wer:.2%}  CER {result.cer:.2%}  on {result.utterances:,} utterances "
        f"({result.audio_seconds / 60:.1f} min of audio, {result.skipped} skipped, {result.seconds:.1f} s)",
        "",
        f"{'speaker':<24} {'utts':>6} {'WER':>8} {'CER':>8}",
    ]
    for row in result.per_speaker():
        lines.append(
            f"{row['speaker'][:24]:<24} {row['utterances']:>6} {row['wer']:>8.2%} {row['cer']:>8.2%}"
        )
    if worst:
        lines += ["", f"worst {min(worst, result.utterances)} utterances (by CER):"]
        for s in result.worst(worst):
            lines += [f"  {s.id}  CER {s.cer:.0%}", f"    ref: {s.ref}", f"    hyp: {s.hyp}"]
    return "\n".join(lines)


# ---- LM weight tuning ------------------------------------------------------------------------


@dataclass(frozen=True)
class TunePoint:
    alpha: float | None  # None: greedy, no LM (the baseline)
    beta: float | None
    wer: float
    cer: float


@torch.no_grad()
def collect_log_probs(
    model: torch.nn.Module,
    extractor: torch.nn.Module,
    batches: Iterable[Batch],
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> list[tuple[str, np.ndarray]]:
    """(utterance id, log_probs (T', V) float32 numpy) for every utterance: the model runs
    once, and every decoder setting reuses its outputs."""
    model.eval()
    out = []
    for batch in batches:
        if not batch.ids:
            continue
        batch = batch.to(device)
        feats, feat_lens = extractor(batch.waves, batch.wave_lens)  # (N, T, F), (N,)
        with autocast(device, amp_dtype):
            log_probs, out_lens = model(feats, feat_lens)  # (N, T', V)
        log_probs = log_probs.float().cpu().numpy()
        for i, n in enumerate(out_lens.tolist()):
            out.append((batch.ids[i], log_probs[i, :n]))
    return out


def score_decoder(
    outputs: Sequence[tuple[str, np.ndarray]],
    decoder: Decoder,
    tokenizer: Tokenizer,
    references: dict[str, str],
    speakers: dict[str, str] | None = None,
) -> EvalResult:
    """Decode collected outputs one utterance at a time and score them."""
    result = EvalResult()
    start = time.perf_counter()
    for utt_id, log_probs in outputs:
        ids = decoder.decode(log_probs[None], np.array([len(log_probs)]))[0]
        speaker = (speakers or {}).get(utt_id, "")
        result.scores.append(
            score_utterance(utt_id, speaker, references[utt_id], tokenizer.decode(ids))
        )
    result.seconds = time.perf_counter() - start
    return result


def tune_lm(
    checkpoint: str,
    manifest: str,
    lm: str,
    *,
    alphas: Sequence[float],
    betas: Sequence[float],
    beam_size: int = 64,
    lexicon: str | None = None,
    device: str = "auto",
    batch_seconds: float = 160.0,
    max_utterances: int = 0,
    progress=None,
    by: str = "wer",
) -> list[TunePoint]:
    """Grid-search the LM weight alpha and word bonus beta on a (dev) manifest by WER (`by`
    "cer": by CER, the metric a character model's target may be).

    Returns the greedy baseline first, then every grid point, best (lowest `by`, then the
    other) first. `max_utterances` > 0 tunes on that many utterances spread over the manifest.
    `progress(done, total, point)` is called after each point.
    """
    from speechswarm.decode import GreedyDecoder
    from speechswarm.decode.beam import BeamDecoder
    from speechswarm.inference import load

    _check_metric(by)
    asr = load(checkpoint, device=device)
    utts = read_manifest(manifest)
    utts = spread_subset(utts, max_utterances)
    batches = eval_batches(utts, asr.tokenizer, asr.sample_rate, max_batch_seconds=batch_seconds)
    outputs = collect_log_probs(
        asr.model, asr.extractor, batches, device=asr.device, amp_dtype=asr.amp_dtype
    )
    refs = {u.id: u.text for u in utts}
    base = score_decoder(outputs, GreedyDecoder(), asr.tokenizer, refs)
    beam = BeamDecoder(
        asr.tokenizer.tokens,
        DecoderOptions("beam", lm=lm, lexicon=lexicon, beam_size=beam_size),
    )
    grid = list(itertools.product(alphas, betas))
    points = []
    for done, (alpha, beta) in enumerate(grid, start=1):
        r = score_decoder(outputs, beam.with_weights(alpha, beta), asr.tokenizer, refs)
        points.append(TunePoint(alpha, beta, r.wer, r.cer))
        if progress:
            progress(done, len(grid), points[-1])
    return [TunePoint(None, None, base.wer, base.cer), *best_first(points, by)]


def _check_metric(by: str) -> None:
    if by not in ("wer", "cer"):
        raise UsageError(f"tune-lm: choose by wer or cer, got {by!r}")


def best_first(points: Sequence[TunePoint], by: str = "wer") -> list[TunePoint]:
    """Grid points by `by` ("wer" or "cer"), ties broken by the other metric."""
    _check_metric(by)
    return sorted(points, key=lambda p: (p.wer, p.cer) if by == "wer" else (p.cer, p.wer))
