"""Results as typed records: what `compare` returns, what `results.json` holds and what the
report reads.

The field names are the file's (and, for serving runs, `vllm bench serve --save-result`'s), so
other tools read `results.json` as before; `schema_version` says which layout a file has.
`load_results` reads older files too (version 1, before engines described themselves).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from backends import MemorySnapshot

from .findings import Arbitration, ParityReport

SCHEMA_VERSION = 2
_PERCENTILE_FIELD = re.compile(r"p\d+(\.\d+)?_(ttft|tpot|itl|e2el)_ms")
_MEMORY_FIELDS = ("rss_bytes", "live_array_bytes", "device_bytes_in_use", "device_peak_bytes", "kv_cache_usage",
                  "requests_running", "requests_waiting")

Number = int | float


class _Record(BaseModel):
    # infinities (a request rate of inf) stay numbers, written as JSON's Infinity as before
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class MemorySummary(_Record):
    """Memory sampled during a measured run: per field the peak and the steady (median) value,
    and the timeline (seconds from the first sample). Fields an engine cannot know are absent."""

    samples: int = 0
    interval_s: float = 1.0
    timeline: dict[str, list[Any]] = Field(default_factory=dict)
    peak_rss_bytes: Number | None = None
    steady_rss_bytes: Number | None = None
    peak_live_array_bytes: Number | None = None
    steady_live_array_bytes: Number | None = None
    peak_device_bytes_in_use: Number | None = None
    steady_device_bytes_in_use: Number | None = None
    peak_device_peak_bytes: Number | None = None
    steady_device_peak_bytes: Number | None = None
    peak_kv_cache_usage: Number | None = None
    steady_kv_cache_usage: Number | None = None
    peak_requests_running: Number | None = None
    steady_requests_running: Number | None = None
    peak_requests_waiting: Number | None = None
    steady_requests_waiting: Number | None = None

    def peak(self, field: str) -> Number | None:
        return getattr(self, f"peak_{field}")


class ServingRun(BaseModel):
    """One concurrency (or request-rate) level of an engine that streams, with `vllm bench
    serve`'s metric names; the chosen percentiles are extra fields `p<P>_<metric>_ms`."""

    model_config = ConfigDict(extra="allow")
    mode: Literal["serving"] = "serving"
    backend: str
    level: int | None = None
    num_prompts: int
    max_concurrency: int | None = None
    request_rate: float | str = "inf"
    burstiness: float = 1.0
    duration: float
    completed: int
    failed: int
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    mean_e2el_ms: float
    median_e2el_ms: float
    std_e2el_ms: float
    input_lens: list[int] = Field(default_factory=list)
    output_lens: list[int] = Field(default_factory=list)
    ttfts: list[float | None] = Field(default_factory=list)
    itls: list[list[float]] = Field(default_factory=list)
    latencies: list[float | None] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    memory: MemorySummary = Field(default_factory=MemorySummary)
    harness_peak_rss_bytes: int | None = None

    @model_validator(mode="after")
    def _only_percentiles_extra(self) -> ServingRun:
        bad = [k for k in (self.model_extra or {}) if not _PERCENTILE_FIELD.fullmatch(k)]
        if bad:
            raise ValueError(f"unknown serving-run fields {bad}")
        return self

    def percentile(self, metric: str, p: float) -> float | None:
        """The p-th percentile of `metric` (ttft, tpot, itl, e2el) in ms, if it was computed."""
        return (self.model_extra or {}).get(f"p{p:g}_{metric}_ms")


