"""Facts about this process that every engine and the harness read the same way."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path


def peak_rss_bytes() -> int:
    """Peak RSS of this process, bytes: Linux's VmHWM (reset by exec), else ru_maxrss (which on
    Linux keeps the peak of the process image before exec: a harness started by a big parent
    would report the parent's peak)."""
    with contextlib.suppress(OSError):  # not Linux: ru_maxrss below
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
