"""The environment scripts: every clone runs its own code over the one cached set of dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _clone(dest: Path) -> Path:
    """The files scripts/ensure_env.sh reads (its cache key), and the package, copied."""
    dest.mkdir()
    for name in ("scripts", "constraints", "harness", "backends"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def test_two_clones_side_by_side_each_run_their_own_code(tmp_path):
    deps = Path((ROOT / ".venv" / "paritybench-layer").read_text().strip())  # this clone's cached dependencies
    env = {**os.environ, "PARITYBENCH_ENV_CACHE": str(deps.parent)}
    a, b = _clone(tmp_path / "a"), _clone(tmp_path / "b")
    (b / "harness" / "__init__.py").write_text((b / "harness" / "__init__.py").read_text() + "\nCLONE = 'b'\n")
    for clone in (a, b, a):  # a again after b: the last set-up must not take the other clone over
        subprocess.run([clone / "scripts" / "ensure_env.sh"], env=env, check=True, capture_output=True)
    for clone, mark in ((a, "None"), (b, "b")):
        code = "import harness, jax; print(harness.__file__, getattr(harness, 'CLONE', None))"
        out = subprocess.run([clone / ".venv" / "bin" / "python", "-c", code], cwd=tmp_path, env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        assert out == [str(clone / "harness" / "__init__.py"), mark]
        # the console command and the tools run this clone's code too, from any folder
        cmd = subprocess.run([clone / ".venv" / "bin" / "paritybench", "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert cmd.returncode == 0 and "compare" in cmd.stdout
        ver = subprocess.run([clone / ".venv" / "bin" / "pytest", "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert ver.returncode == 0 and "pytest" in ver.stdout + ver.stderr
    assert (deps / "bin" / "python").exists() and not list(deps.glob("lib/python3.11/site-packages/__editable__*"))
