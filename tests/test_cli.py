"""The `paritybench` command as a user runs it."""

import subprocess
import sys

from conftest import assert_quiet

from backends import REGISTRY


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)


def test_models_list_names_every_entry():
    p = _cli("models", "list")
    assert p.returncode == 0, p.stderr
    for name in REGISTRY:
        assert name in p.stdout


def test_models_build_prints_folder(tmp_path):
    p = _cli("models", "build", "tiny-gemma3", "--out", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr
    assert_quiet(p)  # Orbax's "Skipping merge of OCDBT checkpoints" is in the library log
    assert p.stdout.strip() == str(tmp_path / "m")
    assert (tmp_path / "m" / "hf" / "config.json").is_file() and (tmp_path / "m" / "params").is_dir()


def test_commands_keep_jax_programs_in_the_cache_folder(monkeypatch, tmp_path):
    import os

    from harness.cli import jax_compilation_cache

    for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PARITYBENCH_CACHE", str(tmp_path))
    jax_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax-compilation-cache")
    assert os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # the user's choice stands: no cache
    jax_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == ""