class BatchRun(_Record):
    """One batch size of an engine benchmarked in batches: a warm-up pass, then the measured pass."""

    mode: Literal["batch"] = "batch"
    backend: str
    level: int | None = None
    batch_size: int
    compilations_counted: bool = True
    num_prompts: int
    batches: int
    warmup_batches: int | None = None  # batch calls of the warm-up (None in files written before it was recorded)
    warmup_s: float
    compile_s: float
    compilations_warmup: int
    duration: float
    compilations_after_warmup: int
    compile_s_after_warmup: float
    total_input_tokens: int
    total_output_tokens: int
    output_throughput: float
    total_token_throughput: float
    request_throughput: float
    batch_latencies_s: list[float] = Field(default_factory=list)
    batch_latency_s: dict[str, float] = Field(default_factory=dict)
    memory: MemorySummary = Field(default_factory=MemorySummary)
    harness_peak_rss_bytes: int | None = None


Run = Annotated[ServingRun | BatchRun, Field(discriminator="mode")]


def level_kind(run: ServingRun | BatchRun) -> tuple[str, int | None]:
    """("concurrency" | "batch size", level) of a run."""
    if isinstance(run, ServingRun):
        return "concurrency", run.max_concurrency
    return "batch size", run.batch_size


class MachinePeaks(_Record):
    """This machine's measured float32 matmul throughput (FLOP/s) and read bandwidth (bytes/s)."""

    matmul_flops: float
    read_bytes_s: float


class Roofline(_Record):
    """What the machine allows a side's decode at each bench level (`harness.roofline`): output
    tok/s by level at the mean context (tokens), the weight bytes a step reads, the prefill of one
    input in ms; `note` says why there is none."""

    machine: MachinePeaks
    context: int
    weight_bytes: float | None = None
    prefill_ms: float | None = None
    tok_s: dict[int, float] = Field(default_factory=dict)
    note: str | None = None


class BenchSection(_Record):
    """An engine's benchmark: its workload and one run per level, next to its roofline."""

    workload: dict[str, Any] = Field(default_factory=dict)
    mode: Literal["serving", "batch"] | None = None
    runs: list[Run] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # the engine's known causes of a curve that falls
    roofline: Roofline | None = None


class SideSetup(_Record):
    """How one side was set up: seconds, what it is (`describe`), its words for the guide's table,
    and its memory right after loading."""

    backend: str  # the side's name (the engine's, unless the side was named)
    engine: str | None = None  # the engine the side runs on
    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # the side's own engine options
    setup_s: float | None = None
    load_s: float | None = None
    warmup_s: float | None = None
    describe: dict[str, Any] = Field(default_factory=dict)
    guide: dict[str, str] = Field(default_factory=dict)
    bench_mode: Literal["serving", "batch"] | None = None
    memory: MemorySnapshot | None = None
    # seconds of parity's greedy generations on this side, started as soon as it was set up (while
    # another side may still have been starting, so partly outside the parity section's seconds)
    greedy_ahead_s: float | None = None


class SuiteInfo(_Record):
    name: str
    path: str
    prompts: int
    errors: list[str] = Field(default_factory=list)


class AnswerRow(_Record):
    """One prompt answered by one side alone (`paritybench run`): the answer, or why there is none
    (`error`, `unsupported`). Fields that do not apply are left out of the file."""

    id: str
    text: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    e2e_s: float | None = None
    error: str | None = None
    unsupported: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ScoreRow(BaseModel):
    """One scored prompt: the scorer, the reference, and per side (extra fields named by the side)
    right (true), wrong (false) or no answer (null)."""

    model_config = ConfigDict(extra="allow")
    id: str
    scorer: str
    reference: Any = None

    def result(self, side: str) -> bool | None:
        return (self.model_extra or {}).get(side)


class Scores(_Record):
    prompts: list[ScoreRow] = Field(default_factory=list)
    scored: int = 0
    accuracy: dict[str, float | None] = Field(default_factory=dict)
    difference: float | None = None


class Perplexity(_Record):
    """Perplexity of one side on a text corpus: exp(mean negative log-likelihood of every token
    after the first of each document, BOS + the document's text, teacher-forced). `nll` in nats
    per token."""

    corpus: str
    documents: int
    tokens: int
    nll: float
    perplexity: float


