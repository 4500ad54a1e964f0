"""Weights-only checkpoints, written atomically, and the checkpoint folder of a run.

    speechswarm train --config configs/demo.yaml --resume auto   # resumes from last.pt

A checkpoint is a plain dict of tensors, numbers, strings, None, lists/tuples and dicts
(model, optimizer, scheduler, sampler and RNG state, step/epoch, resolved config,
vocabulary, feature settings). It is loaded with `torch.load(weights_only=True)` only: an
arbitrary pickled object can run code when unpickled, so a file holding one is refused.

Layout of a run's checkpoint folder (`CheckpointManager`), e.g. runs/demo/checkpoints/:

    step-<step>.pt   the last `keep_last` saves (older ones pruned)
    last.pt          the most recent save (what --resume auto loads)
    best.pt          the save with the lowest dev WER so far
    index.json       [{step, metric, path, wall_time}] of the kept saves, plus best and last

best.pt and last.pt are hard links to the step file (a copy where the file system has no
hard links), never symlinks: a symlink would dangle once its step file is pruned.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
import shutil
import time
from collections import OrderedDict
from pathlib import Path

import torch

from speechswarm.atomic import temp_beside
from speechswarm.errors import CheckpointError, ConfigError

# Exact types: a subclass (np.float64 is a float, an IntEnum an int, a namedtuple a tuple,
# a defaultdict a dict) pickles as its own class, which weights-only loading refuses.
_PRIMITIVES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.Size)
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
# Seconds between writing a file's temporary copy and renaming it into place: 0 but under
# fault injection (`speechswarm chaos kill`), which widens the window a kill can land in.
_FAULT_SAVE_DELAY_S = float(os.environ.get("SPEECHSWARM_FAULT_SAVE_DELAY_S", "0") or 0)


def check_state(value: object, where: str = "state") -> None:
    """Raise TypeError naming the first value a weights-only load would refuse.

    Allowed: tensors, bool/int/float/str/bytes/None, torch dtypes and sizes, and lists,
    tuples and dicts (str or int keys) of those. Numpy arrays and scalars are refused
    (convert with `torch.from_numpy` / `.item()`), as are dataclasses and Paths (store
    `dataclasses.asdict(cfg)` and `str(path)`).
    """
    if isinstance(value, torch.Tensor) or type(value) in _PRIMITIVES:
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_state(item, f"{where}[{i}]")
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a {type(key).__name__} key {key!r}; use str or int")
            check_state(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a weights-only checkpoint cannot hold; "
        "store tensors, numbers, strings, lists or dicts instead"
    )


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# errno -> what to do when a checkpoint cannot be written (a full disk, a read-only folder).
_WRITE_HINTS = {
    errno.ENOSPC: "the disk is full: free space (or set train.out_dir to another disk)",
    errno.EDQUOT: "the disk quota is used up: free space (or set train.out_dir elsewhere)",
    errno.EFBIG: "the file size limit is reached (ulimit -f): raise it",
    errno.EROFS: "the file system is read-only: remount it writable (or set train.out_dir)",
    errno.EACCES: "the folder is not writable: fix its permissions (or set train.out_dir)",
    errno.EPERM: "the folder is not writable: fix its permissions (or set train.out_dir)",
}


class _ErrorRecorder:
    """A binary file whose first OSError on write is kept: torch.save turns a failed write
    into RuntimeError('unexpected pos ...'), which no longer says the disk is full."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def _atomic_write(path: Path, write) -> None:
    """Call `write(file)` on a temp file beside `path`, fsync, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a mix, and
    removes the temp file (a hard kill can leave a `.<name>.*.tmp`, never a bad `path`).
    A write the file system refuses (full disk, read-only or unwritable folder) raises
    CheckpointError(reason "unwritable") naming the path, the OS error and what to do.
    """
    tmp = None
    try:
        fd, tmp = temp_beside(path)
        with os.fdopen(fd, "wb") as f:
            out = _ErrorRecorder(f)
            try:
                write(out)
                out.flush()
            except Exception as e:  # torch.save hides the OSError; raise the one it hid
                if out.error is not None:
                    raise out.error from e
                raise
            os.fsync(f.fileno())
        if _FAULT_SAVE_DELAY_S:  # fault injection (`speechswarm chaos`): widen the window
            time.sleep(_FAULT_SAVE_DELAY_S)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in _WRITE_HINTS:
            raise unwritable(path, e) from e
        raise
    _fsync_dir(path.parent)


