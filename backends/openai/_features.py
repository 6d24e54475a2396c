"""What an OpenAI-compatible endpoint offers beyond generation, found out at start: the probe
requests (cheap: `max_tokens` 1) and the pure decisions that read their answers into
`EndpointFeatures`.

The OpenAI API itself names no token ids; vLLM's extensions (and servers that copy them) do:
`/tokenize` and `/detokenize`, `return_tokens_as_token_ids` (log-probs' tokens as "token_id:N"),
`return_token_ids` (the prompt's and the output's ids in every answer) and `prompt_logprobs`
(teacher-forced log-probs of a prompt). Without `prompt_logprobs`, a completion that echoes its
prompt with `logprobs` (`echo`, as lm-eval scores) gives the same numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PROBE_TEXT = "Hello, world"
TOKEN_ID_FIELDS = {"return_tokens_as_token_ids": True, "return_token_ids": True}
TOP_TRIES = (20, 5)  # the alternatives asked for, most first (vLLM's default cap; the OpenAI API's)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A probe's answer: its HTTP status (0: not sent), the JSON body (200) or the error's text,
    and the request's fields that the decision reads."""

    status: int
    body: Any
    asked: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict)

    def choice(self) -> dict[str, Any]:
        """The first choice of a completion answer ({} if none)."""
        choices = self.body.get("choices") if self.ok else None
        return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}


NOT_SENT = Answer(0, "not sent")


@dataclasses.dataclass(frozen=True)
class EndpointFeatures:
    """What the server at a URL was found to do (`describe()["features"]`)."""

    completions: bool  # /v1/completions answers (plain-text prompts, prompts as ids, scoring)
    chat: bool  # /v1/chat/completions answers a one-turn chat
    tokenize: bool  # vLLM-style /tokenize: {"model", "prompt"} -> {"tokens"}
    tokenize_chat: bool  # /tokenize takes chat messages too (the ids of a chat prompt)
    detokenize: bool  # /detokenize: {"model", "tokens"} -> {"prompt"}
    token_ids: bool  # return_tokens_as_token_ids honoured: log-probs' tokens come as "token_id:N"
    return_token_ids: bool  # return_token_ids honoured: the prompt's and the output's ids in answers
    prompt_logprobs: bool  # /v1/completions returns prompt_logprobs (teacher-forced scoring)
    echo_logprobs: bool  # /v1/completions with echo + logprobs returns the prompt's log-probs
    max_top_logprobs: int  # the most alternatives per token it returns (0: none)
    chat_refusal: str | None = None  # what the server said to a chat request, where it refused one

    @property
    def scoring(self) -> str | None:
        """How teacher-forced scores are had: "prompt_logprobs", "echo" (needs the echoed tokens as
        ids, to check them against the ids fed) or None (not available)."""
        if self.prompt_logprobs:
            return "prompt_logprobs"
        if self.echo_logprobs and self.token_ids:
            return "echo"
        return None

    def record(self) -> dict[str, Any]:
        """The features as `describe()` shows them."""
        return {**dataclasses.asdict(self), "scoring": self.scoring}


# ---------------------------------------------------------------- the probe requests


def tokenize_body(model: str, chat: bool) -> dict[str, Any]:
    if chat:
        return {"model": model, "messages": [{"role": "user", "content": PROBE_TEXT}], "add_generation_prompt": True}
    return {"model": model, "prompt": PROBE_TEXT}


def completion_body(model: str, top: int | None, **fields: Any) -> dict[str, Any]:
    """A one-token greedy completion of PROBE_TEXT; `top`: alternatives asked for (None: no
    log-probs, no extensions: the plainest request)."""
    body = {"model": model, "prompt": PROBE_TEXT, "max_tokens": 1, "temperature": 0.0, **fields}
    return body if top is None else {**body, "logprobs": top, **TOKEN_ID_FIELDS}


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROBE_TEXT}], "max_tokens": 1, "temperature": 0.0}


# ---------------------------------------------------------------- the decisions


def tokens_of(answer: Answer) -> list[int] | None:
    """The ids of a vLLM-style /tokenize answer; None if it is not one."""
    tokens = answer.body.get("tokens") if answer.ok else None
    if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
        return tokens
    return None


def detokenizes(answer: Answer) -> bool:
    return answer.ok and isinstance(answer.body.get("prompt"), str)


def token_ids_as_tokens(answer: Answer) -> bool:
    """The completion's log-probs name their tokens "token_id:N"."""
    tokens = (answer.choice().get("logprobs") or {}).get("tokens")
    return isinstance(tokens, list) and bool(tokens) and all(str(t).startswith("token_id:") for t in tokens)


def returns_token_ids(answer: Answer) -> bool:
    """The completion's choice carries the output's ids (`token_ids`)."""
    return isinstance(answer.choice().get("token_ids"), list)


def top_logprobs_returned(answer: Answer) -> int:
    """How many alternatives a completion asked for `asked["logprobs"]` returned (at most that)."""
    asked = int(answer.asked.get("logprobs") or 0)
    tops = (answer.choice().get("logprobs") or {}).get("top_logprobs")
    first = tops[0] if isinstance(tops, list) and tops else None
    return min(asked, len(first)) if isinstance(first, dict) else 0


def has_prompt_logprobs(answer: Answer) -> bool:
    found = answer.choice().get("prompt_logprobs") or (answer.body.get("prompt_logprobs") if answer.ok else None)
    return isinstance(found, list) and len(found) >= 2


def has_echo_logprobs(answer: Answer) -> bool:
    """The echoed completion's token_logprobs cover the prompt: more than the one generated token,
    the first (nothing before it) without a log-prob."""
    values = (answer.choice().get("logprobs") or {}).get("token_logprobs")
    return isinstance(values, list) and len(values) >= 2 and values[0] is None


def chat_refusal(answer: Answer) -> str | None:
    """Why a chat request failed (None: it was answered)."""
    if answer.ok:
        return None
    return f"HTTP {answer.status}: {answer.body}" if answer.status else str(answer.body)


def features_from(answers: dict[str, Answer]) -> EndpointFeatures:
    """The features the probe answers show. Keys: tokenize, tokenize_chat, detokenize, completion
    (the first answered of `completion_body` with TOP_TRIES, then without log-probs),
    prompt_logprobs, echo, chat; a key missing counts as not sent."""
    def get(key: str) -> Answer:
        return answers.get(key, NOT_SENT)

    completion = get("completion")
    return EndpointFeatures(
        completions=completion.ok, chat=get("chat").ok,
        tokenize=tokens_of(get("tokenize")) is not None, tokenize_chat=tokens_of(get("tokenize_chat")) is not None,
        detokenize=detokenizes(get("detokenize")),
        token_ids=token_ids_as_tokens(completion), return_token_ids=returns_token_ids(completion),
        prompt_logprobs=has_prompt_logprobs(get("prompt_logprobs")), echo_logprobs=has_echo_logprobs(get("echo")),
        max_top_logprobs=top_logprobs_returned(completion), chat_refusal=chat_refusal(get("chat")),
    )
