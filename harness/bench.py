"""Throughput, latency and memory of one backend on one workload.

vLLM: every request streamed; a concurrency sweep (`max_concurrency` levels) or a request-rate
mode (Poisson arrivals, or gamma with `burstiness`, as `vllm bench serve` draws them); metrics
with `vllm bench serve`'s definitions and field names (harness.metrics).
JAX: a batch-size sweep; each level runs the workload once to compile (its compile seconds are
reported apart) and once more to measure the steady state, counting XLA compilations in the
measured pass (zero when every shape was seen in warm-up).
Both: memory sampled in the background during the measured pass (see MemorySampler).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel

from backends import (
    Backend,
    CompileCounting,
    MemorySnapshot,
    Request,
    SamplingParams,
    TimedStreaming,
    peak_rss_bytes,
    stop_point,
)

from .metrics import PERCENTILES, RequestRecord, summarize
from .results import BatchRun, MemorySummary, ServingRun

# Seconds between memory samples. Each vLLM sample scrapes the server's /metrics, which costs the
# API server CPU: at 0.5 s that cost ~3% of output throughput on 2 cores (medians of 12 rounds).
MEMORY_INTERVAL_S = 1.0


class Workload(BaseModel):
    """Requests with their output lengths, decoded greedily. `ignore_eos` makes every output
    exactly that long. `seed` is the seed the synthetic prompts and arrival times were drawn from."""

    name: str
    requests: list[Request]
    output_lens: list[int]
    ignore_eos: bool = True
    seed: int = 0

    def sampling(self, i: int, *, logprobs: bool = False) -> SamplingParams:
        return SamplingParams(max_tokens=self.output_lens[i], ignore_eos=self.ignore_eos, return_logprobs=logprobs)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "num_prompts": len(self.requests), "ignore_eos": self.ignore_eos,
                "seed": self.seed, "output_lens": self.output_lens}


def synthetic(backend, *, num_prompts: int, input_len: int, output_len: int, range_ratio: float = 0.0,
              seed: int = 0, ignore_eos: bool = True) -> Workload:
    """Prompts of `input_len` tokens (plain text from the tokenizer corpus starting at a random
    word, cut to length with the backend's own tokenizer: `text_ids` / `detokenize`) and
    `output_len` output tokens, each length drawn uniformly from [L(1-r), L(1+r)] as vLLM's random
    dataset does, from a fixed seed. The chat template (of a model that has one) adds a few tokens to each prompt."""
    from backends.models import CORPUS

    if not 0 <= range_ratio < 1:
        raise ValueError("range_ratio must be in [0, 1)")
    words = CORPUS.read_text(encoding="utf-8").split()
    rng = np.random.default_rng(seed)

    def draw(n: int) -> int:
        lo, hi = max(1, math.floor(n * (1 - range_ratio))), max(1, math.ceil(n * (1 + range_ratio)))
        return int(rng.integers(lo, hi + 1))

    reqs, outs = [], []
    for i in range(num_prompts):
        want = draw(input_len)
        start = int(rng.integers(0, max(1, len(words) - 2 * want - 1)))
        ids = backend.text_ids(" ".join(words[start:start + 2 * want]))[:want]
        reqs.append(backend.capabilities.text_request(backend.detokenize(ids), id=f"synthetic-{i}"))
        outs.append(draw(output_len))
    return Workload(name=f"synthetic(in={input_len}, out={output_len}, r={range_ratio:g})", requests=reqs,
                    output_lens=outs, ignore_eos=ignore_eos, seed=seed)


def from_requests(name: str, requests: Sequence[Request], output_len: int, *, ignore_eos: bool = True,
                  seed: int = 0) -> Workload:
    return Workload(name=name, requests=list(requests), output_lens=[output_len] * len(requests),
                    ignore_eos=ignore_eos, seed=seed)


class MemorySampler:
    """Calls `snapshot()` every `interval` seconds in a thread while the `with` block runs."""

    def __init__(self, snapshot: Callable[[], MemorySnapshot], interval: float = 0.5) -> None:
        self.snapshot, self.interval = snapshot, interval
        self.samples: list[MemorySnapshot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="paritybench-memory")
        self.errors = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            self.samples.append(self.snapshot())
        except Exception:  # a missed sample is not worth stopping a benchmark for
            self.errors += 1

    def __enter__(self) -> MemorySampler:
        # The baseline sample is taken before the measured block starts: on vLLM a sample scrapes
        # /metrics, which would compete with the first requests for the API server's CPU.
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._sample()

    def summary(self) -> MemorySummary:
        """Peak and steady (median) of each field, and the timeline (seconds from the first sample)."""
        out: dict[str, Any] = {"samples": len(self.samples), "interval_s": self.interval}
        if not self.samples:
            return MemorySummary.model_validate(out)
        t0 = self.samples[0].timestamp
        fields = ("rss_bytes", "live_array_bytes", "device_bytes_in_use", "device_peak_bytes", "kv_cache_usage",
                  "requests_running", "requests_waiting")
        timeline: dict[str, list] = {"t_s": [round(s.timestamp - t0, 3) for s in self.samples]}
        for f in fields:
            vals = [getattr(s, f) for s in self.samples]
            if all(v is None for v in vals):
                continue
            timeline[f] = vals
            known = [v for v in vals if v is not None]
            out[f"peak_{f}"] = max(known)
            out[f"steady_{f}"] = float(np.median(known))
        out["timeline"] = timeline
        return MemorySummary.model_validate(out)


# ----------------------------------------------------------------------------- vLLM


def arrival_offsets(n: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) as `vllm bench serve` draws them: all at once for an
    infinite rate; otherwise gamma-distributed gaps with mean 1/rate (burstiness 1 = Poisson)."""
    if math.isinf(request_rate):
        return [0.0] * n
    if request_rate <= 0 or burstiness <= 0:
        raise ValueError("request_rate and burstiness must be > 0")
    rng = np.random.default_rng(seed)
    gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist()


def run_serving(backend: Backend, workload: Workload, *, max_concurrency: int | None = None,
                request_rate: float = math.inf, burstiness: float = 1.0, warmups: int = 1,
                percentiles: Sequence[float] = PERCENTILES, memory_interval: float = MEMORY_INTERVAL_S) -> ServingRun:
    """One level: the whole workload through an engine that streams (`TimedStreaming`), each request
    timed token by token, at most `max_concurrency` in flight."""
    if not isinstance(backend, TimedStreaming):
        raise TypeError(f"the {backend.name} engine does not stream timed requests; use run_batched")
    pairs = [(r, workload.sampling(i)) for i, r in enumerate(workload.requests)]
    if warmups:
        backend.run_timed(pairs[:warmups], concurrency=warmups)
    offsets = arrival_offsets(len(pairs), request_rate, burstiness, workload.seed)
    with MemorySampler(backend.memory, memory_interval) as mem:
        t0 = time.perf_counter()
        outcomes = backend.run_timed(pairs, concurrency=max_concurrency, offsets=offsets)
        duration = time.perf_counter() - t0
    records = []
    for (req, _), (start, result) in zip(pairs, outcomes):
        if isinstance(result, Exception):
            records.append(RequestRecord.failure(start, str(result), request_id=req.id))
        else:
            records.append(RequestRecord.from_token_times(start, result.timings.token_times_s or [],
                                                          len(result.prompt_ids), request_id=req.id))
    return ServingRun.model_validate({
        "backend": backend.name, "mode": "serving", "level": max_concurrency,
        "num_prompts": len(pairs), "max_concurrency": max_concurrency,
        "request_rate": "inf" if math.isinf(request_rate) else request_rate, "burstiness": burstiness,
        **summarize(records, duration, percentiles),
        "input_lens": [r.prompt_len for r in records], "output_lens": [r.output_len for r in records],
        "ttfts": [r.ttft for r in records], "itls": [r.itl for r in records],
        "latencies": [r.latency for r in records], "errors": [r.error or "" for r in records],
        "memory": mem.summary(),
        "harness_peak_rss_bytes": peak_rss_bytes(),
    })


# ----------------------------------------------------------------------------- batches


def run_batched(backend: Backend, workload: Workload, *, batch_size: int,
                memory_interval: float = MEMORY_INTERVAL_S) -> BatchRun:
    """One batch size: a warm-up (compiles every shape it needs on an engine that compiles), then
    the measured pass; steady-state tokens/s exclude nothing but are measured after warm-up.

    Where the engine counts its compilations (`CompileCounting`), the warm-up runs one batch of each
    (size, output length), the shapes the harness can tell apart, and a measured pass that still
    compiled (a shape only the engine tells apart, such as a prompt-length bucket) counts as warm-up
    and is run again; where it does not count them, the warm-up is the whole workload once."""
    counting = isinstance(backend, CompileCounting)

    def compiled() -> tuple[int, float]:
        if isinstance(backend, CompileCounting):
            c = backend.compilations()
            return c.count, c.seconds
        return 0, 0.0

    groups: dict[int, list[int]] = {}
    for i, n in enumerate(workload.output_lens):
        groups.setdefault(n, []).append(i)
    batches = [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]
    first_of_each: dict[tuple[int, int], list[int]] = {}
    for b in batches:
        first_of_each.setdefault((len(b), workload.output_lens[b[0]]), b)
    warm = list(first_of_each.values()) if counting else batches

    def one_pass(todo: list[list[int]]) -> tuple[float, float, int, int, list[float]]:
        c0, s0 = compiled()
        t0 = time.perf_counter()
        tokens, per_batch = 0, []
        for b in todo:
            tb = time.perf_counter()
            gens = backend.generate([workload.requests[i] for i in b], workload.sampling(b[0]))
            per_batch.append(time.perf_counter() - tb)
            tokens += sum(len(g.token_ids) for g in gens)
        c1, s1 = compiled()
        return time.perf_counter() - t0, s1 - s0, c1 - c0, tokens, per_batch

    warm_s, warm_compile_s, warm_compiles, _, _ = one_pass(warm)
    warm_batches = len(warm)
    for again in (True, False):
        with MemorySampler(backend.memory, memory_interval) as mem:
            dur, compile_s, compiles, tokens, per_batch = one_pass(batches)
        if not (counting and compiles and again):
            break
        warm_s, warm_compile_s, warm_compiles = warm_s + dur, warm_compile_s + compile_s, warm_compiles + compiles
        warm_batches += len(batches)
    total_in = sum(len(backend.prompt_ids(r)) for r in workload.requests)
    return BatchRun(
        backend=backend.name, level=batch_size, batch_size=batch_size,
        compilations_counted=counting, num_prompts=len(workload.requests),
        batches=len(batches), warmup_batches=warm_batches, warmup_s=warm_s, compile_s=warm_compile_s,
        compilations_warmup=warm_compiles,
        duration=dur, compilations_after_warmup=compiles, compile_s_after_warmup=compile_s,
        total_input_tokens=total_in, total_output_tokens=tokens,
        output_throughput=tokens / dur, total_token_throughput=(total_in + tokens) / dur,
        request_throughput=len(workload.requests) / dur,
        batch_latencies_s=per_batch,
        batch_latency_s={"mean": float(np.mean(per_batch)), "median": float(np.median(per_batch)),
                         "max": float(np.max(per_batch))},
        memory=mem.summary(),
        harness_peak_rss_bytes=peak_rss_bytes(),
    )


@dataclasses.dataclass(frozen=True)
class LevelSettings:
    """How each level runs: arrivals, warm-ups and percentiles for a streaming engine; memory
    sampling for both kinds."""

    request_rate: float = math.inf
    burstiness: float = 1.0
    warmups: int = 1
    percentiles: Sequence[float] = PERCENTILES
    memory_interval: float = MEMORY_INTERVAL_S


def run_levels(side: Backend, workload: Workload, levels: Sequence[int], settings: LevelSettings, *,
               reused: dict[int, ServingRun | BatchRun] | None = None,
               before_level: Callable[[int], None] | None = None,
               on_level: Callable[[int, ServingRun | BatchRun, bool], None] | None = None) -> list[ServingRun | BatchRun]:
    """The workload at each level: an engine that streams (`TimedStreaming`) at each max concurrency,
    the others at each batch size; a level in `reused` (an interrupted run's) is taken as it is.
    `before_level(level)` is told as a level starts, `on_level(level, run, reused)` gets each level
    as soon as it is measured; a side that died
    during a level stops the loop (its level of failures is not kept)."""
    runs: list[ServingRun | BatchRun] = []
    for level in levels:
        if before_level is not None:
            before_level(level)
        if reused and level in reused:
            run: ServingRun | BatchRun = reused[level]
        elif isinstance(side, TimedStreaming):
            run = run_serving(side, workload, max_concurrency=level, request_rate=settings.request_rate,
                              burstiness=settings.burstiness, warmups=settings.warmups,
                              percentiles=settings.percentiles, memory_interval=settings.memory_interval)
        else:
            run = run_batched(side, workload, batch_size=level, memory_interval=settings.memory_interval)
        was_reused = bool(reused) and level in (reused or {})
        if not was_reused:
            side.check_alive()
        runs.append(run)
        if on_level is not None:
            on_level(level, run, was_reused)
        stop_point()
    return runs
