"""Silencing what C and C++ libraries print straight to file descriptors 1 and 2.

    with quiet_native_output():   # KenLM's progress bar, the ONNX exporter's notes
        lm = KenLM(path, words)

Python's `contextlib.redirect_stdout` cannot catch these: they bypass `sys.stdout`. Errors
still arrive as exceptions.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


@contextmanager
def quiet_native_output():
    """Silence C-level stdout/stderr (fds 1 and 2) for the duration of the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
