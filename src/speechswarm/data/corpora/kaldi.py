"""Kaldi data folders: `wav.scp`, `text`, optional `utt2spk` and `segments`.

    speechswarm prepare kaldi /data/kaldi/egs/mini_librispeech/s5/data/train --out train.jsonl

- `wav.scp`: `<recording-id> <audio path>`. A relative path is taken from the current
  folder, as Kaldi's own tools do (recipes run from the `s5` folder). Lines that are
  pipes (`<recording-id> sox a.wav -t wav - |`) or archive offsets (`foo.ark:123`) are not
  run: each utterance on such a recording is an `unsupported_audio` problem; write each
  recording to an audio file first (run the pipe's command into a .wav) and list the files.
- `text`: `<utterance-id> <transcript>`.
- `utt2spk`: `<utterance-id> <speaker>` (missing: speaker "").
- `segments`: `<utterance-id> <recording-id> <start s> <end s>` -> offset = start,
  duration = end - start (an end of -1: to the end of the file). Without `segments` the
  utterance id is the recording id.

Utterances keep Kaldi's ids and `text`'s order; a recording (or a segment) with no line in
`text` is a `missing_transcript` problem. Other files (utt2gender, spk2utt, feats.scp, ...)
are not read.
"""

from __future__ import annotations

import os
from pathlib import Path

from speechswarm.data.corpora import Candidate, ImportResult, build_result, require_dir
from speechswarm.data.text import DEFAULT_ALPHABET


def _table(path: Path, problems: list, fields: int | None = None) -> dict[str, str]:
    """`<key> <rest>` lines of a Kaldi table -> {key: rest}; bad or repeated lines go to
    `problems`. `fields`: the exact number of whitespace-separated fields after the key."""
    table: dict[str, str] = {}
    if not path.is_file():
        return table
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            key, _, rest = line.strip().partition(" ")
            rest = rest.strip()
            where = f"{path}:{lineno}"
            if fields is not None and len(rest.split()) != fields:
                problems.append((where, f"bad_line: expected {fields + 1} fields"))
            elif key in table:
                problems.append((where, f"bad_line: {key} repeats line of an earlier one"))
            else:
                table[key] = rest
    return table


def _audio_of(spec: str, where: str) -> tuple[Path | None, str]:
    """A wav.scp entry -> (path, "") or (None, reason) for entries that are not files."""
    if spec.endswith("|"):
        return None, f"unsupported_audio: {where} is a pipe ({spec[:60]!r}); write it to a file"
    path = Path(spec).expanduser()
    if ":" in spec and not path.exists() and spec.rsplit(":", 1)[1].isdigit():
        return None, f"unsupported_audio: {where} is an archive offset ({spec!r})"
    return path.resolve(), ""


def _segment(rest: str, where: str) -> tuple[str, float, float | None]:
    """`<recording> <start> <end>` -> (recording, offset, duration or None); ValueError."""
    recording, start, end = rest.split()
    offset, stop = float(start), float(end)
    if stop == -1:
        return recording, offset, None
    if stop <= offset or offset < 0:
        raise ValueError(f"{where}: segment {start}..{end} is empty or negative")
    return recording, offset, round(stop - offset, 6)


def prepare_kaldi(
    src: str | os.PathLike,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """Every utterance of `text` in the Kaldi data folder `src` (file order)."""
    root = require_dir(src, "kaldi", "a Kaldi data folder with wav.scp and text")
    for name in ("wav.scp", "text"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"kaldi: {root / name} is missing; a data folder needs it")
    problems: list[tuple[str, str]] = []
    wavs = _table(root / "wav.scp", problems)
    texts = _table(root / "text", problems)
    speakers = _table(root / "utt2spk", problems, fields=1)
    segments = _table(root / "segments", problems, fields=3)
    has_segments = (root / "segments").is_file()
    cands = []
    for utt_id, raw in texts.items():
        where = f"{root / 'text'}: {utt_id}"
        recording, offset, duration = utt_id, 0.0, None
        try:
            if has_segments:
                if utt_id not in segments:
                    problems.append((where, "missing_file: no line in segments"))
                    continue
                recording, offset, duration = _segment(segments[utt_id], where)
        except ValueError as e:
            problems.append((where, f"bad_line: {e}"))
            continue
        if recording not in wavs:
            problems.append((where, f"missing_file: recording {recording} not in wav.scp"))
            continue
        audio, reason = _audio_of(wavs[recording], f"wav.scp entry {recording}")
        if audio is None:
            problems.append((where, reason))
            continue
        cands.append(Candidate(utt_id, audio, raw, speakers.get(utt_id, ""), {}, offset, duration))
    untranscribed = (segments if has_segments else wavs).keys() - texts.keys()
    for utt_id in sorted(untranscribed):
        problems.append((f"{root}: {utt_id}", "missing_transcript: no line in text"))
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)
