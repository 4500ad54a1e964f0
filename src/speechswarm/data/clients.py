"""Custom per-client datasets from a user's Python function (the P2P seed's data hook).

    speechswarm prepare clients my_data.py:load_clients_data --out data/clients

A hook is any function returning the structure of the peer-to-peer seed's
`load_clients_data()`:

    {"train": [(xs, ys), ...one pair per client],
     "val":   [(xs, ys), ...],            # splits may be absent; present ones need one
     "test":  [(xs, ys), ...],            # pair per client (([], []) for no data)
     "dataset_name": "mine" | ["name per client", ...]}   # optional, default "hook"

`xs[j]` is one utterance's audio: a path to an audio file (str or PathLike; relative
paths are taken from the current folder), or a 1-D float array of samples in [-1, 1] at
`sample_rate` Hz (numpy array, torch tensor, or anything `np.asarray` reads; int16 arrays
are accepted as PCM). `ys[j]` is its transcript: a string, normalised with
`normalize_text`, or a sequence of token ids from *our* tokenizer (0 = blank, skipped),
decoded with the `tokenizer` argument. Other keys (e.g. "metadata-subreddits") are ignored.

2-D and higher arrays (precomputed features such as the seed's (2048, 80, 1) log-mels) are
rejected: the pipeline computes features from audio with the run's own settings, and
features cannot be turned back into audio. Return waveforms or file paths instead.

`clients_from_hook` writes in-memory arrays as 16-bit FLAC under
`out_dir/<split>/client<i>/<j>.flac` so that everything downstream works on manifests,
and returns per-split Utterance lists (the CLI writes one manifest per split).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from speechswarm.data.corpora import probe_duration
from speechswarm.data.manifest import Utterance
from speechswarm.data.text import DEFAULT_ALPHABET, normalize_text
from speechswarm.errors import DataError, InputNotFoundError, UsageError

SPLITS = ("train", "val", "test")


class HookError(DataError):
    """A hook that cannot be loaded or whose result is malformed; the message names the
    hook, and the split, client and index."""


class HookResult(dict):
    """What a hook loaded by `load_hook` returned, with its name (`spec`), so that an
    error about an item of it names the hook."""

    spec: str = ""


def load_hook(spec: str) -> Callable:
    """The function named by `spec`: "package.module:function" or "path/to/file.py:function".

    A file's folder is appended to `sys.path` (as `python file.py` would put it first),
    so the hook can import modules lying beside it. Whatever goes wrong in the user's code,
    here or when the returned function is called (it raises, exits, returns something that
    is not a `load_clients_data()` dict), is a HookError: one line naming the hook
    (`spec`), the exception and where in the hook it was raised.
    """
    target, sep, func_name = spec.rpartition(":")
    if not sep or not target or not func_name:
        raise UsageError(f"hook {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _module_from_file(Path(target), spec)
    else:
        module = _import_module(target, spec)
    func = getattr(module, func_name, None)
    if func is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise HookError(
            f"hook {spec!r}: {target} has no attribute {func_name!r}; its callables: {public}"
        )
    if not callable(func):
        raise HookError(f"hook {spec!r}: {func_name} is a {type(func).__name__}, not a function")

    @functools.wraps(func)
    def checked(*args, **kwargs) -> Mapping:
        try:
            result = func(*args, **kwargs)
        except (Exception, SystemExit) as e:  # the user's code: any exception, sys.exit too
            raise HookError(f"hook {spec!r} raised {_one_line(e)}") from e
        _check_structure(result, f"hook {spec!r} result")
        named = HookResult(result)
        named.spec = spec
        return named

    return checked


def _import_module(target: str, spec: str):
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise HookError(
            f"hook {spec!r}: cannot import module {target!r} ({e}); install it, add its "
            "folder to PYTHONPATH, or give a file path instead (path/to/file.py:function)"
        ) from e
    except (Exception, SystemExit) as e:  # the module's own code failed while importing
        raise HookError(f"hook {spec!r}: importing {target} raised {_one_line(e)}") from e


def _module_from_file(path: Path, spec: str):
    path = path.expanduser().resolve()
    if not path.is_file():
        raise InputNotFoundError(f"hook {spec!r}: file {path} does not exist")
    name = f"speechswarm_hook_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise HookError(f"hook {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a syntax error, a failed import, top-level code
        sys.modules.pop(name, None)
        raise HookError(f"hook {spec!r}: loading {path} raised {_one_line(e)}") from e
    return module


def _one_line(e: BaseException) -> str:
    """'ValueError: no data (at my_hook.py:12)': the exception (its message cut to 300
    characters) and the innermost line of the hook's own code it passed through."""
    text = " ".join(str(e).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    where = ""
    if isinstance(e, SyntaxError) and e.filename:
        where = f"{Path(e.filename).name}:{e.lineno}"
        text = e.msg
    else:
        frames = traceback.extract_tb(e.__traceback__)
        own = [f for f in frames if not f.filename.startswith(_NOT_THE_USERS)]
        if own or frames:
            frame = (own or frames)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
    return (
        f"{type(e).__name__}" + (f": {text}" if text else "") + (f" (at {where})" if where else "")
    )


# Frames in these folders are not the hook's own: speechswarm, the environment's packages
# (numpy, ...) and the standard library ("<frozen importlib._bootstrap>" too).
_NOT_THE_USERS = ("<", str(Path(__file__).resolve().parents[1]), sys.prefix, sys.base_prefix)


def clients_from_hook(
    result: Mapping,
    out_dir: str | os.PathLike,
    sample_rate: int = 16000,
    tokenizer=None,
    *,
    alphabet: str = DEFAULT_ALPHABET,
    digits: str = "spell",
) -> dict[str, list[Utterance]]:
    """Validate a hook's result and turn it into per-split utterance lists.

    Returns {split: [Utterance, ...]} for each of "train", "val", "test" present in
    `result`, with extra {"client": i, "dataset": name, "split": split} and speaker
    `client<i>`. Raises HookError naming split/client/index on malformed input.
    """
    label = f"hook {result.spec!r} result" if isinstance(result, HookResult) else "hook result"
    splits, num_clients = _check_structure(result, label)
    names = _dataset_names(result.get("dataset_name", "hook"), num_clients, label)
    out_dir = Path(out_dir)
    out: dict[str, list[Utterance]] = {}
    for split in splits:
        utts = []
        for i, pair in enumerate(result[split]):
            xs, ys = pair
            for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
                where = f"{label}: split {split!r}, client {i}, item {j}"
                audio_dir = out_dir / split / f"client{i:04d}"
                audio, duration = _audio_of(x, audio_dir / f"{j:06d}.flac", sample_rate, where)
                raw = _text_of(y, tokenizer, where)
                text = normalize_text(raw, alphabet, digits)
                if not text:
                    raise HookError(f"{where}: transcript {raw!r} is empty after normalisation")
                extra = {"client": i, "dataset": names[i], "split": split}
                if text != raw:
                    extra["raw_text"] = raw
                utts.append(
                    Utterance(
                        id=f"{names[i]}-{split}-c{i:04d}-{j:06d}",
                        audio=str(audio),
                        duration=round(duration, 6),
                        text=text,
                        speaker=f"client{i}",
                        extra=extra,
                    )
                )
        out[split] = utts
    return out


def _check_structure(result: Mapping, label: str = "hook result") -> tuple[list[str], int]:
    """The present splits and the (common) number of clients; HookError (its message
    starting with `label`) otherwise."""
    if not isinstance(result, Mapping):
        raise HookError(
            f"{label} is a {type(result).__name__}; expected a dict with 'train', "
            "'val' and/or 'test' lists of (xs, ys) pairs, one per client"
        )
    splits = [s for s in SPLITS if s in result]
    if not splits:
        keys = sorted(map(str, result))[:10]
        raise HookError(f"{label} has none of {list(SPLITS)} (keys: {keys})")
    for split in splits:
        if not _is_list(result[split]):
            raise HookError(
                f"{label}: split {split!r} is a {type(result[split]).__name__}; expected "
                "a list of (xs, ys) pairs, one per client"
            )
    counts = {s: len(result[s]) for s in splits}
    if len(set(counts.values())) > 1:
        raise HookError(
            f"{label}: clients per split differ {counts}; every split needs one (xs, ys) "
            "pair per client (use ([], []) for a client without data in a split)"
        )
    for split in splits:
        for i, pair in enumerate(result[split]):
            where = f"{label}: split {split!r}, client {i}"
            if not isinstance(pair, Sequence | np.ndarray) or len(pair) != 2:
                raise HookError(f"{where}: expected an (xs, ys) pair, got {type(pair).__name__}")
            xs, ys = pair
            if not (_is_list(xs) and _is_list(ys)):
                raise HookError(
                    f"{where}: xs and ys are a {type(xs).__name__} and a {type(ys).__name__}; "
                    "expected two lists (audio items, transcripts)"
                )
            if len(xs) != len(ys):
                raise HookError(
                    f"{where}: {len(xs)} audio items (xs) but {len(ys)} transcripts (ys)"
                )
    return splits, counts[splits[0]]


def _is_list(value) -> bool:
    """A list-like of items: a list, tuple or 1-D+ array, not a string or a number."""
    return isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes)


