"""UserLibri (Breiner et al., Interspeech 2022): LibriSpeech test sets regrouped by user.

    speechswarm prepare userlibri /data/UserLibri --out userlibri.jsonl

A *user* is one speaker reading one book; each user is one federated/peer-to-peer client.
Layout (Kaggle google/userlibri):

    UserLibri/audio_data/{test-clean,test-other}/<user folder>/  FLAC + LibriSpeech-style
        *.trans.txt (`<spk>-<chapter>-<utt> TRANSCRIPT` lines)
    UserLibri/audio_data/metadata.tsv   (User ID, Split, Num Audio Examples, ...)
    UserLibri/lm_data/<book id>_lm_train.txt   per-book text for personalised LMs
    UserLibri/lm_data/metadata.tsv      (Book ID, Num Text Examples, Average Words Per Example)

User folders are named `speaker-<spk>-book-<book>` in the release; `speaker-<spk>_book-<book>`
and plain `<spk>-<book>` / `<spk>_<book>` are accepted too (`USER_FOLDER` below). A folder
name that fits none of these becomes the client as is, with the speaker taken from the
utterance ids and `book` left empty.

`src` may be the UserLibri root, `audio_data`, one split folder or one user folder.
`subsets=("test-clean",)` keeps the user folders of those split folders only, as the P2P
seed (rosaj/p2p_asr) did: its clients are test-clean's 55 users. The default keeps every
split (test-clean and test-other), the corpus as released.
Utterances: LibriSpeech ids, `speaker=<spk>`, extra `{"client": <user folder>,
"book": <book>, "split": <split folder>, "chapter": ...}`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from speechswarm.data.corpora import Candidate, ImportResult, build_result, require_dir
from speechswarm.data.corpora.librispeech import read_trans_file
from speechswarm.data.text import DEFAULT_ALPHABET
from speechswarm.errors import DataError, InputNotFoundError

USER_FOLDER = re.compile(
    r"^(?:speaker[-_]?)?(?P<speaker>(?!speaker|book)[A-Za-z0-9]+)[-_](?:book[-_]?)?(?P<book>[A-Za-z0-9]+)$"
)


def parse_user_folder(name: str) -> tuple[str, str]:
    """`speaker-1089-book-4217` -> ("1089", "4217"); ("", "") when the name does not fit."""
    match = USER_FOLDER.match(name)
    if not match:
        return "", ""
    return match.group("speaker"), match.group("book")


def _transcripts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.trans.txt")) or sorted(folder.glob("*.txt"))


def _user_folders(root: Path) -> list[Path]:
    """User folders under `src` in any of the accepted positions (see module docstring)."""
    if _transcripts(root):
        return [root]  # src is one user folder
    if (root / "audio_data").is_dir():
        root = root / "audio_data"
    children = sorted(p for p in root.iterdir() if p.is_dir())
    users = [p for p in children if _transcripts(p)]
    if users:
        return users  # src is a split folder
    return [
        u for split in children for u in sorted(split.iterdir()) if u.is_dir() and _transcripts(u)
    ]


def prepare_userlibri(
    src: str | os.PathLike,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
    workers: int = 1,
    subsets: Sequence[str] = (),
) -> ImportResult:
    """Every utterance of every user folder under `src` whose split folder is in `subsets`
    (empty: every split), ordered by split, user, id."""
    root = require_dir(src, "userlibri", "the UserLibri folder (audio_data/, lm_data/)")
    users = _user_folders(root)
    if not users:
        raise InputNotFoundError(
            f"userlibri: no user folders with *.trans.txt under {root}; expected "
            "UserLibri/audio_data/<split>/speaker-<spk>-book-<book>/"
        )
    if isinstance(subsets, str):
        subsets = (subsets,)
    found = sorted({u.parent.name for u in users})
    missing = [s for s in subsets if s not in found]
    if missing:
        raise InputNotFoundError(
            f"userlibri: subsets {missing} not found under {root}; its user folders are in {found}"
        )
    users = [u for u in users if not subsets or u.parent.name in subsets]
    cands: list[Candidate] = []
    problems: list[tuple[str, str]] = []
    for user in users:
        speaker, book = parse_user_folder(user.name)
        extra = {"client": user.name, "book": book, "split": user.parent.name}
        found: list[Candidate] = []
        for trans in _transcripts(user):
            part, bad = read_trans_file(trans, extra)
            found += part
            problems += bad
        if speaker:
            found = [replace(c, speaker=speaker) for c in found]
        cands += sorted(found, key=lambda c: c.id)
    return build_result(cands, problems, alphabet=alphabet, digits=digits, workers=workers)


def _lm_dir(root: str | os.PathLike) -> Path:
    root = require_dir(root, "userlibri", "the UserLibri folder (lm_data/)")
    return root / "lm_data" if (root / "lm_data").is_dir() else root


def userlibri_lm_texts(root: str | os.PathLike) -> dict[str, Path]:
    """Book id -> its LM text file (`lm_data/<book>_lm_train.txt`), for personalised LMs.

    `root` is the UserLibri folder or its `lm_data` folder. Books listed in
    `lm_data/metadata.tsv` whose file is missing raise InputNotFoundError (naming them).
    """
    lm_dir = _lm_dir(root)
    texts = {p.name.removesuffix("_lm_train.txt"): p for p in sorted(lm_dir.glob("*_lm_train.txt"))}
    if (lm_dir / "metadata.tsv").is_file():
        missing = sorted(set(userlibri_lm_metadata(lm_dir)) - set(texts))
        if missing:
            raise InputNotFoundError(
                f"userlibri: lm_data/metadata.tsv lists books without text files in {lm_dir}: "
                f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; re-extract the download"
            )
    return texts


def userlibri_lm_metadata(root: str | os.PathLike) -> dict[str, dict]:
    """`lm_data/metadata.tsv` by book id: {"num_text_examples": int,
    "avg_words_per_example": float}; columns are found by header name."""
    path = _lm_dir(root) / "metadata.tsv"
    if not path.is_file():
        raise InputNotFoundError(f"userlibri: {path} does not exist")
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f, delimiter="\t"), 2):
            try:
                out[row["Book ID"].strip()] = {
                    "num_text_examples": int(row["Num Text Examples"]),
                    "avg_words_per_example": float(row["Average Words Per Example"]),
                }
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}:{lineno}: bad metadata row ({e!r})") from e
    return out
