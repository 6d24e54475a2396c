"""Serving metrics with the definitions of `vllm bench serve` (vllm/benchmarks/serve.py).

Per request (seconds): TTFT = first generated token's arrival - send time; E2EL = last token's
arrival - send time; TPOT = (E2EL - TTFT) / (output tokens - 1), only for requests with more than
one output token; ITL = the gaps between consecutive streamed chunks (all requests pooled).
Per run: duration = first send to last completion; output throughput = output tokens of completed
requests / duration; total token throughput = (input + output tokens) / duration; request
throughput = completed requests / duration. Failed requests are counted, never dropped, and add
no tokens or latencies. Latency statistics are reported in milliseconds as mean, median, std and
the chosen percentiles (vLLM's `--metric-percentiles`), under vLLM's field names
(`mean_ttft_ms`, `median_tpot_ms`, `p99_itl_ms`, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

PERCENTILES = (50.0, 90.0, 99.0)


class RequestRecord(BaseModel):
    """One request as the client saw it. Times are seconds on one monotonic clock."""

    request_id: str | None = None
    start_time: float  # when the request was sent
    success: bool
    error: str | None = None
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0  # seconds from send to the first generated token
    latency: float = 0.0  # seconds from send to the last token (E2EL)
    itl: list[float] = Field(default_factory=list)  # gaps between consecutive chunks after the first

    @classmethod
    def from_token_times(cls, start_time: float, token_times: Sequence[float], prompt_len: int,
                         request_id: str | None = None) -> RequestRecord:
        """From per-token arrival times (seconds since send; tokens of one chunk share a time)."""
        chunks = sorted(set(token_times))
        return cls(request_id=request_id, start_time=start_time, success=True, prompt_len=prompt_len,
                   output_len=len(token_times), ttft=chunks[0] if chunks else 0.0,
                   latency=chunks[-1] if chunks else 0.0, itl=[b - a for a, b in zip(chunks, chunks[1:])])

    @classmethod
    def failure(cls, start_time: float, error: str, prompt_len: int = 0, request_id: str | None = None):
        return cls(request_id=request_id, start_time=start_time, success=False, error=error, prompt_len=prompt_len)


def _stats(name: str, values_s: Sequence[float], percentiles: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values_s if len(values_s) else [0.0], dtype=float) * 1000.0
    out = {f"mean_{name}_ms": float(np.mean(v)), f"median_{name}_ms": float(np.median(v)),
           f"std_{name}_ms": float(np.std(v))}
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = float(np.percentile(v, p))
    return out


def summarize(records: Sequence[RequestRecord], duration_s: float,
              percentiles: Sequence[float] = PERCENTILES) -> dict[str, float | int]:
    """Run-level metrics under `vllm bench serve`'s names (its `--save-result` JSON)."""
    ok = [r for r in records if r.success]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    itls = [x for r in ok for x in r.itl]
    dur = max(duration_s, 1e-9)
    out: dict[str, float | int] = {
        "duration": duration_s, "completed": len(ok), "failed": len(records) - len(ok),
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur, "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
    }
    out.update(_stats("ttft", [r.ttft for r in ok], percentiles))
    out.update(_stats("tpot", tpots, percentiles))
    out.update(_stats("itl", itls, percentiles))
    out.update(_stats("e2el", [r.latency for r in ok], percentiles))
    return out
