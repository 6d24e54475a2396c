"""The llamacpp engine: llama.cpp's own server (`llama-server`) over its HTTP API.

Managed (default): the model is written as a GGUF file llama.cpp loads (`models.gguf_for`: a
`.gguf` path as it is; a registry model or folder as an F32/F16/BF16/Q8_0 GGUF, or `gguf_type=
"shipped"`: the file a registry model ships as), quantized by llama.cpp's own quantizer when
`quantize=` names a type (Q4_K_M, ...), and served by a `LlamaServer`. Attached: `url=` a
llama-server the user runs (the API key from `api_key=` or LLAMA_API_KEY).

Requests go to llama-server's native routes, which speak token ids (the OpenAI-compatible ones
return token text only):
- generate: `/completion`, streamed, prompt as ids, `return_tokens`, `n_probs` for log-probs and
  the top alternatives (from the raw logits: `post_sampling_probs` false), sampling as the other
  engines' defaults (no top-k, top-p 1, min-p 0, no repetition penalty); llama.cpp's own
  `timings` of each request are kept (`server_timings`).
- score: llama.cpp has no prompt log-probs and no echo; the continuation is forced instead by a
  grammar of token ids (`root ::= <[id]> <[id]> ...`), greedy, with `n_probs`: each forced token's
  probability comes from the raw logits over the whole vocabulary, so it is the teacher-forced one.
- prompt_ids / text_ids / detokenize: `/tokenize` (BOS as the GGUF says) and `/detokenize`; a chat
  prompt through `/apply-template` when the GGUF has a chat template.
- memory: the server process tree's resident memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from .. import models
from .._base import MAX_TOP_LOGPROBS
from .._errors import InputError, ModelError
from .._types import Capabilities, Generation, ModelSettings, Request, SamplingParams, TokenScores
from ..openai import OpenAICompatibleBackend, openai_messages, root_url, sse_data
from ._native import TimedResultLog, forced_scores, native_body, native_generation
from ._quantize import quantized
from ._server import LlamaServer, version_text

FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              32: "BF16"}
KV_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "q8_0": "q8_0"}
LOCK = Path(__file__).resolve().parents[2] / "constraints" / "llamacpp.txt"


class LlamacppBackend(OpenAICompatibleBackend):
    """`Backend` on llama.cpp's server. See `backends.get("llamacpp", ...)` and the module doc."""

    name = "llamacpp"
    title = "llama.cpp"

    @classmethod
    def static_guide(cls) -> dict[str, str]:
        return {"Model loading": "a GGUF file", "Memory efficiency": "one KV cache shared by the server's slots",
                "API": "llama-server HTTP (native completion with token ids, OpenAI-compatible routes)"}

    @classmethod
    def environment_packages(cls) -> tuple[str, dict[str, str], tuple[str, ...]] | None:
        """llama.cpp's build: the llama-cpp-python release whose vendored sources it was built from."""
        lines = LOCK.read_text().splitlines() if LOCK.is_file() else []
        version = next((ln.split("==")[1].split()[0] for ln in lines if ln.startswith("llama-cpp-python==")), "unknown")
        return "llamacpp", {"llama-cpp-python (llama.cpp sources)": version}, ("llama-cpp-python (llama.cpp sources)",)

    def __init__(self, model: str, *, url: str | Sequence[str] | None = None, api_key: str | None = None,
                 gguf_type: str = "F32", quantize: str | None = None, ctx_size: int = 4096, parallel: int = 4,
                 cache_type: str | None = None, threads: int | None = None, flash_attn: str = "off",
                 extra_args: Sequence[str] = (),
                 log_path: str | None = None, startup_timeout: float = 300.0, max_concurrency: int = 16,
                 request_timeout: float = 300.0, retries: int = 3, warmup: bool = True) -> None:
        self._open_client(model, api_key=api_key or os.environ.get("LLAMA_API_KEY"), max_concurrency=max_concurrency,
                          request_timeout=request_timeout, retries=retries)
        self.server: LlamaServer | None = None
        self.header: models.GgufHeader | None = None
        self.timings = TimedResultLog()
        t0 = time.perf_counter()
        if url is not None:
            urls, down = self._attached_urls(url)
        else:
            gguf = models.gguf_for(model, gguf_type=gguf_type)
            if quantize is not None:
                gguf = quantized(gguf, quantize)
            self.header = models.read_gguf_header(gguf)
            self.server = LlamaServer(gguf, served_model_name=_served_name(model), ctx_size=ctx_size,
                                      parallel=parallel, cache_type=cache_type or self._default_cache_type(),
                                      threads=threads, flash_attn=flash_attn, extra_args=extra_args, log_path=log_path,
                                      startup_timeout=startup_timeout)
            self.server.start()
            urls, down = [self.server.url], {}
        self._connect(urls, down, modalities=None, warmup=warmup, t0=t0)

    def _default_cache_type(self) -> str:
        """The KV cache in the precision of the weights' computation: f32 for a float32 file (as the
        float32 engines it is compared with keep theirs), llama.cpp's own f16 default otherwise."""
        assert self.header is not None
        return "f32" if self.header.file_type in (0, None) else "f16"

    def _check_server(self, url: str) -> None:
        """An OpenAI-compatible server that is llama.cpp's: its `/props` names its build."""
        super()._check_server(url)
        props = root_url(url, self.title) + "/props"
        try:
            r = httpx.get(props, timeout=10.0)
            data = r.json() if r.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            data = {}
        if not isinstance(data, dict) or "build_info" not in data:
            raise InputError(f"the server at {url} is not llama.cpp's llama-server (GET {props} names no build_info); "
                             "attach another OpenAI-compatible server with the openai engine")

    def noise_bound(self) -> tuple[float, str] | None:
        """llama.cpp's CPU kernels are not exact float32: GELU reads an fp16 table (ggml-cpu's
        GGML_GELU_FP16), flash attention rounds through fp16. Measured against float32 JAX on the
        same weights (docs/llamacpp.md): tiny-gemma3 9.3e-5 (flash attention on: 4.8e-4),
        gemma-3-270m 3.3e-3. An attached server's flags are not known: flash attention assumed."""
        flash = self.server is None or self.server.flash_attn != "off"
        real = (self.model_settings().embed_dim or 0) >= 512 or self.header is None
        bound = (5e-3 if real else 2e-4) * (5 if flash else 1)
        what = "CPU GELU reads an fp16 table" + (" and its flash attention rounds through fp16" if flash else "")
        return bound, (f"llama.cpp's {what}: float32 log-probs measured up to {'3.3e-3 at real sizes' if real else '9.3e-5 on a tiny model'}"
                       f"{' (flash attention on: 4.8e-4 on a tiny model)' if flash else ''} from exact float32 "
                       "(docs/llamacpp.md)")

    # ---------------------------------------------------------------- model

    def _served_model_name(self) -> str:
        return self.server.served_model_name if self.server is not None else super()._served_model_name()

    def _capabilities(self, modalities: Sequence[str] | None) -> Capabilities:
        """Text only (this engine serves GGUF text models); chat prompts when the GGUF has a chat
        template (an attached server: when the template it reports is not the ChatML llama-server
        falls back to for a file without one)."""
        self.spec = models.find_spec(self.model)
        if self.header is not None:
            chat = self.header.chat_template is not None
        else:
            template = str(self._props().get("chat_template") or "")
            chat = bool(template) and not ("<|im_start|>" in template and "<start_of_turn>" not in template)
        return Capabilities(modalities=frozenset({"text"}), streaming=True, max_top_logprobs=MAX_TOP_LOGPROBS,
                            unsupported={"image": "the llamacpp engine serves text models (a GGUF without a vision "
                                                  "projector)", "audio": "the llamacpp engine serves text models"},
                            chat=chat)

    def _props(self) -> dict[str, Any]:
        return self._run(self._get_json("/props"))

    @property
    def vocab_size(self) -> int | None:
        if self.header is not None:
            return self.header.vocab_size
        meta = self._served_entry().get("meta") or {}
        return int(meta["n_vocab"]) if meta.get("n_vocab") else None

    def weight_tensors(self) -> dict[str, np.ndarray] | None:
        """The GGUF's tensors under their Hugging Face names, dequantized to float32."""
        if self.header is None:
            return None
        return models.read_gguf(self.header.path).tensors

    def model_settings(self) -> ModelSettings:
        """What llama.cpp computes for the GGUF it loaded: the configuration its metadata gives, its
        rows, its stored types (a quantized file: `quantization` = its file type), float32 compute
        and the KV cache type the server runs; for an attached server only the convention."""
        if self.header is None or self.server is None:
            return ModelSettings(convention="llamacpp")
        h = self.header
        matrices = {t for n, t in h.tensor_types.items() if not n.endswith("_norm.weight")}
        quant = None if matrices <= {"F32"} else _file_type(h.file_type) or "+".join(sorted(matrices))
        end = (h.eos_id,) + ((h.end_of_turn_id,) if h.end_of_turn_id is not None else ())
        arch = models.arch_from_hf_config(h.config, source=str(h.path))
        settings = models.engine_settings(
            arch, "hf", dtype="float32", kv_cache_dtype=KV_DTYPES[self.server.cache_type], quantization=quant,
            rms_norm_eps=1e-6, tied_embeddings="output.weight" not in h.tensor_types, end_ids=end,
            config=models.consumed_config(h.config))
        return settings.model_copy(update={"convention": "llamacpp", "logit_rows": h.vocab_size})

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "llama.cpp": version_text(), "managed": self.server is not None}
        if self.server is not None and self.header is not None:
            types: dict[str, int] = {}
            for t in self.header.tensor_types.values():
                types[t] = types.get(t, 0) + 1
            out.update({"gguf": str(self.header.path), "file_type": _file_type(self.header.file_type),
                        "tensor_types": types, "cache_type": self.server.cache_type,
                        "server_flags": self.server.flags, "startup_s": self.server.startup_s,
                        "log": str(self.server.log_path)})
        return out

    def guide_facts(self) -> dict[str, str]:
        d = self.describe()
        return {
            "Setup": (f"llama.cpp ({version_text()}); managed llama-server (healthy in {self.server.startup_s:.1f} s)"
                      if self.server is not None and self.server.startup_s is not None
                      else f"llama.cpp; attached to {self.url}"),
            "Model loading": f"GGUF {Path(d['gguf']).name}" if d.get("gguf") else "a GGUF file (attached server)",
            "Memory efficiency": "one KV cache shared by the server's slots",
            "API": "llama-server HTTP (native completion with token ids)",
            "Multi-GPU": "CPU build (one process)",
            "Quantization": (f"file {d.get('file_type')}; KV cache {d.get('cache_type')}" if d.get("gguf")
                             else "as the attached server runs it"),
        }

    # ---------------------------------------------------------------- prompts

    async def _prompt_ids(self, request: Request) -> list[int]:
        what = f"tokenize {request.id or ''}".strip()
        if request.text is not None:
            text, special = request.text, True
        else:
            rendered = await self._post_json("/apply-template", {"messages": openai_messages(request)}, what)
            text = rendered["prompt"]
            special = not text.startswith("<bos>")  # a template that writes the BOS itself: not twice
        data = await self._post_json("/tokenize", {"content": text, "add_special": special, "parse_special": True}, what)
        return [int(t) for t in data["tokens"]]

    def text_ids(self, text: str) -> list[int]:
        body = {"content": text, "add_special": False, "parse_special": True}
        return [int(t) for t in self._run(self._post_json("/tokenize", body, "tokenize"))["tokens"]]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._run(self._post_json("/detokenize", {"tokens": [int(i) for i in ids]}, "detokenize"))["content"]

    # ---------------------------------------------------------------- generation

    def generate_from_ids(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
                          request_ids: Sequence[str | None] | None = None) -> list[Generation]:
        ids = list(request_ids or [None] * len(prompts))
        return self._run(self._gather([self._native(list(p), sampling, rid) for p, rid in zip(prompts, ids)]))

    async def _generate_one(self, request: Request, s: SamplingParams) -> Generation:
        return await self._native(await self._prompt_ids(request), s, request.id)

    async def _native(self, prompt: list[int], s: SamplingParams, rid: str | None) -> Generation:
        what = f"request {rid}" if rid else "request"
        return await self._call(what, self._stream, rid, "native", native_body(prompt, s))

    def run_timed(self, pairs: Sequence[tuple[Request, SamplingParams]], *, concurrency: int | None = None,
                  offsets: Sequence[float] | None = None) -> list[Any]:
        """The benchmark path: every prompt tokenized first (outside the timing), then each request
        sent as the base class does."""
        for r, _ in pairs:
            self.capabilities.check(r, self.name)
        prompts = self._run(self._gather([self._prompt_ids(r) for r, _ in pairs]))
        self._fed = {id(r): p for (r, _), p in zip(pairs, prompts)}
        try:
            return super().run_timed(pairs, concurrency=concurrency, offsets=offsets)
        finally:
            self._fed = {}

    def _body(self, request: Request, s: SamplingParams) -> tuple[str, dict[str, Any]]:
        return "native", native_body(self._fed[id(request)], s)

    async def _stream(self, rid: str | None, kind: str, body: dict[str, Any]) -> Generation:
        """One streamed native `/completion`; llama.cpp's own timings of it are kept (`timings`)."""
        what = f"request {rid}" if rid else "request"
        t0 = time.perf_counter()
        events = []
        async with await self._request("POST", "/completion", what, body) as response:
            async for line in response.content:
                event = sse_data(line)
                if event is not None:
                    events.append((time.perf_counter() - t0, event))
        gen, timings = native_generation(rid, body, t0, events, self.title)
        self.timings.add(rid, timings, gen)
        return gen

    # ---------------------------------------------------------------- scoring

    def score_ids(self, ids: Sequence[int], *, top_logprobs: int = 0) -> TokenScores:
        ids = self.check_score_ids(ids, top_logprobs)
        return self._run(self._forced(ids[:1], ids[1:], top_logprobs, "score_ids", None))

    async def _score_one(self, request: Request, cont: list[int], top: int) -> TokenScores:
        prompt = await self._prompt_ids(request)
        what = f"score {request.id}" if request.id else "score"
        if not cont:
            return TokenScores(request_id=request.id, prompt_ids=prompt, token_ids=[], logprobs=[],
                               top_logprobs=[] if top else None)
        return await self._forced(prompt, cont, top, what, request.id)

    async def _forced(self, prompt: list[int], cont: list[int], top: int, what: str, rid: str | None) -> TokenScores:
        """The continuation forced token by token, greedy: each forced token's log-prob and the top
        alternatives, from the raw logits (`post_sampling_probs` false). One request with a grammar
        of the continuation's ids; where llama.cpp's grammar refuses the sequence (its token-id
        grammars fail on some byte pieces), one request per position whose `logit_bias` forces the
        token, the prefix reused from the server's prompt cache."""
        body = {"prompt": prompt, "n_predict": len(cont), "temperature": 0.0, "n_probs": max(top, 1),
                "post_sampling_probs": False, "grammar": "root ::= " + " ".join(f"<[{t}]>" for t in cont),
                "return_tokens": True, "cache_prompt": False, "samplers": ["top_k"], "top_k": 0}
        try:
            data = await self._post_json("/completion", body, what)
        except ModelError as e:
            if "grammar" not in str(e):
                raise
            data = await self._forced_one_by_one(prompt, cont, max(top, 1), what)
        lps, tops = forced_scores(data, cont, top, what)
        return TokenScores(request_id=rid, prompt_ids=prompt, token_ids=cont, logprobs=lps,
                           top_logprobs=tops if top else None)

    async def _forced_one_by_one(self, prompt: list[int], cont: list[int], top: int, what: str) -> dict[str, Any]:
        probs: list[dict[str, Any]] = []
        for k, token in enumerate(cont):
            body = {"prompt": prompt + cont[:k], "n_predict": 1, "temperature": 0.0, "n_probs": top,
                    "post_sampling_probs": False, "logit_bias": [[token, 1e6]], "return_tokens": True,
                    "cache_prompt": True, "samplers": ["top_k"], "top_k": 0}
            data = await self._post_json("/completion", body, what)
            probs += (data.get("completion_probabilities") or [])[:1]
        return {"completion_probabilities": probs}


def _file_type(number: int | None) -> str | None:
    """llama.cpp's name of a GGUF's `general.file_type` (None when the file does not say)."""
    return None if number is None else FILE_TYPES.get(int(number), f"type {number}")


def _served_name(model: str) -> str:
    """The alias a managed server serves the model under: the registry name, or the file's or folder's name."""
    p = Path(str(model))
    return p.stem if p.suffix == ".gguf" else p.name or str(model)
