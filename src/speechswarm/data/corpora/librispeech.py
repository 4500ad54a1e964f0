"""LibriSpeech (openslr.org/12) and anything laid out like it.

    speechswarm prepare librispeech /data/LibriSpeech/train-clean-100 --out train.jsonl

Layout: `<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt` holds lines
`<speaker>-<chapter>-<utt> TRANSCRIPT`; the audio beside it is `<utt-id>.flac` (`.wav`
accepted too). `src` may be the LibriSpeech root (all splits found), one split folder, or
any folder below; every `*.trans.txt` under it is read. Utterance ids are LibriSpeech's
own; `speaker` is the speaker number; `extra` holds `chapter` and `split` (the name of the
folder two levels above the chapter folder).
"""

from __future__ import annotations

import os
from pathlib import Path

from speechswarm.data.corpora import Candidate, ImportResult, build_result, require_dir
from speechswarm.data.text import DEFAULT_ALPHABET
from speechswarm.errors import InputNotFoundError

AUDIO_SUFFIXES = (".flac", ".wav")


def read_trans_file(trans: Path, extra: dict) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Candidates for one LibriSpeech-style `*.trans.txt`, plus layout problems.

    Audio files in the folder that no transcript line names are reported as
    `missing_transcript`, transcript lines without audio as `missing_file` (by the prober).
    """
    folder = trans.parent
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    named: set[str] = set()
    for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        utt_id = parts[0]
        raw = parts[1] if len(parts) > 1 else ""
        named.add(utt_id)
        if not raw:
            problems.append((f"{trans}:{lineno}", f"bad_line: no transcript after {utt_id}"))
            continue
        cands.append(
            Candidate(
                id=utt_id,
                audio=_find_audio(folder, utt_id),
                raw_text=raw,
                speaker=utt_id.split("-")[0],
                extra={**extra, "chapter": _chapter_of(utt_id)},
            )
        )
    prefix = trans.name.removesuffix(".trans.txt")
    for audio in sorted(folder.iterdir()):
        if (
            audio.suffix in AUDIO_SUFFIXES
            and audio.stem.startswith(prefix + "-")
            and audio.stem not in named
        ):
            problems.append((str(audio), f"missing_transcript: no line in {trans.name}"))
    return cands, problems


def _find_audio(folder: Path, utt_id: str) -> Path:
    for suffix in AUDIO_SUFFIXES:
        path = folder / f"{utt_id}{suffix}"
        if path.is_file():
            return path
    return folder / f"{utt_id}{AUDIO_SUFFIXES[0]}"  # missing: the prober reports it


def _chapter_of(utt_id: str) -> str:
    parts = utt_id.split("-")
    return parts[1] if len(parts) >= 3 else ""


def prepare_librispeech(
    src: str | os.PathLike,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
) -> ImportResult:
    """All utterances under `src` (a LibriSpeech root, split, speaker or chapter folder)."""
    root = require_dir(
        src, "librispeech", "a LibriSpeech root or split folder (e.g. LibriSpeech/dev-clean)"
    )
    trans_files = sorted(root.rglob("*.trans.txt"))
    if not trans_files:
        raise InputNotFoundError(
            f"librispeech: no *.trans.txt under {root}; expected "
            "<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt"
        )
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    for trans in trans_files:
        # <split>/<speaker>/<chapter>/x.trans.txt: the split is two folders above.
        split = trans.parents[2].name if len(trans.parents) > 2 else ""
        found, bad = read_trans_file(trans, {"split": split})
        cands += found
        problems += bad
    cands.sort(key=lambda c: c.id)
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)
