"""What every engine shares: argument checks, capability checks, warm-up timing, liveness, the
context manager. Engines subclass `BaseBackend` and implement the rest of `Backend`."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, ClassVar

import numpy as np

from ._errors import InputError
from ._types import Capabilities, ModelSettings, Request, SamplingParams

MAX_TOP_LOGPROBS = 20


class BaseBackend:
    name: ClassVar[str]
    # how reports name the engine: in tables and plot titles, and in a run's title ("vLLM vs JAX")
    title: ClassVar[str] = ""
    short_title: ClassVar[str] = ""
    model: str
    capabilities: Capabilities
    load_s: float | None = None
    warmup_s: float | None = None

    @classmethod
    def import_libraries(cls) -> None:
        """Import the engine's libraries now (set-up calls it for every side, one after another,
        before the sides open in threads). Nothing by default: an engine whose libraries change
        process-wide state while they import does it here."""

    @classmethod
    def display_title(cls, short: bool = False) -> str:
        """The engine's name in reports (`title` / `short_title`, else its engine name)."""
        return (cls.short_title if short else cls.title) or cls.title or cls.name

    @classmethod
    def static_guide(cls) -> dict[str, str]:
        """What the engine's guide rows say without a running side (model loading, memory, API):
        the rows results files written before engines described themselves are given."""
        return {}

    @classmethod
    def environment_packages(cls) -> tuple[str, dict[str, str], tuple[str, ...]] | None:
        """For an engine that runs in an environment of its own: (that environment's name, its
        installed packages name -> version, the packages that decide the numbers); None for one that
        runs in the harness's environment."""
        return None

    # ---------------------------------------------------------------- shared checks

    def check_requests(self, requests: Sequence[Request]) -> None:
        """Every request's modalities are supported (else `UnsupportedError` naming the reason)."""
        for r in requests:
            self.capabilities.check(r, self.name)

    def check_top(self, top_logprobs: int, what: str = "top_logprobs") -> None:
        limit = self.capabilities.max_top_logprobs
        if top_logprobs > limit:
            raise InputError(f"{what}={top_logprobs}: the {self.name} engine returns at most {limit} alternatives")

    def check_ids(self, ids: Sequence[int], what: str) -> None:
        """Every id indexes into the vocabulary (when the engine knows its size)."""
        n = self.vocab_size
        if n is None:
            return
        bad = [t for t in ids if not 0 <= int(t) < n]
        if bad:
            raise InputError(f"{what} has ids outside the vocabulary (0..{n - 1}): {bad[:5]}")

    def check_score_args(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]],
                         top_logprobs: int) -> None:
        if len(requests) != len(continuation_ids):
            raise InputError(f"score: {len(requests)} requests but {len(continuation_ids)} continuations")
        self.check_top(top_logprobs)
        self.check_requests(requests)
        for i, (r, cont) in enumerate(zip(requests, continuation_ids)):
            self.check_ids(cont, f"score: request {r.id or i}")

    def check_score_ids(self, ids: Sequence[int], top_logprobs: int) -> list[int]:
        out = [int(t) for t in ids]
        if len(out) < 2:
            raise InputError("score_ids needs at least two ids (the first is only context)")
        self.check_top(top_logprobs)
        self.check_ids(out, "score_ids")
        return out

    @property
    def vocab_size(self) -> int | None:
        return None

    # ---------------------------------------------------------------- lifetime

    def warm_up(self) -> None:
        """Answer one tiny request and record how long it took (`warmup_s`)."""
        t0 = time.perf_counter()
        hello = self.capabilities.text_request("Hello")  # type: ignore[attr-defined]
        self.generate([hello], SamplingParams(max_tokens=2, logprobs=1))  # type: ignore[attr-defined]
        self.warmup_s = time.perf_counter() - t0

    def check_alive(self) -> None:
        """In-process engines are alive while the process is."""

    def guide_facts(self) -> dict[str, str]:
        return {}

    def throughput_notes(self) -> list[str]:
        """Known causes of a throughput curve that does not rise with the level; none by default."""
        return []

    def noise_bound(self) -> tuple[float, str] | None:
        """How far this engine's own computation is from exact arithmetic at its precision, as a
        bound on max |dlogprob| and why (a kernel that rounds an intermediate); None: no more than
        the precision's own noise. Parity raises a pair's bound to it and says why."""
        return None

    def weight_tensors(self) -> dict[str, np.ndarray] | None:
        """The weights this side computes with, under their Hugging Face names, as stored (a
        quantized file dequantized), for parity to compare tensor by tensor before it names the
        weights as a cause; None when they cannot be read here (a hub model, a remote server)."""
        return None

    def model_settings(self) -> ModelSettings:
        """What this side computes where engines part by design; nothing known by default."""
        return ModelSettings()

    def close(self) -> None:
        """Release what the engine holds."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def finish_generation(ids: Sequence[int], s: SamplingParams, end_ids: Collection[int],
                      decode: Callable[[Sequence[int]], str]) -> tuple[list[int], str, str]:
    """What an in-process engine returns of its sampled ids, as vLLM does: at most `max_tokens`,
    ending at the first end id (kept, unless `ignore_eos`), then cut at the first stop string (the
    text excludes it, the ids end with the token that completed it). Returns (ids, text,
    finish_reason: "stop" or "length")."""
    out: list[int] = []
    finish = "length"
    for t in list(ids)[: s.max_tokens]:
        out.append(int(t))
        if t in end_ids and not s.ignore_eos:
            finish = "stop"
            break
    if s.stop:
        for k in range(1, len(out) + 1):
            text = decode(out[:k])
            hits = [text.find(x) for x in s.stop if x and x in text]
            if hits:
                return out[:k], text[: min(hits)], "stop"
    return out, decode(out), finish
