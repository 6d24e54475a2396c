"""The reproducibility block of every result: code, packages of both environments, hardware."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What decides the numbers on each side (everything else is in `installed`).
HARNESS_KEY = ("paritybench", "gemma", "jax", "jaxlib", "flax", "orbax-checkpoint", "numpy", "sentencepiece",
               "safetensors", "aiohttp", "kauldron")


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def harness_packages() -> dict[str, str]:
    """Every package of this (the harness / gemma) environment, name -> version."""
    out: dict[str, str] = {}
    for d in distributions():
        name = (d.metadata["Name"] or "").lower().replace("_", "-")
        if name:
            out[name] = d.version
    return dict(sorted(out.items()))


def engine_environments() -> dict[str, tuple[dict[str, str], tuple[str, ...]]]:
    """The environments engines run in besides the harness's (each engine declares its own:
    `environment_packages`): environment name -> (its packages, the packages that decide the numbers)."""
    import backends

    out: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {}
    for name in backends.engines():
        try:
            declared = backends.engine_class(name).environment_packages()
        except (ImportError, AttributeError):  # a plug-in that cannot load here, or one without the hook
            continue
        if declared is not None:
            env, installed, key = declared
            out.setdefault(env, (installed, key))
    return out


def hardware() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # not Linux: keep platform's answer
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpus: list[str] = []
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        gpus = [g.strip() for g in p.stdout.splitlines() if g.strip()] if p.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        gpus = []
    from backends import cpu_features, describe_cpu

    features = cpu_features()  # engines pick kernels (and refuse options) by these
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_isa": describe_cpu(features), "cpu_features": sorted(features),
            "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "gpus": gpus}


def reproducibility(config: dict[str, Any], sampling: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to rerun and to explain a difference between two runs."""
    harness, engines = harness_packages(), engine_environments()
    return {
        "code": git_commit(),
        "hardware": hardware(),
        "packages": {"harness": {k: harness[k] for k in HARNESS_KEY if k in harness},
                     **{env: {k: pk[k] for k in key if k in pk} for env, (pk, key) in engines.items()}},
        "installed": {"harness": harness, **{env: pk for env, (pk, _) in engines.items()}},
        "config": config,
        "seed": config.get("seed"),
        "sampling": sampling,
        "environment_variables": {k: v for k, v in os.environ.items()
                                  if k.startswith(("VLLM_CPU_", "XLA_", "JAX_", "PARITYBENCH_")) and "KEY" not in k},
    }
