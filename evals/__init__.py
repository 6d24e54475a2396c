"""Prompt suites (YAML) and their media. `evals.path(name)` finds a shipped suite."""

from pathlib import Path

ROOT = Path(__file__).parent


def path(name: str) -> Path:
    return ROOT / (name if name.endswith(".yaml") else f"{name}.yaml")
