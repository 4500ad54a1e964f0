"""Word timestamps and confidences from a CTC frame path: pure numpy, no torch.

    path = decoder.best_paths(log_probs, out_lens)[0]          # (T',) token id per frame
    words = word_timings(path, log_probs[0], tokens, frame_seconds(160, 16000, 2))
    # [WordTiming(word="hello", start=0.12, end=0.46, confidence=0.91), ...]

A frame path is the token (or blank) the decoder chose at each output frame: the argmax for
greedy decoding, the winning hypothesis's alignment for beam search. Its non-blank runs are
the emitted tokens (`token_runs`); the word separator token " " (character vocabularies) or a
leading "▁" (SentencePiece pieces) splits them into words (`word_spans`).

Times: output frame t starts at t * frame_seconds, where frame_seconds = feature hop x the conv
stack's time reduction (`frame_seconds`). A word starts at the first frame of its first token
and ends after the last frame of its last token, clipped to the audio's duration. CTC emits
each token as a short spike, usually one or two frames, often a little late, and blanks fill
the rest: the times locate a word to within a few frames (tens of ms), they do not mark where
its sound begins and ends.

Confidence: each token's posterior is its highest probability over its run of frames; a word's
confidence is the geometric mean of its tokens' posteriors (one unsure letter pulls it down).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Pieces that `Tokenizer.decode` drops: they belong to no word.
SKIPPED_PIECES = frozenset({"<unk>", "<s>", "</s>"})
WORD_START = "\u2581"  # SentencePiece's "▁": a piece that begins a word


@dataclass(frozen=True)
class WordTiming:
    """One word of a transcript: `start`, `end` in seconds from the start of the audio;
    `confidence` in (0, 1]."""

    word: str
    start: float
    end: float
    confidence: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"], d["end"] = round(self.start, 3), round(self.end, 3)
        d["confidence"] = round(self.confidence, 4)
        return d


@dataclass(frozen=True)
class TimedTranscript:
    """A transcript with its words' timings; `duration` is the audio's length in seconds."""

    text: str
    words: list[WordTiming]
    duration: float

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "words": [w.to_json() for w in self.words],
            "duration": round(self.duration, 3),
        }


def frame_seconds(hop_samples: int, sample_rate: int, time_reduction: int) -> float:
    """Seconds per output frame: feature hop (samples) / sample rate x the conv time strides."""
    if hop_samples < 1 or sample_rate < 1 or time_reduction < 1:
        raise ValueError(
            f"frame_seconds: hop {hop_samples}, rate {sample_rate}, reduction {time_reduction}"
        )
    return hop_samples * time_reduction / sample_rate


def token_runs(path: Sequence[int], blank: int = 0) -> list[tuple[int, int, int]]:
    """(token, first frame, end frame exclusive) of each non-blank run of a frame path:
    [0, 3, 3, 0, 3, 5] -> [(3, 1, 3), (3, 4, 5), (5, 5, 6)]; the CTC collapse of the path is
    the runs' tokens."""
    runs: list[tuple[int, int, int]] = []
    prev = blank
    for t, tok in enumerate(int(x) for x in path):
        if tok != blank and tok == prev:
            token, first, _ = runs[-1]
            runs[-1] = (token, first, t + 1)
        elif tok != blank:
            runs.append((tok, t, t + 1))
        prev = tok
    return runs


def word_spans(run_tokens: Sequence[int], tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Split runs into words: (word text, indices into `run_tokens`) per word. A token " "
    separates words and belongs to none; a token starting with "▁" starts a word (its "▁"
    dropped); `SKIPPED_PIECES` belong to none."""
    words: list[tuple[str, list[int]]] = []
    text, members = "", []
    for i, tok in enumerate(run_tokens):
        piece = tokens[tok]
        if piece in SKIPPED_PIECES:
            continue
        starts_word = piece == " " or piece.startswith(WORD_START)
        if starts_word and members:
            words.append((text, members))
            text, members = "", []
        piece = piece.replace(WORD_START, "").strip()
        if piece:
            text += piece
            members.append(i)
    if members:
        words.append((text, members))
    return words


def word_timings(
    path: Sequence[int],
    log_probs: Any,
    tokens: Sequence[str],
    seconds_per_frame: float,
    duration: float | None = None,
    blank: int = 0,
) -> list[WordTiming]:
    """Words of the frame path `path` ((T',) ids) with times and confidences; `log_probs`
    (T', V) are the model's log-posteriors for the same frames, `tokens[0]` the blank.
    `duration` (seconds), if given, clips the ends."""
    scores = np.asarray(log_probs, dtype=np.float64)
    path = np.asarray(path, dtype=np.int64)
    path = np.where((path >= 0) & (path < len(tokens)), path, blank)  # padding ids: no token
    runs = token_runs(path, blank)
    out = []
    for word, members in word_spans([r[0] for r in runs], tokens):
        first, last = runs[members[0]], runs[members[-1]]
        start, end = first[1] * seconds_per_frame, last[2] * seconds_per_frame
        if duration is not None:
            start, end = min(start, duration), min(end, duration)
        peaks = [float(scores[a:b, tok].max()) for tok, a, b in (runs[m] for m in members)]
        confidence = math.exp(sum(peaks) / len(peaks))  # geometric mean of token posteriors
        out.append(WordTiming(word, start, end, min(confidence, 1.0)))
    return out


def timed_transcripts(
    decoder: Any,
    tokenizer: Any,
    log_probs: Any,
    out_lens: Any,
    seconds_per_frame: float,
    durations: Sequence[float],
) -> list[TimedTranscript]:
    """Decode a batch (log_probs (N, T', V) numpy, out_lens (N,)) with `decoder`'s frame
    paths (`best_paths`) into texts with word timings; `tokenizer` turns ids into text."""
    scores = np.asarray(log_probs)
    out = []
    for i, path in enumerate(decoder.best_paths(scores, out_lens)):
        path = np.where((path >= 0) & (path < len(tokenizer.tokens)), path, tokenizer.blank)
        ids = [tok for tok, _, _ in token_runs(path, tokenizer.blank)]
        words = word_timings(
            path, scores[i, : len(path)], tokenizer.tokens, seconds_per_frame, durations[i]
        )
        out.append(TimedTranscript(tokenizer.decode(ids), words, float(durations[i])))
    return out
