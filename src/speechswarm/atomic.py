"""Files written whole or not at all: a temporary file beside the target, renamed over it.

    with atomic_open(path) as f:            # text, UTF-8; atomic_open(path, "wb") for bytes
        f.write(text)

A reader sees the old file or the new one, never half of one; an exception (or Ctrl-C)
removes the temporary file and leaves the old file as it was. The new file gets the mode an
ordinary `open()` would give it (0o666 less the umask): `tempfile.mkstemp` creates 0o600,
which would hide manifests, reports and checkpoints from the other users of a machine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@functools.cache
def file_mode() -> int:
    """0o666 less the process's umask (read once: os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temp_beside(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temporary file in `path`'s folder, with an ordinary file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())
    return fd, tmp


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", fsync: bool = False) -> Iterator[IO]:
    """A file object to write `path` through; renamed into place when the block ends."""
    path = Path(path)
    fd, tmp = temp_beside(path)
    try:
        text = {} if "b" in mode else {"encoding": "utf-8"}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
