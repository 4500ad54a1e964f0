"""Text <-> token ids for CTC: id 0 is always the blank, real symbols start at 1.

    speechswarm tokenizer train --manifest data/train.jsonl --vocab-size 256 --out tok.json

Two tokenizers share one small protocol (`Tokenizer`): `CharTokenizer` (one id per
alphabet character) and `SentencePieceTokenizer` (unigram or BPE pieces). Both serialise
to a JSON-able dict (`to_dict` / `tokenizer_from_dict`) so the vocabulary travels inside
checkpoints and exported models, and to a JSON file (`save` / `load_tokenizer`).

Vocabulary sizes count the blank: `len(tokenizer)` is the model's output size, and
`train_sentencepiece(texts, vocab_size=256)` gives a tokenizer with `len() == 256`
(255 SentencePiece pieces + blank).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import sentencepiece as spm

from speechswarm.data.text import AUTO_ALPHABET, DEFAULT_ALPHABET, alphabet_of
from speechswarm.errors import ConfigError, DataError, InputNotFoundError, UsageError

BLANK = "<blank>"


@runtime_checkable
class Tokenizer(Protocol):
    """What the dataset, decoders and checkpoints rely on."""

    blank: int  # always 0
    tokens: list[str]  # tokens[0] == "<blank>"

    def __len__(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def to_dict(self) -> dict: ...
    def save(self, path: str | os.PathLike) -> None: ...


class CharTokenizer:
    """One token per alphabet character: id i+1 is `alphabet[i]`, 0 is the blank.

    `encode` raises ValueError on characters outside the alphabet (a character vocabulary
    has no <unk>; normalise with `normalize_text` and validate with `out_of_alphabet`).
    `decode` skips blanks (0), so padded id rows decode cleanly, and collapses runs of spaces
    (CTC may emit " ", blank, " "): a transcript reads as its words joined by single spaces.
    """

    blank = 0

    def __init__(self, alphabet: str = DEFAULT_ALPHABET):
        if not alphabet:
            raise ConfigError("CharTokenizer: the alphabet is empty")
        duplicates = sorted({c for c in alphabet if alphabet.count(c) > 1})
        if duplicates:
            raise ConfigError(f"CharTokenizer: alphabet repeats {duplicates}; list each once")
        self.alphabet = alphabet
        self.tokens = [BLANK, *alphabet]
        self._ids = {c: i for i, c in enumerate(alphabet, start=1)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"CharTokenizer(alphabet={self.alphabet!r})"

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            missing = sorted(set(text) - set(self._ids))
            raise DataError(
                f"CharTokenizer.encode: {missing} not in the alphabet {self.alphabet!r} "
                f"(text {text[:60]!r}); normalise transcripts with normalize_text or "
                "extend the alphabet"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        chars = []
        for i in ids:
            i = int(i)
            if i == self.blank:
                continue
            if not 0 < i < len(self.tokens):
                raise ValueError(f"CharTokenizer.decode: id {i} outside 0..{len(self) - 1}")
            chars.append(self.tokens[i])
        return " ".join("".join(chars).split())

    def to_dict(self) -> dict:
        return {"kind": "char", "alphabet": self.alphabet}

    def save(self, path: str | os.PathLike) -> None:
        _write_json(path, self.to_dict())


class SentencePieceTokenizer:
    """Subword tokens from a SentencePiece model, shifted by one so 0 stays the blank.

    Token id = SentencePiece id + 1. `model_proto` is the serialised model (the bytes of a
    `.model` file); it is kept in memory and stored base64-encoded by `to_dict`.

    Unknown input: characters the model never saw encode to `<unk>` (SentencePiece id 0,
    our id 1), several in a row to one `<unk>`. `decode` drops `<unk>` and control pieces
    (`<s>`, `</s>`), so a hypothesis never contains SentencePiece's " ⁇ " marker: an
    unknown character costs a deletion, not an inserted junk word.
    """

    blank = 0

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self._sp = _load_processor(self.model_proto)
        size = self._sp.get_piece_size()
        self.tokens = [BLANK] + [self._sp.id_to_piece(i) for i in range(size)]
        # SentencePiece ids that decode to nothing useful: <unk> and controls (<s>, </s>).
        self._dropped = {i for i in range(size) if self._sp.is_unknown(i) or self._sp.is_control(i)}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """Wrap an existing SentencePiece `.model` file."""
        return cls(Path(path).read_bytes())

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab={len(self)})"

    # The C++ processor does not pickle; DataLoader workers under "spawn" need this.
    def __getstate__(self) -> dict:
        return {"model_proto": self.model_proto}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"])

    @property
    def unk(self) -> int:
        """Our id of `<unk>`."""
        return self._sp.unk_id() + 1

    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in self._sp.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        pieces = []
        for i in ids:
            i = int(i)
            if i == self.blank:
                continue
            if not 0 < i < len(self.tokens):
                raise ValueError(
                    f"SentencePieceTokenizer.decode: id {i} outside 0..{len(self) - 1}"
                )
            if i - 1 not in self._dropped:
                pieces.append(i - 1)
        # Dropping "▁<unk>▁" would leave two spaces; SentencePiece text has single spaces.
        return " ".join(self._sp.decode(pieces).split())

    def to_dict(self) -> dict:
        return {
            "kind": "sentencepiece",
            "model": base64.b64encode(self.model_proto).decode("ascii"),
            "tokens": self.tokens,  # for people reading the JSON; rebuilt from the model
        }

    def save(self, path: str | os.PathLike) -> None:
        _write_json(path, self.to_dict())


def _load_processor(model_proto: bytes) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_proto)
    except RuntimeError as e:
        raise DataError(f"not a SentencePiece model ({e})") from e
    return sp


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model in memory on normalised `texts`.

    `vocab_size` counts the blank (the result has `len() == vocab_size`). The model keeps
    text as given (identity normalisation rule: normalise first with `normalize_text`),
    has no <s>/</s> (CTC needs none) and `<unk>` at SentencePiece id 0.
    """
    if model_type not in ("unigram", "bpe"):
        raise UsageError(
            f"train_sentencepiece: model_type must be 'unigram' or 'bpe', got {model_type!r}"
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise DataError("train_sentencepiece: no non-empty training texts")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size - 1,  # one id is reserved for the CTC blank
            model_type=model_type,
            character_coverage=character_coverage,
            normalization_rule_name="identity",
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            num_threads=min(4, os.cpu_count() or 1),
            minloglevel=2,  # SentencePiece logs every step to stderr otherwise
        )
    except RuntimeError as e:
        raise DataError(_explain_training_error(e, vocab_size)) from e
    return SentencePieceTokenizer(model.getvalue())


