"""User errors: inputs a person can fix, and the one place they become a one-line message.

    speechswarm train --config tiny optim.lr=fast
    speechswarm train: error: optim.lr: expected a number, got 'fast' (str)

A `SpeechswarmError` means "what you gave is wrong, and this is what to do": a config key or
value, a command-line argument, a file or path, a manifest or transcript, a checkpoint, a
missing optional package. `run_command` prints it as one line and exits 1. Every other
exception (a bug, out of memory, a peer that died) keeps its traceback: hiding it would hide
the one thing needed to fix it.

Each subclass also derives from the builtin exception its raise sites used before, so callers
that catch `ValueError`, `FileNotFoundError` or `RuntimeError` keep working. Modules define
narrower subclasses beside their raise sites (`data.audio.AudioError`, `data.manifest.
ManifestError`, `onnx_runtime.OnnxModelError`, ...). This module imports nothing from the
package, so any layer may raise these.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import os
import signal
import sys
from pathlib import Path


class SpeechswarmError(Exception):
    """An error in what the user gave; the message names it and says what to do."""


class ConfigError(SpeechswarmError, ValueError):
    """A configuration key or value is wrong; the message names the dotted key."""


class UsageError(SpeechswarmError, ValueError):
    """A command's arguments are wrong or do not fit together (`--lm` with greedy decoding)."""


class DataError(SpeechswarmError, ValueError):
    """A manifest, corpus, transcript, text file, tokenizer or client hook cannot be used."""


class InputNotFoundError(SpeechswarmError, FileNotFoundError):
    """A file or folder the user named (or a config points to) does not exist."""


class UnavailableError(SpeechswarmError, RuntimeError):
    """Something the command needs is not on this machine: an optional package, a
    command-line tool, a CUDA device, native bf16."""


class CheckpointError(SpeechswarmError):
    """A checkpoint that cannot be loaded; the message names the file and what to do.

    `reason` is one of: missing_file, corrupt_file, unsafe_content, nonfinite_weights (raised
    by `speechswarm.inference.load`), unwritable (a full disk or read-only folder on save).
    """

    def __init__(self, path: str | os.PathLike, reason: str, detail: str):
        super().__init__(f"checkpoint {path}: {detail}")
        self.path = Path(path)
        self.reason = reason


# A missing input path is the user's to fix even where a library raised the builtin (an
# open() of a path from the command line); the OS message names the path.
USER_ERRORS: tuple[type[BaseException], ...] = (SpeechswarmError, FileNotFoundError)
# So is a write the file system refuses (a full disk, a read-only or unwritable folder),
# wherever it happens (a log, a report, a checkpoint); the OS message names the path.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES})


def user_message(e: BaseException) -> str:
    """`e`'s message for people. A user error raised in a DataLoader worker (a transcript
    outside the alphabet, a refused shard) comes back from the loader with the worker's
    whole traceback as its message ("Caught DataError in DataLoader worker process 0.\n
    Original Traceback ..."); its last line holds the original message."""
    text = str(e)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "speechswarm.errors.DataError: <message>"
        text = last.split(": ", 1)[-1]
    return text


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv` with `parser` and call the chosen command's `func(args)`; returns the
    exit code. A user error (`USER_ERRORS`) prints `<prog> <command>: error: <message>` on
    stderr and returns 1, as does a write the file system refuses (`DISK_ERRNOS`); Ctrl-C
    returns 130; anything else propagates with its traceback.
    SIGUSR1 prints every thread's Python stack on stderr and the command goes on."""
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>`: where is a slow or stuck run?
        with contextlib.suppress(AttributeError, OSError, ValueError):  # no fd 2 (embedded)
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"{parser.prog} {args.command}: error: {user_message(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        hint = "free space (or write elsewhere)" if full else "check the permissions"
        if e.errno == errno.EROFS:
            hint = "remount it writable (or write elsewhere)"
        hint += ", then run the command again"
        print(f"{parser.prog} {args.command}: error: {e}; {hint}", file=sys.stderr)
        return 1
