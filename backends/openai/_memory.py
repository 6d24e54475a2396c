"""The memory of a server process on this machine: its process tree (found by the port it listens
on), the tree's resident memory, and its GPU memory from NVML."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any


def local_listener_tree(root: str) -> list[Any]:
    """Processes (psutil) of a local server an attached backend talks to (found by its listening port)."""
    from urllib.parse import urlsplit

    import psutil

    parts = urlsplit(root)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    port = parts.port or 80
    with contextlib.suppress(psutil.Error, OSError):  # not ours to see (another user's process): no RSS
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                p = psutil.Process(c.pid)
                return [p, *p.children(recursive=True)]
    return []


def tree_rss(procs: Sequence[Any]) -> int | None:
    """The resident memory (bytes) of `procs` together; None for no processes."""
    if not procs:
        return None
    import psutil

    rss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss += p.memory_info().rss
    return rss


def nvml_process_bytes(pids: Sequence[int]) -> int | None:
    """GPU memory (bytes) used by `pids` on all GPUs, from NVML; None without a GPU or NVML."""
    if not pids:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        total, wanted = 0, set(pids)
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid in wanted and p.usedGpuMemory:
                    total += int(p.usedGpuMemory)
        return total
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