def _explain_training_error(error: RuntimeError, vocab_size: int) -> str:
    match = re.search(r"set it to a value <= (\d+)", str(error))
    if match:
        most = int(match.group(1)) + 1
        return (
            f"train_sentencepiece: vocab_size={vocab_size} is too large for this text; "
            f"use vocab_size <= {most} or train on more text"
        )
    return f"train_sentencepiece: SentencePiece failed: {error}"


def tokenizer_from_dict(d: dict) -> CharTokenizer | SentencePieceTokenizer:
    """Rebuild a tokenizer from `to_dict()` output."""
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["alphabet"])
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(d["model"]))
    raise DataError(f"unknown tokenizer kind {kind!r}; expected 'char' or 'sentencepiece'")


def _write_json(path: str | os.PathLike, d: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(d, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_tokenizer(path: str | os.PathLike) -> CharTokenizer | SentencePieceTokenizer:
    """Read a tokenizer JSON written by `save` (or a raw SentencePiece `.model` file)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(
            f"tokenizer file {path} does not exist; make one with `speechswarm tokenizer train`"
        )
    if path.suffix == ".model":
        return SentencePieceTokenizer.from_file(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a tokenizer JSON ({e})") from e
    try:
        return tokenizer_from_dict(d)
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: not a valid tokenizer ({e})") from e


def make_tokenizer(
    kind: str,
    alphabet: str = DEFAULT_ALPHABET,
    path: str | os.PathLike = "",
    manifest: str | os.PathLike = "",
) -> CharTokenizer | SentencePieceTokenizer:
    """The tokenizer a `tokenizer:` config section describes, from its plain values: a
    `CharTokenizer(alphabet)` for "char", the tokenizer file at `path` for "sentencepiece".
    `alphabet="auto"`: every character of `manifest`'s transcripts (the training manifest),
    sorted, so a corpus prepared with `--alphabet auto` trains in its own alphabet."""
    if kind == "char" and alphabet == AUTO_ALPHABET:
        return CharTokenizer(manifest_alphabet(manifest))
    if kind == "char":
        return CharTokenizer(alphabet)
    if kind != "sentencepiece":
        raise ConfigError(f"tokenizer.kind: {kind!r} is not 'char' or 'sentencepiece'")
    if not path:
        raise ConfigError(
            "tokenizer.kind=sentencepiece needs tokenizer.path: train one with "
            "`speechswarm tokenizer train --manifest M --vocab-size N --out tok.json`"
        )
    if not Path(path).is_file():
        raise InputNotFoundError(f"tokenizer.path {path} does not exist")
    return load_tokenizer(path)


def manifest_alphabet(manifest: str | os.PathLike) -> str:
    """The sorted characters of a manifest's transcripts (`tokenizer.alphabet=auto`)."""
    from speechswarm.data.manifest import read_manifest

    if not manifest:
        raise ConfigError(
            "tokenizer.alphabet=auto takes the alphabet from data.train_manifest, which is not "
            'set here; set it, or give the characters: tokenizer.alphabet="abc...\' "'
        )
    alphabet = alphabet_of(u.text for u in read_manifest(manifest))
    if not alphabet.strip():
        raise DataError(f"tokenizer.alphabet=auto: {manifest} has no transcript text")
    return alphabet


def train_tokenizer(
    manifest: str | os.PathLike,
    vocab_size: int,
    out: str | os.PathLike,
    model_type: str = "unigram",
) -> SentencePieceTokenizer:
    """`speechswarm tokenizer train`: a SentencePiece tokenizer from the transcripts of
    `manifest`, saved as JSON at `out`; prints a summary and how to use it."""
    from speechswarm.data.manifest import read_manifest

    texts = [u.text for u in read_manifest(manifest)]
    tok = train_sentencepiece(texts, vocab_size, model_type=model_type)
    tok.save(out)
    print(f"tokenizer: {len(tok)} tokens (incl. blank) from {len(texts):,} transcripts -> {out}")
    print(f"use it with: speechswarm train tokenizer.kind=sentencepiece tokenizer.path={out}")
    return tok
