"""Shared fixtures: tiny models are built once per machine (cache) and backends once per session."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PARITYBENCH_NO_KAGGLE", "1")
# JAX's persistent compilation cache, for this process and every command the tests start: the same
# tiny models are compiled again in each subprocess otherwise (about 10 s of a 25 s CLI run). A hit
# still counts as a compilation (the backend_compile event wraps the cache read), so the checks of
# "no compilation after warm-up" keep their meaning.
_cache = os.environ.get("PARITYBENCH_CACHE", os.path.expanduser("~/.cache/paritybench"))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_cache, "jax-compilation-cache-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA's CPU code generation without LLVM's optimisation passes: the tests run tiny models, whose time
# is compilation, not execution (tests/test_gemma3n.py's two slowest tests from an empty compilation
# cache: 101 s instead of 132 s; 51 s instead of 59 s from a full one). Results differ from the
# optimised code's by float32 rounding only (tiny-gemma3: the same tokens, log-probs within 4.8e-7),
# far inside every parity tolerance. What users run (the CLI, the demo, benchmarks) is untouched.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
# Every vLLM server the tests start (several at once under two workers) reserves a quarter GiB of
# CPU KV cache instead of 1 GiB: the tiny models need a few MiB, and the cache is resident memory.
os.environ.setdefault("PARITYBENCH_VLLM_CPU_KV_CACHE_GIB", "0.25")


def pytest_addoption(parser):
    """Options of the parity suite (tests/parity): the same tests on the tiny model in CI and on a
    real model on a GPU machine, e.g. `pytest tests/parity --model gemma-3-4b-it --vllm-url URL`."""
    g = parser.getgroup("parity")
    g.addoption("--model", default="tiny-gemma3", help="model for the parity suite (registry name or folder)")
    g.addoption("--backends", default="vllm,jax", help="the two sides, e.g. vllm,jax")
    g.addoption("--suite", default=None, help="suite YAML (default: evals/smoke.yaml)")
    g.addoption("--dtype", default=None, help="compute dtype of both sides (default: the model's)")
    g.addoption("--vllm-url", default=None, help="attach to this vLLM server instead of starting one")
    g.addoption("--max-tokens", type=int, default=24, help="greedy tokens per prompt")
    g.addoption("--tolerance", default=None, choices=["float32", "bfloat16"], help="tolerance profile")
    g.addoption("--logprob-atol", type=float, default=None, help="override the profile's max |dlogprob| bound")


def _session_backend(name: str, model: str, **options):
    """One backend for the whole session (a vLLM backend: one real server), closed at the end."""
    import backends

    b = backends.get(name, model=model, **options)
    yield b
    b.close()


@pytest.fixture(scope="session")
def tiny_text_dir():
    from backends import models

    return models.ensure_tiny("tiny-gemma3")


@pytest.fixture(scope="session")
def tiny_vision_dir():
    from backends import models

    return models.ensure_tiny("tiny-gemma3-vision")


@pytest.fixture(scope="session")
def jax_text(tiny_text_dir):
    yield from _session_backend("jax", "tiny-gemma3")


@pytest.fixture(scope="session")
def hf_text(tiny_text_dir):
    yield from _session_backend("hf", "tiny-gemma3")


@pytest.fixture(scope="session")
def jax_vision(tiny_vision_dir):
    yield from _session_backend("jax", "tiny-gemma3-vision")


def image(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def vllm_text(tiny_text_dir):
    """One real vLLM server (vllm-cpu) serving tiny-gemma3 for the whole test session."""
    yield from _session_backend("vllm", "tiny-gemma3")


@pytest.fixture(scope="session")
def vllm_vision(tiny_vision_dir):
    """A real vLLM server serving tiny-gemma3-vision for the whole session, with its layer-capture
    extension (dev mode; it changes nothing until a capture installs its hooks)."""
    yield from _session_backend("vllm", "tiny-gemma3-vision", layer_capture=True)


def cli_in_process(*args, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`paritybench ARGS` run in this test process (`harness.cli.execute`), as `subprocess.run` with
    `capture_output=True, text=True` reports it. A new process costs about 11 CPU-seconds of
    imports (JAX, TensorFlow through gemma, transformers) and traces every JAX program again; here
    the worker's are reused. Tests about the process itself (its console's library noise, signals,
    the installed command) start one instead."""
    from harness import cli

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        code = cli.execute(argv)
    return subprocess.CompletedProcess(["paritybench", *argv], code, out.getvalue(), err.getvalue())


# What must never reach the console of a paritybench command (the libraries' own start-up and
# logging output is kept in the library log; `--verbose` shows it).
NOISE = re.compile(r"I0000 |absl::|cudart_stub|oneDNN custom operations|WARNING:absl|Grain multiprocess|OCDBT")


