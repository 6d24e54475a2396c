"""Facts about this process that every engine and the harness read the same way."""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path

from ._errors import InputError


def peak_rss_bytes() -> int:
    """Peak RSS of this process, bytes: Linux's VmHWM (reset by exec), else ru_maxrss (which on
    Linux keeps the peak of the process image before exec: a harness started by a big parent
    would report the parent's peak)."""
    with contextlib.suppress(OSError):  # not Linux: ru_maxrss below
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# The instruction sets engines choose kernels by, as Linux names them in /proc/cpuinfo's flags, and
# the levels PARITYBENCH_CPU_ISA may name to make this machine behave as a lesser one (the harness's
# checks here, and vLLM's kernel choice in its environment: backends/vllm_env/fixes.py).
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni", "amx_tile",
             "amx_bf16", "amx_int8")
ISA_NAMES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_tile": "AMX"}
ISA_LEVELS = {
    "avx2": ("avx2",),
    "avx512": ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
    "avx512_bf16": ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"),
}


def cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """The instruction sets of ISA_FLAGS this machine's CPU has (from /proc/cpuinfo, or the text
    given), less those above the level PARITYBENCH_CPU_ISA names (avx2, avx512, avx512_bf16)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    have = frozenset(f for f in ISA_FLAGS if f in flags)
    level = os.environ.get("PARITYBENCH_CPU_ISA", "")
    if not level:
        return have
    if level not in ISA_LEVELS:
        raise InputError(f"PARITYBENCH_CPU_ISA={level!r}: choose one of {', '.join(ISA_LEVELS)} (or leave it unset)")
    return have & frozenset(ISA_LEVELS[level])


def describe_cpu(features: frozenset[str]) -> str:
    """The highest of the levels engines tell apart, in words: 'AMX', 'AVX-512 (no AMX)',
    'AVX2 only (no AVX-512, no AMX)' or 'no AVX2'."""
    if "amx_tile" in features:
        return "AMX"
    if "avx512f" in features:
        return "AVX-512 (no AMX)"
    return "AVX2 only (no AVX-512, no AMX)" if "avx2" in features else "no AVX2"