class Accuracy(_Record):
    """Log-likelihood accuracy on a multiple-choice suite (lm-eval's acc and acc_norm): an item is
    right when the right continuation has the highest summed log-prob (acc) or the highest per
    character (acc_norm). `low`/`high`: the Wilson 95 % interval of acc."""

    suite: str
    items: int
    correct: int
    acc: float
    low: float
    high: float
    acc_norm: float
    chance: float
    answers: list[int] = Field(default_factory=list)  # each item's chosen continuation (acc)


class SideQuality(_Record):
    """One side's quality, and against the reference side (None for the reference itself):
    perplexity ratio (vLLM's perplexity test: a side may be at most 1 % worse), accuracy
    difference, and the share of items where both sides chose the same continuation."""

    perplexity: list[Perplexity] = Field(default_factory=list)
    accuracy: Accuracy | None = None
    reference: str | None = None
    perplexity_ratio: dict[str, float] = Field(default_factory=dict)  # corpus -> this side's / the reference's
    accuracy_delta: float | None = None
    same_choice: float | None = None
    verdict: Literal["pass", "fail", "report"] | None = None
    reasons: list[str] = Field(default_factory=list)


class ComparisonResults(_Record):
    """A whole run of `compare` (two or more sides) or `run` (one side)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal["compare", "run"]
    config: dict[str, Any]
    suite: SuiteInfo
    started: str
    finished: str | None = None
    setup: dict[str, SideSetup] = Field(default_factory=dict)
    capabilities: dict[str, dict[str, str]] = Field(default_factory=dict)
    parity: ParityReport | None = None
    pairs: dict[str, ParityReport] | None = None  # three or more sides: every pair
    arbitration: list[Arbitration] | None = None
    answers: dict[str, list[AnswerRow]] = Field(default_factory=dict)
    scores: Scores | None = None
    bench: dict[str, BenchSection] = Field(default_factory=dict)
    quality: dict[str, SideQuality] = Field(default_factory=dict)
    verdict: str | None = None
    reproducibility: dict[str, Any] = Field(default_factory=dict)
    resumed: dict[str, Any] | None = None
    error: str | None = None

    def sides(self) -> list[str]:
        """The sides in the order they were set up (or configured, before any was)."""
        return list(self.setup) or list(self.config.get("backends") or [])

    def to_json(self) -> dict[str, Any]:
        """The results.json content (sections that do not apply are left out, as before)."""
        drop = {k for k in ("pairs", "arbitration", "resumed", "error") if getattr(self, k) is None}
        return self.model_dump(mode="json", exclude=drop)


def upgrade_run(run: dict[str, Any]) -> dict[str, Any]:
    """A benchmark run of a version-1 file (no `mode`/`level`) in the current layout."""
    run = dict(run)
    run.setdefault("mode", "serving" if "max_concurrency" in run else "batch")
    run.setdefault("level", run.get("max_concurrency") if run["mode"] == "serving" else run.get("batch_size"))
    return run


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A results dict of an older layout in the current one (version 1: benchmark runs without
    `mode`/`level`, set-up records without the engine's `guide`)."""
    data = dict(data)
    if data.get("schema_version", 1) >= SCHEMA_VERSION:
        return data
    data["bench"] = {name: {**section, "runs": [upgrade_run(r) for r in section.get("runs") or []]}
                     for name, section in (data.get("bench") or {}).items()}
    data["setup"] = {name: {"guide": _static_guide(name), **setup} for name, setup in (data.get("setup") or {}).items()}
    data["schema_version"] = SCHEMA_VERSION
    return data


def _static_guide(side: str) -> dict[str, str]:
    """The guide rows of an engine that a version-1 file (written before engines described
    themselves, when sides were named after their engines) does not have: the engine's own."""
    import backends

    try:
        return backends.engine_class(side).static_guide() if side in backends.engines() else {}
    except ImportError:
        return {}