def assert_quiet(p) -> None:
    """The completed process `p` printed none of the libraries' noise."""
    noisy = [line for line in (p.stdout + p.stderr).splitlines() if NOISE.search(line)]
    assert not noisy, noisy


def assert_engine_core_beside_its_worker(server) -> set[int]:
    """A managed CPU server's placement: the engine core's threads on its worker's OpenMP cores
    (the worker in a process of its own, or inside the engine core), the API server's elsewhere.
    Returns the worker's cores."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("needs 2 or more cores")
    procs = {p.name(): p for p in server.process_tree()}
    engine = next(p for n, p in procs.items() if n.startswith("VLLM::EngineCore"))
    worker = next((p for n, p in procs.items() if n.startswith("VLLM::Worker")), None)
    # vllm-cpu's rule for a worker process: every allowed core but the last (kept for the API server)
    cores = set(worker.cpu_affinity()) if worker else set(sorted(os.sched_getaffinity(0))[:-1])
    assert cores and cores < set(os.sched_getaffinity(0))
    assert all(set(os.sched_getaffinity(t.id)) == cores for t in engine.threads())
    api_cores = {c for t in procs["vllm"].threads() for c in os.sched_getaffinity(t.id)}
    assert api_cores and not api_cores & cores
    assert server.placement["VLLM::EngineCore"] == sorted(cores)
    return cores


def still_running(pids) -> list[int]:
    """The pids of `pids` that still run (zombies count as gone)."""
    import psutil

    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


# ---------------------------------------------------------------- model variants (planted differences)


def variant(tmp_path, base_dir, name, *, arch=None, params_fn=None):
    from backends import models as ckpt

    card = ckpt.read_card(base_dir)
    if arch:
        card = card.model_copy(update={"arch": card.arch.model_copy(update=arch), "name": name})
    params = ckpt.load_params(base_dir / ckpt.PARAMS)
    if params_fn:
        params = params_fn(params)
    return ckpt.write_model_dir(tmp_path / name, card, params, base_dir / ckpt.TOKENIZER)


def perturb_one_tensor(params):
    """One weight tensor (layer 2's MLP gate) times (1 + 1% noise)."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    path, w = next((p, x) for p, x in flat if "layer_2" in jax.tree_util.keystr(p) and "gating" in jax.tree_util.keystr(p))
    noise = np.random.default_rng(0).standard_normal(np.shape(w)).astype(np.float32)
    new = np.asarray(w) * (1 + 0.01 * noise)

    def swap(p, x):
        return new if p == path else x

    return jax.tree_util.tree_map_with_path(swap, params)


# ---------------------------------------------------------------- how the files share two workers
# `make test` runs two pytest-xdist workers. Each test file is one unit of work (as with
# `--dist loadfile`), except that the files using the session's vision server form one unit, so
# that this server (about 55 CPU-seconds to start) starts once. The units start heaviest first (the
# files that start vLLM servers, as measured on these 2-core machines), so that no long file is
# left for the end while the other worker waits. (pytest-xdist's own `--dist loadgroup` does not
# group under pytest 9, whose test ids it no longer changes.)
VISION_FILES = ("tests/test_compare.py", "tests/test_localize.py", "tests/test_parity_engine.py",
                "tests/test_three_way.py", "tests/test_vllm_vision.py", "tests/parity/test_parity.py")
# After the files that start vLLM servers come the other files of more than ~25 s (from nothing,
# 2026-12-03), longest first: the last unit either worker takes is then a short one (with these
# files in file order, one worker idled ~80 s at the end).
HEAVY_FIRST = ("vllm_vision", "tests/test_faults.py", "tests/test_sides.py", "tests/test_real_model.py",
               "tests/test_vllm_failures.py",
               "tests/test_gemma3n.py", "tests/test_vllm_gemma3n.py", "tests/test_vllm_pool.py",
               "tests/test_backends_common.py", "tests/test_vllm_backend.py", "tests/test_openai_engine.py",
               "tests/test_llamacpp.py",
               "tests/test_benchmarks.py",
               "tests/test_console.py", "tests/test_jax_mesh.py", "tests/test_jax_backend.py", "tests/test_envs.py", "tests/test_models.py",
               "tests/test_diagnosis.py", "tests/test_cli.py", "tests/test_bench.py")


def _unit(nodeid: str) -> str:
    file = nodeid.split("::")[0]
    return "vllm_vision" if file in VISION_FILES else file


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (make test's) with the units above; any other --dist as pytest-xdist has it."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Units(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return Units(config, log)


def pytest_collection_modifyitems(config, items):
    uses = sorted({i.nodeid.split("::")[0] for i in items if "vllm_vision" in i.fixturenames} - set(VISION_FILES))
    if uses:
        raise pytest.UsageError(f"tests/conftest.py: add {', '.join(uses)} to VISION_FILES (they use vllm_vision)")
    rank = {name: n for n, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda i: rank.get(_unit(i.nodeid), len(rank)))  # stable: each file's tests stay in order
