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


# ---------------------------------------------------------------- native libraries

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
CHECK = ROOT / "scripts" / "check_native.py"


def _harness_python() -> Path:
    return Path((ROOT / ".venv" / "paritybench-layer").read_text().strip()) / "bin" / "python"


def test_every_native_import_of_both_environments_loads():
    for python, kind in ((_harness_python(), "harness"), (VLLM_PYTHON, "vllm")):
        p = subprocess.run([python, CHECK, kind], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr[-2000:]


def test_soundfile_loads_its_own_libsndfile_not_the_systems():
    """The vLLM environment's soundfile (imported by transformers, so by every vLLM start) loads
    the libsndfile inside its wheel: the environment works on a machine without libsndfile1, and
    the same on one where another package (chromium) brought it."""
    code = ("import soundfile, sys; print(soundfile.__libsndfile_version__); "
            "print(*sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libsndfile' in l}), sep='\\n')")
    p = subprocess.run([VLLM_PYTHON, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    version, *files = p.stdout.split()
    env = str((ROOT / ".venv-vllm").resolve())
    assert version and files and all(f.startswith(env) and "_soundfile_data" in f for f in files), files


def test_the_native_check_names_the_package_the_library_and_what_to_run(tmp_path):
    """Planted failures in the vLLM environment: a soundfile that finds no libsndfile, and one that
    loads a libsndfile from outside the environment (as the pure-Python wheel does where the system
    has one). Each is one line: package and version, the library, what to run."""
    import shutil

    env = (ROOT / ".venv-vllm").resolve()
    bundled = next(env.glob("lib/python3.11/site-packages/_soundfile_data/libsndfile*.so"))
    system = tmp_path / "usr-lib" / "libsndfile.so.1"
    system.parent.mkdir()
    shutil.copy(bundled, system)
    plants = {
        "missing": "raise OSError(\"cannot load library 'libsndfile.so': libsndfile.so: cannot open shared object file\")",
        "system": f"import ctypes\n_lib = ctypes.CDLL({str(system)!r})\ndef write(*a, **k): pass\n"
                  f"def info(*a, **k):\n    class I: frames = 160\n    return I()\n",
    }
    for name, body in plants.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "soundfile.py").write_text(body + "\n")
        p = subprocess.run([VLLM_PYTHON, CHECK, "vllm"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / name)})
        lines = [line for line in p.stdout.splitlines() if line.startswith("error:")]
        assert p.returncode == 1 and len(lines) == 1, p.stdout + p.stderr[-2000:]  # transformers' import: the same cause
        assert lines[0].startswith("error: soundfile==") and "--force-reinstall --no-deps soundfile==" in lines[0]
        if name == "missing":
            assert "cannot load libsndfile.so" in lines[0] and "apt-get install libsndfile1" in lines[0]
        else:
            assert f"loads {system}, not a libsndfile of its own" in lines[0]


def test_the_llamacpp_build_says_what_is_missing_in_one_line(tmp_path):
    """A machine without cmake: scripts/ensure_llamacpp_env.sh stops before anything is fetched, with one
    line that names the tool and how to install it (exit 2)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "grep", "tr", "sort", "sha256sum", "cut", "cat", "rm", "mkdir", "dirname", "awk", "ls"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "PARITYBENCH_LLAMACPP_ENV": str(tmp_path / "llama")}
    p = subprocess.run(["bash", "scripts/ensure_llamacpp_env.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: building llama.cpp needs cmake, which is not on PATH; install it (apt-get install cmake build-essential)"]
    assert not (tmp_path / "llama" / "src").exists()