def unwritable(path: Path, e: OSError) -> CheckpointError:
    """The one-line error for a checkpoint file the file system refused to take."""
    return CheckpointError(
        path,
        "unwritable",
        f"cannot be written ({os.strerror(e.errno)}); {_WRITE_HINTS[e.errno]}, then "
        "resume with --resume auto: the checkpoints written before are intact",
    )


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write `state` to `path` atomically with torch.save; returns the path.

    Refuses (TypeError, naming the key path) any value `load_checkpoint` would refuse, before
    touching the file system.
    """
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint needs a dict, got {type(state).__name__}")
    check_state(state)
    path = Path(path)
    _atomic_write(path, lambda f: torch.save(state, f))
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, model: bool = False
) -> dict:
    """Load a checkpoint written by `save_checkpoint`, weights-only, tensors on `map_location`.

    Raises CheckpointError: missing_file; unsafe_content (a pickled object that would run
    code: refused, never unpickled); corrupt_file (truncated or garbage bytes, or a "model",
    "features", ... entry that is not a dict). `model=True` also requires what rebuilds a
    model (`MODEL_KEYS`): eval, transcribe, export and average read those.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            path,
            "missing_file",
            "no such file; check the path (a run keeps last.pt, best.pt and step-<N>.pt "
            "in <run>/checkpoints/)",
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # garbage bytes fail in many ways (zip, pickle, utf-8, ...)
        unsafe = unsafe_pickle(e)
        if unsafe is None:
            raise _corrupt(path, e) from e
        raise CheckpointError(
            path,
            "unsafe_content",
            f"holds {unsafe}, not only tensors, numbers, strings, lists and dicts; refusing "
            "to unpickle it, as that can run arbitrary code. If you trust the file, load it "
            "yourself with torch.load(weights_only=False), convert such objects to plain data "
            "and re-save it with save_checkpoint.",
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(path, "corrupt_file", f"holds a {type(state).__name__}, not a dict")
    _check_known_keys(path, state)
    missing = [k for k in MODEL_KEYS if k not in state] if model else []
    if missing:
        raise CheckpointError(
            path,
            "corrupt_file",
            f"has no {', '.join(missing)}; not a model checkpoint written by `speechswarm "
            "train` (use one from <run>/checkpoints/)",
        )
    return state


# How torch's weights-only unpickler names a global it refuses to load: "Unsupported global:
# GLOBAL numpy.dtype was not an allowed global" or, for a blocked module such as os (torch
# 2.6+), "unsupported GLOBAL posix.system whose module posix is blocked".
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+)")


def unsafe_pickle(e: BaseException) -> str | None:
    """What a weights-only `torch.load` refused to call or build ("a pickled posix.system
    object"), or None when `e` is no such refusal (a truncated or garbage file)."""
    found = _UNSAFE_GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
    return f"a pickled {found[1].rstrip('.')} object" if found else None


# Keys a model checkpoint's readers index without asking: present, they must be dicts (a
# weights-only file can hold any plain value under them; the readers would fail deep inside).
_DICT_KEYS = ("model", "model_settings", "features", "tokenizer", "train_state", "optimizer")
MODEL_KEYS = ("model", "model_settings", "features", "tokenizer")  # what rebuilds a model


def _check_known_keys(path: Path, state: dict) -> None:
    for key in _DICT_KEYS:
        if key in state and type(state[key]) not in (dict, OrderedDict):
            raise CheckpointError(
                path,
                "corrupt_file",
                f"its {key!r} is a {type(state[key]).__name__}, not a dict; not a checkpoint "
                "written by speechswarm (use one from <run>/checkpoints/)",
            )
    bad = [k for k, v in state.get("model", {}).items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            path,
            "corrupt_file",
            f"its model weights hold non-tensors ({', '.join(map(str, bad[:3]))}); not a "
            "checkpoint written by speechswarm (use one from <run>/checkpoints/)",
        )


