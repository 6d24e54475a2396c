"""The `openai` engine: any server that speaks the OpenAI API, attached to by URL.

    backends.get("openai", model="tiny-gemma3", url="http://127.0.0.1:8000/v1")

Nothing about the server is assumed: at start it is probed (`EndpointFeatures`, cheap requests of
one token) for what it offers beyond generation, and an operation it cannot do raises
`UnsupportedError` in one line naming the URL, what is missing and what to do instead.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

from .._errors import InputError, UnsupportedError
from .._types import Capabilities, Generation, ModelSettings, Request, SamplingParams
from ._backend import OpenAICompatibleBackend
from ._features import (
    NOT_SENT,
    TOKEN_ID_FIELDS,
    TOP_TRIES,
    Answer,
    EndpointFeatures,
    chat_body,
    completion_body,
    features_from,
    tokenize_body,
    tokens_of,
)

_VLLM_HINT = "vLLM's server offers it"


class OpenAIBackend(OpenAICompatibleBackend):
    """`Backend` on any OpenAI-compatible server (`url`), with what it offers found out at start."""

    name = "openai"
    title = "OpenAI API"
    features: EndpointFeatures

    @classmethod
    def static_guide(cls) -> dict[str, str]:
        return {"API": "OpenAI-compatible HTTP (what the server offers is probed at start)"}

    def __init__(self, model: str, *, url: str | Sequence[str] | None = None, api_key: str | None = None,
                 served_model: str | None = None, max_concurrency: int = 16, request_timeout: float = 300.0,
                 retries: int = 3, warmup: bool = True, modalities: Sequence[str] | None = None) -> None:
        """The server(s) at `url` serving `model` (under `served_model` where the server's name for it
        differs); the client's options as the vllm engine's attached to a server."""
        if url is None:
            raise InputError("the openai engine attaches to a running server: give url=, e.g. http://host:8000/v1 "
                             "(several: A,B)")
        self._open_client(model, api_key=api_key or os.environ.get("OPENAI_API_KEY"), max_concurrency=max_concurrency,
                          request_timeout=request_timeout, retries=retries)
        self.served_model_option = served_model
        t0 = time.perf_counter()
        urls, down = self._attached_urls(url)
        self.hf_dir = self._local_hf_dir(self.model)
        self._connect(urls, down, modalities=modalities, warmup=warmup, t0=t0)

    # ---------------------------------------------------------------- what the server offers

    def _learn_endpoint(self) -> None:
        """Probe the first server (a group serves one model with one engine)."""
        self.features = features_from(self._run(self._at(self.root_url, self._probe)))

    async def _probe(self) -> dict[str, Answer]:
        """The probe requests, one after another (the answers `features_from` reads)."""
        model = self.served_model
        answers = {key: await self._ask(path, body) for key, path, body in (
            ("tokenize", "/tokenize", tokenize_body(model, chat=False)),
            ("tokenize_chat", "/tokenize", tokenize_body(model, chat=True)),
            ("prompt_logprobs", "/v1/completions", completion_body(model, None, prompt_logprobs=1)),
            ("echo", "/v1/completions", completion_body(model, None, echo=True, logprobs=1, **TOKEN_ID_FIELDS)),
            ("chat", "/v1/chat/completions", chat_body(model)),
        )}
        ids = tokens_of(answers["tokenize"])
        answers["detokenize"] = await self._ask("/detokenize", {"model": model, "tokens": ids}) if ids else NOT_SENT
        for top in (*TOP_TRIES, None):  # the most alternatives it returns; at last the plainest request
            answers["completion"] = await self._ask("/v1/completions", completion_body(model, top))
            if answers["completion"].ok:
                break
        return answers

    async def _ask(self, path: str, body: dict[str, Any]) -> Answer:
        status, answer = await self._try_post(path, body)
        return Answer(status, answer, body)

    def _capabilities(self, modalities: Sequence[str] | None) -> Capabilities:
        f = self.features
        found: dict[str, Any] = {"chat": f.chat, "logprobs": f.token_ids, "scoring": f.scoring is not None,
                                 "max_top_logprobs": f.max_top_logprobs if f.token_ids else 0}
        if not f.chat:
            found["no_chat"] = f"the server at {self.url} refuses chat requests ({f.chat_refusal}); give plain-text prompts"
        return super()._capabilities(modalities).model_copy(update=found)

    def _unsupported(self, missing: str, consequence: str, instead: str) -> UnsupportedError:
        """One line: the URL, what it lacks, what cannot be done, what to do."""
        return UnsupportedError(f"{self.name}: the server at {self.url} {missing}: {consequence}; {instead}")

    # ---------------------------------------------------------------- requests as the server takes them

    def _served_model_name(self) -> str:
        name = super()._served_model_name()
        if self.served_model_option is not None and name != self.served_model_option:
            raise InputError(f"{self.title} at {self.url} serves {name!r}, not served_model={self.served_model_option!r}")
        return name

    def _wanted_names(self) -> tuple[str, ...]:
        return (self.served_model_option,) if self.served_model_option else super()._wanted_names()

    def _extra_body(self, s: SamplingParams) -> dict[str, Any]:
        extra = super()._extra_body(s)
        if self.features.token_ids:
            extra["return_tokens_as_token_ids"] = True
        if self.features.return_token_ids:
            extra["return_token_ids"] = True
        return extra

    def _logprobs_as_ids(self) -> bool:
        return self.features.token_ids

    def _completion_body(self, prompt: list[int] | str, s: SamplingParams) -> dict[str, Any]:
        if not self.features.completions:
            raise self._unsupported("does not answer /v1/completions", "plain-text prompts and prompts given as ids "
                                    "cannot be sent", "give chat prompts")
        return super()._completion_body(prompt, s)

    def generate_from_ids(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
                          request_ids: Sequence[str | None] | None = None) -> list[Generation]:
        self._completion_body([], sampling)  # refused here, before any request, where it cannot be done
        return super().generate_from_ids(prompts, sampling, request_ids)

    def _scoring(self, media: bool) -> str:
        mode = self.features.scoring
        if mode is None:
            raise self._unsupported("returns no prompt log-probs and no echo log-probs with token ids",
                                    "teacher-forced scoring is not available",
                                    "parity compares greedy tokens and text only (vLLM's server returns prompt_logprobs)")
        if media and (mode == "echo" or not self.features.return_token_ids):
            raise self._unsupported("lacks what scoring a prompt with images or audio takes (vLLM's prompt_logprobs "
                                    "and return_token_ids in a chat request)", "this prompt cannot be scored",
                                    "compare it by its greedy output")
        return mode

    async def _prompt_ids(self, request: Request) -> list[int]:
        if not (self.features.tokenize_chat if request.is_chat else self.features.tokenize):
            kind = "chat messages" if request.is_chat else "a prompt"
            raise self._unsupported(f"has no vLLM-style /tokenize for {kind}",
                                    "the prompt's ids are not available (prompt_ids, score)",
                                    _VLLM_HINT)
        return await super()._prompt_ids(request)

    def text_ids(self, text: str) -> list[int]:
        if not self.features.tokenize:
            raise self._unsupported("has no vLLM-style /tokenize", "its tokenizer is not available (text_ids)", _VLLM_HINT)
        return super().text_ids(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        if not self.features.detokenize:
            raise self._unsupported("has no vLLM-style /detokenize", "ids cannot be made text by its tokenizer", _VLLM_HINT)
        return super().detokenize(ids)

    # ---------------------------------------------------------------- the record

    def model_settings(self) -> ModelSettings:
        """What an attached endpoint says of itself: the served model's length, where `/v1/models`
        gives it; the convention "openai" (an engine not known by its name: no by-design rules)."""
        length = self._served_entry().get("max_model_len")
        known = {"max_model_len": int(length)} if isinstance(length, int) else {}
        return ModelSettings(convention="openai", **known)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "served_model_option": self.served_model_option, "features": self.features.record()}

    def guide_facts(self) -> dict[str, str]:
        offered = [f.name for f in dataclasses.fields(self.features) if getattr(self.features, f.name) is True]
        return {"Setup": f"attached to {self.url} (served model {self.served_model})",
                "API": f"OpenAI-compatible HTTP; found at start: {', '.join(offered) or 'generation only'}"}
