"""`OpenAICompatibleBackend`: `Backend` on one or several servers that speak the OpenAI API.

What an engine of this kind shares (vLLM's, the `openai` engine's; llama.cpp's server or SGLang
would be one more subclass): attaching to its URLs, the model it serves (`/v1/models`), streamed
generation, the benchmark path, teacher-forced scoring, the tokenizer endpoints, memory, liveness.
An engine subclass overrides methods for what is its own, never a branch on its name:
`_check_server` (is a URL a live server of its kind), `_extra_body` and `_logprobs_as_ids` (the
request fields beyond OpenAI's), `_scoring` (how it scores), `advice_for`, `_explain_stream_error`,
`_connection_lost`, `_load_note` (its error messages), `_learn_endpoint` (what it finds out at
start), `_registry_modalities`, `_wanted_names`, `_server_processes`, `_on_gpu`, `describe`.

Endpoints used:
- generate: `/v1/chat/completions` (chats) or `/v1/completions` (`Request.text` plain prompts),
  streamed (time to first token, per-token arrival times), with `logprobs`/`top_logprobs` where
  the server returns them as token ids (`return_tokens_as_token_ids`); text, images (PNG data
  URIs) and audio (`input_audio`, WAV).
- generate_from_ids: `/v1/completions` with a prompt given as token ids (exact token parity).
- score / score_ids: `/v1/completions` over prompt ids + continuation with `prompt_logprobs`, or
  with `echo` + `logprobs` (`_scoring`); for prompts with images or audio, a chat request that
  continues the final assistant message (`continue_final_message`, `return_token_ids`).
- prompt_ids / text_ids / detokenize: `/tokenize` (with the chat messages: template applied, media
  expanded) and `/detokenize`, as vLLM serves them.
- memory: the resident memory of the server's process tree when it runs on this machine (found
  by its listening port), and its NVML per-process GPU memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .. import models
from .._base import MAX_TOP_LOGPROBS, BaseBackend
from .._errors import BackendGone, InputError, ModelError, ParitybenchError, UnsupportedError
from .._process import ServerProcess
from .._types import Capabilities, Generation, MemorySnapshot, Request, SamplingParams, TokenScores
from ._memory import local_listener_tree, nvml_process_bytes, tree_rss
from ._payloads import (
    Events,
    collect,
    echo_scores,
    openai_messages,
    prompt_logprob_scores,
    sampling_body,
    sse_data,
    stream_error,
)
from ._transport import Transport, root_url

_NO_AUDIO = "Gemma 3 has no audio encoder"
TimedResult = tuple[float, Generation | ParitybenchError]


def split_urls(url: str | Sequence[str]) -> list[str]:
    """"A,B" or [A, B] -> [A, B], without trailing slashes."""
    return [u.strip().rstrip("/") for u in (url.split(",") if isinstance(url, str) else url) if u.strip()]


class OpenAICompatibleBackend(Transport, BaseBackend):
    """`Backend` on OpenAI-compatible servers; a subclass is an engine (see the module docstring)."""

    served_model: str
    url: str
    urls: list[str]
    hf_dir: str | None
    spec: models.ModelSpec | None
    server: ServerProcess | None = None  # the server this engine started (None: attached)

    # ---------------------------------------------------------------- set-up

    def _open_client(self, model: str, *, api_key: str | None, max_concurrency: int, request_timeout: float,
                     retries: int) -> None:
        """The settings every request uses; nothing is sent yet."""
        self.model = str(model)
        self.spec = None
        self.hf_dir = None
        self.max_concurrency = max_concurrency
        self.request_timeout = request_timeout
        self.retries = retries
        self._api_key = api_key
        self.load_s = None
        self.warmup_s = None
        self._loop = None
        self._session = None

    def _check_server(self, url: str) -> None:
        """A live OpenAI-compatible server answers at `url` (its `/v1/models`), else a one-line error."""
        models_url = root_url(url, self.title) + "/v1/models"
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            r = httpx.get(models_url, headers=headers, timeout=10.0)
        except httpx.ConnectError:
            raise ModelError(f"cannot reach {self.title} at {url}: connection refused at {models_url}; start the "
                             "server or fix the URL") from None
        except httpx.HTTPError as e:
            raise ModelError(f"cannot reach {self.title} at {url} ({models_url}): {type(e).__name__} {e}") from None
        try:
            data = r.json() if r.status_code == 200 else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise InputError(f"the server at {url} is not OpenAI-compatible: GET {models_url} answered HTTP "
                             f"{r.status_code} ({r.headers.get('content-type') or 'no content type'}) without a "
                             "model list; give the URL of an OpenAI-compatible API, e.g. http://host:8000/v1")

    def _attached_urls(self, url: str | Sequence[str]) -> tuple[list[str], dict[str, str]]:
        """The servers at `url` ("A,B" or a list) and those not answering (root -> why); raises
        when none answers (a single server: its own error)."""
        urls = split_urls(url)
        if not urls:
            raise InputError(f"url={url!r}: give a server's URL, e.g. http://127.0.0.1:8000/v1 (several: A,B)")
        down: dict[str, str] = {}
        for u in urls:
            try:
                self._check_server(u)
            except ParitybenchError as e:
                if len(urls) == 1:
                    raise
                down[root_url(u, self.title)] = f"not answering at start: {e}"
        if len(down) == len(urls):
            raise InputError(f"none of the {self.title} servers {', '.join(urls)} answers: {next(iter(down.values()))}")
        return urls, down

    def _connect(self, urls: list[str], down: dict[str, str], *, modalities: Sequence[str] | None, warmup: bool,
                 t0: float) -> None:
        """Start the client on `urls` (those in `down` left out), learn the served model, the
        endpoint and the capabilities, and warm up; closes everything on failure."""
        self.url = next(u for u in urls if root_url(u, self.title) not in down)
        self.urls = urls
        self.root_url = root_url(self.url, self.title)
        # several attached servers share the requests (data parallel); one that stops answering is
        # left out and its requests go to the others
        self._roots = [root_url(u, self.title) for u in self.urls]
        self._gone = dict(down)
        self._turn = 0
        try:
            self._start_loop()
            self.served_model = self._served_model_name()
            self._learn_endpoint()
            self.capabilities = self._capabilities(modalities)
            self.load_s = time.perf_counter() - t0
            if warmup:
                self.warm_up()
        except BaseException:
            self.close()
            raise

    def _learn_endpoint(self) -> None:
        """What the engine finds out about its servers before its capabilities (nothing by default)."""

    # ---------------------------------------------------------------- model

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

    def weight_tensors(self) -> dict[str, np.ndarray] | None:
        """The served folder's tensors when it is on this machine (what the server loaded from)."""
        if self.hf_dir is None or not any(Path(self.hf_dir).glob("*.safetensors")):
            return None
        return models.hf_dir_tensors(self.hf_dir)

    def _local_config(self) -> dict[str, Any] | None:
        """The served folder's config.json when it is on this machine."""
        if self.hf_dir is None or not Path(self.hf_dir, "config.json").is_file():
            return None
        return json.loads(Path(self.hf_dir, "config.json").read_text())

    def _wanted_names(self) -> tuple[str, ...]:
        """The names the model may be served under."""
        return self.model, Path(self.model).name

    def _served_model_name(self) -> str:
        """The name the server(s) serve the model under (every server of a group must serve it)."""
        served: dict[str, list[str]] = {}
        for root in self._live_roots():
            data = self._run(self._at(root, lambda: self._get_json("/v1/models")))
            served[root] = [m["id"] for m in data.get("data", [])]
        names = next(iter(served.values()))
        if not names:
            raise ModelError(f"{self.title} at {self.url} serves no model")
        wanted = [n for n in names if n in self._wanted_names()]
        if wanted or len(names) == 1:
            name = (wanted or names)[0]
            missing = [r for r, ns in served.items() if name not in ns]
            if missing:
                raise InputError(f"{self.title} at {missing[0]} does not serve {name!r} (it serves {served[missing[0]]}); "
                                 "every server of a group must serve the same model")
            return name
        raise InputError(f"{self.title} at {self.url} serves {names}, not {self.model!r}; pass one of those as the model")

    def _served_entry(self) -> dict[str, Any]:
        """The served model's entry of `/v1/models` (`max_model_len` where the server says it)."""
        data = self._run(self._get_json("/v1/models")).get("data", [])
        return next((m for m in data if m.get("id") == self.served_model), {})

    def _registry_modalities(self) -> set[str] | None:
        """What the registry says this engine serves of the model; None: not known."""
        return None

    def _capabilities(self, modalities: Sequence[str] | None) -> Capabilities:
        """Modalities: given explicitly, else from the served folder's config.json, else from the
        registry entry; an attached server serving an unknown model is taken as text-only."""
        why: dict[str, str] = {}
        self.spec = models.find_spec(self.model)
        if self.spec is not None:
            why = dict(self.spec.unsupported.get(self.name, {}))
        cfg = self._local_config()
        registry = self._registry_modalities()
        if modalities is not None:
            mods = set(modalities)
        elif cfg is not None:
            mods = {"text"} | {m for m, key in (("image", "vision_config"), ("audio", "audio_config")) if cfg.get(key)}
        elif registry is not None:
            mods = registry
        else:
            mods = {"text"}
            why = {m: f"unknown for a server serving {self.model!r}; pass modalities=['text', '{m}'] if it takes {m}"
                   for m in ("image", "audio")}
        for m, reason in (("image", "the model has no vision tower"), ("audio", _NO_AUDIO)):
            if m not in mods:
                why.setdefault(m, reason)
        return Capabilities(modalities=frozenset(mods), streaming=True, max_top_logprobs=MAX_TOP_LOGPROBS,
                            unsupported={m: r for m, r in why.items() if m not in mods},
                            chat=cfg is None or models.chat_template_sha256(Path(self.hf_dir or "")) is not None)

    @property
    def vocab_size(self) -> int | None:
        """From the served folder's config.json; None for a server whose folder is not local."""
        cfg = self._local_config()
        if cfg is None:
            return None
        size: Any = cfg.get("text_config", cfg).get("vocab_size") or cfg.get("vocab_size")
        return int(size)

    def describe(self) -> dict[str, Any]:
        """What this side is, for the record next to every result (never the API key). The servers
        left out are read after its requests, which find out about a server that stopped."""
        served = self._served_entry()
        return {
            "backend": self.name, "model": self.model, "served_model": self.served_model, "url": self.url,
            "urls": self.urls, "left_out": dict(self._gone), "max_model_len": served.get("max_model_len"),
            "vocab_size": self.vocab_size, "load_s": self.load_s, "warmup_s": self.warmup_s,
        }

    def _connection_lost(self) -> None:
        """A managed server that died: `BackendGone` with what its log says."""
        if self.server is not None and not self.server.alive():
            self.server.check_alive()

    def check_alive(self) -> None:
        """A managed server that died, or every attached server stopped answering: `BackendGone`.
        (Requests find out about each server.)"""
        if self.server is not None:
            self.server.check_alive()
        if self._gone and len(self._gone) == len(self._roots):
            raise BackendGone(f"{self.name}: every server stopped answering: "
                              + "; ".join(f"{r}: {w}" for r, w in self._gone.items()))

    # ---------------------------------------------------------------- prompts

    def prompt_ids(self, request: Request) -> list[int]:
        """The prompt ids the server feeds for `request` (`/tokenize` with the chat template; BOS
        included, image soft tokens expanded)."""
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

    # ---------------------------------------------------------------- generation

    def _extra_body(self, s: SamplingParams) -> dict[str, Any]:
        """Request fields beyond OpenAI's: top_k and ignore_eos (as vLLM, SGLang and llama.cpp take
        them); an engine adds its own."""
        extra: dict[str, Any] = {}
        if s.top_k is not None:
            extra["top_k"] = s.top_k
        if s.ignore_eos:
            extra["ignore_eos"] = True
        return extra

    def _logprobs_as_ids(self) -> bool:
        """Whether the server returns log-probs' tokens as ids ("token_id:N"): only then are
        log-probs asked for (a token's text does not name its id). False by default."""
        return False

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
                  offsets: Sequence[float] | None = None) -> list[TimedResult]:
        """Benchmark path: each (request, sampling) sent at its offset (seconds from now), at most
        `concurrency` in flight, streamed, never retried; returns (send time on the
        `time.perf_counter` clock, generation or the error) per request, in order."""
        for r, _ in pairs:
            self.capabilities.check(r, self.name)
        return self._run(self._timed_all(list(pairs), concurrency, list(offsets or [0.0] * len(pairs))))

    async def _timed_all(self, pairs: list[tuple[Request, SamplingParams]], concurrency: int | None,
                         offsets: list[float]) -> list[TimedResult]:
        sem = asyncio.Semaphore(concurrency or len(pairs) or 1)
        t0 = time.perf_counter()

        async def one(req: Request, s: SamplingParams, at: float) -> TimedResult:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            async with sem:
                start = time.perf_counter()
                kind, body = self._body(req, s)
                try:
                    gen = await asyncio.wait_for(self._stream(req.id, kind, body), timeout=self.request_timeout)
                    return start, gen
                except TimeoutError:
                    return start, ModelError(self._timeout_message(f"request {req.id or ''}".strip()))
                except ParitybenchError as e:
                    return start, e
                except Exception as e:  # connection reset and the like: counted as a failed request
                    return start, ModelError(f"request {req.id or ''}: {type(e).__name__}: {e}")

        return await self._gather([one(r, s, at) for (r, s), at in zip(pairs, offsets)])

    def _chat_body(self, request: Request, s: SamplingParams) -> dict[str, Any]:
        """The streamed `/v1/chat/completions` request for `request` under `s`."""
        body = {"model": self.served_model, "messages": openai_messages(request), "stream": True,
                "stream_options": {"include_usage": True}, **sampling_body(s), **self._extra_body(s)}
        if s.return_logprobs and self._logprobs_as_ids():
            body.update(logprobs=True, top_logprobs=s.logprobs)
        return body

    def _completion_body(self, prompt: list[int] | str, s: SamplingParams) -> dict[str, Any]:
        """The streamed `/v1/completions` request for `prompt` (ids, or a text the server
        tokenizes with BOS) under `s`."""
        body = {"model": self.served_model, "prompt": prompt, "stream": True, "stream_options": {"include_usage": True},
                **sampling_body(s), **self._extra_body(s)}
        if s.return_logprobs and self._logprobs_as_ids():
            body["logprobs"] = s.logprobs
        return body

    def _body(self, request: Request, s: SamplingParams) -> tuple[str, dict[str, Any]]:
        """The streamed request for `request`: a chat to `/v1/chat/completions`, a plain-text
        prompt to `/v1/completions`."""
        if request.text is not None:
            return "completion", self._completion_body(request.text, s)
        return "chat", self._chat_body(request, s)

    async def _generate_one(self, request: Request, s: SamplingParams) -> Generation:
        what = f"request {request.id}" if request.id else "request"
        kind, body = self._body(request, s)
        return await self._call(what, self._stream, request.id, kind, body)

    async def _completion(self, prompt: list[int], s: SamplingParams, rid: str | None) -> Generation:
        what = f"request {rid}" if rid else "request"
        return await self._call(what, self._stream, rid, "completion", self._completion_body(prompt, s))

    async def _stream(self, rid: str | None, kind: str, body: dict[str, Any]) -> Generation:
        """Send one streamed request; keep each server-sent event with its arrival time."""
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        what = f"request {rid}" if rid else "request"
        t0 = time.perf_counter()
        events: Events = []
        async with await self._request("POST", path, what, body) as response:
            async for line in response.content:  # one line at a time
                event = sse_data(line)
                if event is not None:
                    events.append((time.perf_counter() - t0, event))
        message = stream_error(events)
        if message is not None:
            raise ModelError(f"request {rid or ''}: {self.title} reported an error mid-stream: "
                             f"{self._explain_stream_error(message)}")
        return collect(rid, kind, body, t0, events, self.title)

    def _explain_stream_error(self, message: str) -> str:
        """The server's mid-stream error message, with what the engine knows of its cause."""
        return message

    # ---------------------------------------------------------------- scoring

    def _scoring(self, media: bool) -> str:
        """How this server scores (`media`: a prompt with images or audio, which travels as a chat):
        "prompt_logprobs" (vLLM's extension: each fed id's log-prob) or "echo" (a completion that
        echoes its prompt with `logprobs`; text prompts only)."""
        return "prompt_logprobs"

    def _scoring_fields(self, top: int, media: bool) -> dict[str, Any]:
        if self._scoring(media) == "echo":  # the echoed tokens as ids: checked against those fed
            return {"echo": True, "logprobs": top, "return_tokens_as_token_ids": True}
        return {"prompt_logprobs": top}

    def score(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
              top_logprobs: int = 0) -> list[TokenScores]:
        self.check_score_args(requests, continuation_ids, top_logprobs)
        return self._run(self._gather([self._score_one(r, list(c), top_logprobs)
                                       for r, c in zip(requests, continuation_ids)]))

    def score_ids(self, ids: Sequence[int], *, top_logprobs: int = 0) -> TokenScores:
        """Log-probs of ids[1:], each given the ids before it (`/v1/completions` with
        `prompt_logprobs` or `echo`; no chat template; text only)."""
        ids = self.check_score_ids(ids, top_logprobs)
        return self._run(self._score_fed(ids[:1], ids, top_logprobs, "score_ids"))

    async def _score_fed(self, prompt: list[int], fed: list[int], top: int, what: str,
                         data: dict | None = None, request_id: str | None = None) -> TokenScores:
        """Scores of fed[len(prompt):] from an answer that scored `fed` (fetched here for text)."""
        if data is None:
            body = {"model": self.served_model, "prompt": fed, "max_tokens": 1, "temperature": 0.0,
                    **self._scoring_fields(top, media=False)}
            data = await self._post_json("/v1/completions", body, what)
        if self._scoring(media=False) == "echo":
            lps, tops = echo_scores(data["choices"][0].get("logprobs") or {}, fed, len(prompt), top, self.title)
        else:
            plp = data.get("prompt_logprobs") or data["choices"][0].get("prompt_logprobs")
            if plp is None or len(plp) != len(fed):
                raise ModelError(f"{what}: {self.title} returned no prompt_logprobs for {len(fed)} prompt tokens")
            lps, tops = prompt_logprob_scores(plp, fed, len(prompt), top)
        return TokenScores(request_id=request_id, prompt_ids=prompt, token_ids=fed[len(prompt):], logprobs=lps,
                           top_logprobs=tops if top else None)

    async def _score_one(self, request: Request, cont: list[int], top: int) -> TokenScores:
        what = f"score {request.id}" if request.id else "score"
        if not cont:
            prompt = await self._prompt_ids(request)
            return TokenScores(request_id=request.id, prompt_ids=prompt, token_ids=[], logprobs=[],
                               top_logprobs=[] if top else None)
        prompt, fed, data = await self._feed(request, cont, what, **self._scoring_fields(top, request.modalities != {"text"}))
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
                f"{what}: {self.title}'s API takes images and audio only in chat requests, whose continuation is text; "
                f"these {len(cont)} continuation ids do not come back from decode + re-encode (fed {len(fed)} "
                f"ids, expected {len(prompt) + len(cont)}: pieces such as <unusedN> split into characters)")
        return prompt, fed, data

    # ---------------------------------------------------------------- memory and life cycle

    def _server_processes(self) -> list[Any]:
        """The server processes on this machine (psutil): a managed server's tree, else those found
        by the ports the servers listen on."""
        if self.server is not None:
            return self.server.process_tree()
        return [p for r in self._live_roots() for p in local_listener_tree(r)]

    def _on_gpu(self, gpu_bytes: int | None) -> bool:
        """Whether the server computes on a GPU, given its NVML memory (None: no GPU seen)."""
        return gpu_bytes is not None

    def memory(self) -> MemorySnapshot:
        """The server's resident memory and GPU memory where it runs on this machine."""
        procs = self._server_processes()
        gpu = nvml_process_bytes([p.pid for p in procs])
        return MemorySnapshot(backend=self.name, device="gpu" if self._on_gpu(gpu) else "cpu", rss_bytes=tree_rss(procs),
                              device_bytes_in_use=gpu)

    def close(self) -> None:
        self._close_loop()
        if self.server is not None:
            self.server.stop()

    def __repr__(self) -> str:  # never shows the API key
        return f"{type(self).__name__}({self.model!r}, url={self.url!r})"