def _first_sentence(e: Exception) -> str:
    opcode = re.search(r"Unsupported operand (\d+)", str(e))
    if isinstance(e, pickle.UnpicklingError) and opcode:  # torch's own text is 8 lines
        return f"UnpicklingError: pickle opcode {opcode[1]}, which weights-only loading refuses"
    text = str(e).strip().split(". ")[0].splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _corrupt(path: Path, e: Exception) -> CheckpointError:
    size = path.stat().st_size if path.exists() else 0
    return CheckpointError(
        path,
        "corrupt_file",
        f"truncated or corrupt ({size:,} bytes; {_first_sentence(e)}). "
        "Use an earlier checkpoint of the run (step-<N>.pt, best.pt) or retrain.",
    )


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make `dst` the same content as `src`: hard link, else a copy. A failed
    copy leaves no temporary file (CheckpointError "unwritable" on a full disk)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError as e:  # no hard links here (some network or FAT file systems): copy
            if e.errno in _WRITE_HINTS and e.errno not in (errno.EPERM,):
                raise
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if e.errno in _WRITE_HINTS:
            raise unwritable(dst, e) from e
        raise


class CheckpointManager:
    """The checkpoint folder of one run: step files, last.pt, best.pt and index.json.

    `metric` is the dev WER at the save (lower is better); saves without one, or with a
    non-finite one, never become best. Reopening an existing folder continues its index,
    so best tracking survives a resume. `keep_last=0` keeps every step file.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3):
        if keep_last < 0:
            raise ConfigError(f"keep_last must be >= 0 (0 keeps all), got {keep_last}")
        self.dir = Path(directory)
        self.keep_last = keep_last
        self.entries: list[dict] = []  # {step, metric, path, wall_time}, by step
        self.best: dict | None = None
        self._last_step: int | None = None
        self._load_index()

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    @property
    def best_metric(self) -> float | None:
        return None if self.best is None else self.best["metric"]

    @property
    def last_saved_step(self) -> int | None:
        """Step of the most recent save (this process or, after a resume, the index's)."""
        return self._last_step

    def best_path(self) -> Path | None:
        """dir/best.pt if a save with a metric happened, else None."""
        path = self.dir / "best.pt"
        return path if self.best is not None and path.is_file() else None

    def latest(self) -> Path | None:
        """last.pt if a save happened, else the highest step file, else None."""
        if (self.dir / "last.pt").is_file():
            return self.dir / "last.pt"
        steps = [e for e in self.entries if (self.dir / e["path"]).is_file()]
        return self.dir / steps[-1]["path"] if steps else None

    def save(self, state: dict, step: int, metric: float | None = None) -> Path:
        """Save `state` as step-<step>.pt, update last.pt/best.pt/index.json, prune old steps."""
        path = save_checkpoint(self.dir / f"step-{step}.pt", state)
        if metric is not None:
            metric = float(metric)
            metric = metric if math.isfinite(metric) else None  # a NaN WER is no measurement
        entry = {"step": int(step), "metric": metric, "path": path.name, "wall_time": time.time()}
        self.entries = sorted(
            [e for e in self.entries if e["step"] != step] + [entry], key=lambda e: e["step"]
        )
        _link_or_copy(path, self.dir / "last.pt")
        if metric is not None and (self.best is None or metric < self.best["metric"]):
            _link_or_copy(path, self.dir / "best.pt")
            self.best = dict(entry, path="best.pt", source=path.name)
        self._prune()
        self._write_index(last=entry)
        self._last_step = int(step)
        return path

    def _prune(self) -> None:
        if self.keep_last == 0 or len(self.entries) <= self.keep_last:
            return
        for old in self.entries[: -self.keep_last]:
            (self.dir / old["path"]).unlink(missing_ok=True)
        self.entries = self.entries[-self.keep_last :]

    def _write_index(self, last: dict) -> None:
        index = {"checkpoints": self.entries, "best": self.best, "last": last}
        text = json.dumps(index, indent=1, allow_nan=False) + "\n"
        _atomic_write(self.index_path, lambda f: f.write(text.encode()))

    def _load_index(self) -> None:
        if self.index_path.is_file():
            try:
                index = json.loads(self.index_path.read_text())
                self.entries = list(index["checkpoints"])
                self.best = index["best"]
                self._last_step = (index.get("last") or {}).get("step")
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(
                    self.index_path,
                    "corrupt_file",
                    f"not a checkpoint index ({e}); move it away and the "
                    "folder's step-<N>.pt files are re-indexed",
                ) from e
        # Step files saved just before a crash, before index.json was rewritten.
        known = {e["path"] for e in self.entries}
        for file in self.dir.glob("step-*.pt"):
            match = _STEP_FILE.match(file.name)
            if match and file.name not in known:
                mtime = file.stat().st_mtime
                entry = {"step": int(match[1]), "metric": None, "path": file.name}
                self.entries.append(dict(entry, wall_time=mtime))
        self.entries.sort(key=lambda e: e["step"])
