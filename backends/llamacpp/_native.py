"""llama-server's native API as plain functions: the `/completion` request for a prompt of ids
under `SamplingParams`, its streamed events -> `Generation` (with llama.cpp's own timings of the
request), and the scores of a forced continuation."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from .._errors import ModelError, UnsupportedError
from .._types import Generation, SamplingParams, Timings, TopLogprobs

Events = list[tuple[float, dict[str, Any]]]


def native_body(prompt: list[int], s: SamplingParams) -> dict[str, Any]:
    """The streamed `/completion` request: the prompt as ids, the sampling of the other engines
    (llama.cpp's own defaults differ: top-k 40, top-p 0.95, min-p 0.05), token ids returned, and
    `n_probs` alternatives from the raw logits when log-probs are asked for."""
    body: dict[str, Any] = {
        "prompt": prompt, "n_predict": s.max_tokens, "temperature": s.temperature, "stream": True,
        "return_tokens": True, "cache_prompt": False, "top_k": s.top_k or 0, "top_p": 1.0 if s.top_p is None else s.top_p,
        "min_p": 0.0, "repeat_penalty": 1.0, "n_probs": s.logprobs if s.return_logprobs else 0,
        "post_sampling_probs": False,
    }
    if s.seed is not None:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if s.ignore_eos:
        body["ignore_eos"] = True
    return body


def _alternatives(entry: dict[str, Any], top: int) -> TopLogprobs:
    return [(int(x["id"]), float(x["logprob"])) for x in entry.get("top_logprobs") or []][:top]


def native_generation(rid: str | None, body: dict[str, Any], t0: float, events: Events,
                      title: str) -> tuple[Generation, dict[str, Any]]:
    """The `Generation` of a streamed `/completion` answering `body`, and llama.cpp's `timings`."""
    ids: list[int] = []
    times: list[float] = []
    text: list[str] = []
    lps: list[float] = []
    tops: list[TopLogprobs] = []
    last: dict[str, Any] = {}
    top = int(body.get("n_probs") or 0)
    for now, event in events:
        if event.get("error"):
            err = event["error"]
            raise ModelError(f"request {rid or ''}: {title} reported an error mid-stream: "
                             f"{err.get('message', err) if isinstance(err, dict) else err}")
        new = [int(t) for t in event.get("tokens") or []]
        ids += new
        times += [now] * len(new)
        text.append(event.get("content") or "")
        for entry in event.get("completion_probabilities") or []:
            lps.append(float(entry["logprob"]))
            tops.append(_alternatives(entry, top))
        if event.get("stop"):
            last = event
    if not last:
        raise ModelError(f"request {rid or ''}: {title} ended the stream without its final event")
    finish = {"eos": "stop", "word": "stop", "limit": "length"}.get(last.get("stop_type", ""), last.get("stop_type"))
    e2e = events[-1][0] if events else time.perf_counter() - t0
    gen = Generation(
        request_id=rid, prompt_ids=list(body["prompt"]), token_ids=ids, text="".join(text),
        logprobs=lps if top and len(lps) == len(ids) else None,
        top_logprobs=tops if top and len(tops) == len(ids) else None, finish_reason=str(finish),
        timings=Timings(e2e_s=e2e, ttft_s=times[0] if times else None, token_times_s=times))
    return gen, dict(last.get("timings") or {})


def forced_scores(data: dict[str, Any], cont: list[int], top: int, what: str) -> tuple[list[float], list[TopLogprobs]]:
    """The log-probs of a continuation forced by a grammar of its ids, and the top alternatives."""
    probs = data.get("completion_probabilities") or []
    got = [int(e["id"]) for e in probs]
    if got != cont:
        end = f"; it stopped after {len(got)} (an end token inside the continuation)" if got == cont[:len(got)] else ""
        raise UnsupportedError(f"{what}: llama.cpp could not be made to feed these {len(cont)} continuation ids "
                               f"(it fed {len(got)}){end}")
    return [float(e["logprob"]) for e in probs], [_alternatives(e, top) for e in probs]


@dataclasses.dataclass
class TimedResultLog:
    """llama.cpp's own timings of each generation request (its `timings`: prompt_n, prompt_ms,
    predicted_n, predicted_ms, ...), next to what paritybench measured of the same request."""

    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, rid: str | None, timings: dict[str, Any], gen: Generation) -> None:
        self.entries.append({"request_id": rid, "server": timings, "output_tokens": len(gen.token_ids),
                             "client_e2e_s": gen.timings.e2e_s, "client_ttft_s": gen.timings.ttft_s})

    def clear(self) -> None:
        self.entries.clear()
