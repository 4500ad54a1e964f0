"""Facts about this machine that caches are keyed on, and where speechswarm caches files.

host.cache_root()      # $SPEECHSWARM_CACHE or ~/.cache/speechswarm
host.cpu_flags()       # the CPU's feature line from /proc/cpuinfo
host.cpu_model()       # e.g. "AMD EPYC 9454P 48-Core Processor"
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cache_root() -> Path:
    """Where built artefacts live (the fused GRU kernel, Kokoro's rewritten model):
    $SPEECHSWARM_CACHE, else ~/.cache/speechswarm."""
    return Path(os.environ.get("SPEECHSWARM_CACHE") or Path.home() / ".cache" / "speechswarm")


def cpu_flags() -> str:
    """The "flags" (x86) or "Features" (ARM) line of /proc/cpuinfo; where there is none,
    `platform.processor()`."""
    return _cpuinfo_line(("flags", "Features")) or platform.processor()


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo; where there is none, `platform.processor()`
    or the machine type."""
    line = _cpuinfo_line(("model name",))
    if line:
        return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpuinfo_line(prefixes: tuple[str, ...]) -> str:
    """The first line of /proc/cpuinfo that starts with one of `prefixes`, or ""."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(prefixes):
                return line
    except OSError:
        pass
    return ""
