"""The console shows paritybench's information, not library start-up noise: TensorFlow/absl C++
lines and grain's warning go to the library log (`--verbose` shows them)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NOISE, assert_quiet

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, log: Path):
    env = {**os.environ, "PARITYBENCH_LIBRARY_LOG": str(log)}
    env.pop("PARITYBENCH_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


@pytest.mark.parametrize("command", [
    ["generate", "Hi", "--backend", "jax", "--max-tokens", "3"],
    ["run", "--backend", "jax", "--suite", ROOT / "evals" / "smoke.yaml", "--no-bench", "--max-tokens", "3"],
])
def test_no_library_noise_on_the_console(tmp_path, command):
    if command[0] == "run":
        command = [*command, "--out", tmp_path / "out"]
    p = cli(*command, log=tmp_path / "libraries.log")
    assert p.returncode == 0, p.stderr[-2000:]
    assert_quiet(p)
    assert NOISE.search((tmp_path / "libraries.log").read_text())  # kept, not lost


def test_verbose_shows_it(tmp_path):
    """The check above can fail: with --verbose the same lines reach the console."""
    p = cli("--verbose", "generate", "Hi", "--backend", "jax", "--max-tokens", "3", log=tmp_path / "libraries.log")
    assert p.returncode == 0, p.stderr[-2000:]
    assert NOISE.search(p.stderr)