def _dataset_names(value, num_clients: int, label: str = "hook result") -> list[str]:
    """One name per client, made safe for utterance ids ("my data/v2" -> "my_data_v2")."""
    values = [value] * num_clients if isinstance(value, str) else list(value)
    names = [re.sub(r"[^\w.-]+", "_", str(v)).strip("._-") or "hook" for v in values]
    if len(names) != num_clients:
        raise HookError(f"{label}: dataset_name has {len(names)} entries for {num_clients} clients")
    return names


def _audio_of(x, flac: Path, sample_rate: int, where: str) -> tuple[Path, float]:
    """(audio path, seconds) for one xs item; arrays are written to `flac`."""
    if isinstance(x, str | os.PathLike):
        path = Path(x).expanduser().resolve()
        seconds, reason = probe_duration(path)
        if reason:
            raise HookError(f"{where}: audio file {path}: {reason}")
        return path, seconds
    wave = np.asarray(x)
    if wave.ndim != 1:
        raise HookError(
            f"{where}: array of shape {wave.shape}; only 1-D waveforms at {sample_rate} Hz "
            "(or audio file paths) can be used; precomputed features are not supported, "
            "because speechswarm computes features from audio with the run's own settings"
        )
    if wave.size == 0:
        raise HookError(f"{where}: empty waveform")
    if wave.dtype == np.int16:
        subtype_data = wave
    elif np.issubdtype(wave.dtype, np.floating):
        if not np.all(np.isfinite(wave)):
            raise HookError(f"{where}: waveform has NaN or infinite samples")
        peak = float(np.max(np.abs(wave)))
        if peak > 1.0:
            raise HookError(
                f"{where}: samples reach {peak:.4g}, outside [-1, 1]; scale int16-range "
                "floats by 1/32768"
            )
        subtype_data = wave.astype(np.float32)
    else:
        raise HookError(f"{where}: waveform dtype {wave.dtype}; use float32 in [-1, 1] or int16")
    flac.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(flac), subtype_data, sample_rate, subtype="PCM_16", format="FLAC")
    return flac.resolve(), wave.size / sample_rate


def _text_of(y, tokenizer, where: str) -> str:
    """A transcript string from a string or a sequence of token ids."""
    if isinstance(y, str):
        return y
    if isinstance(y, bytes):
        return y.decode("utf-8")
    ids = np.asarray(y)
    if ids.size == 0:
        return ""  # reported as an empty transcript by the caller
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise HookError(
            f"{where}: transcript is {type(y).__name__} of dtype {ids.dtype}, shape "
            f"{ids.shape}; expected a string or a 1-D sequence of token ids"
        )
    if tokenizer is None:
        raise HookError(
            f"{where}: transcripts are token ids; pass the tokenizer that made them "
            "(blank = 0, e.g. speechswarm's CharTokenizer or SentencePieceTokenizer)"
        )
    try:
        return tokenizer.decode(ids.tolist())
    except ValueError as e:
        raise HookError(f"{where}: {e}") from e
