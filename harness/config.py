"""The comparison's settings: one pydantic model, equal to the CLI flags, loadable from YAML.

A config file is either paritybench's own (the fields of `CompareConfig` at the top level) or an
Argentic agent's `config.yaml`: its `llm:` section (provider vllm) gives the vLLM side's settings,
and an optional `paritybench:` section the rest; other sections (messaging, ...) are ignored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from backends import InputError

from . import yamlio


class BenchSettings(BaseModel):
    """Throughput and memory runs (see docs/metrics.md); `enabled: false` skips them."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    num_prompts: int = Field(16, ge=1)
    input_len: int = Field(64, ge=1)
    output_len: int = Field(32, ge=1)
    concurrency: list[int] = Field(default_factory=lambda: [1, 4, 8], min_length=1)  # vLLM levels
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 8], min_length=1)  # JAX levels
    request_rate: float = Field(math.inf, gt=0)
    warmups: int = Field(2, ge=0)
    memory_interval: float = Field(1.0, gt=0)


class QualitySettings(BaseModel):
    """Perplexity and log-likelihood accuracy of every side (harness/quality.py; docs/metrics.md,
    "Quality"); off unless `enabled` (`--quality`)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    corpora: list[str] = Field(default_factory=lambda: ["evals/quality/english.txt", "evals/quality/russian.txt"])
    suite: str | None = "evals/quality/knowledge.yaml"  # multiple choice, scored by log-likelihood
    max_len: int = Field(512, ge=2)  # ids per scored piece of a document (BOS included)


class SideSpec(BaseModel):
    """One side of a comparison: a name, an engine (`vllm`, `jax`, `hf` or a plug-in), a model
    (default: the comparison's) and options given to the engine's constructor as they are (vLLM:
    dtype, kv_cache_dtype, quantization, tensor_parallel_size, max_model_len, extra_args, url, ...;
    JAX: dtype, ...). `bound`: the max |dlogprob| this side may part from the reference by (a
    quantized or reduced-precision side), or "report" to measure it without a verdict that counts."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    engine: str
    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    bound: float | Literal["report"] | None = None


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "tiny-gemma3-vision"  # the default suite has images
    jax_model: str | None = None  # a different model for one side (say a converted checkpoint)
    vllm_model: str | None = None
    suite: str | None = None  # default: evals/smoke.yaml
    backends: list[str] = Field(default_factory=lambda: ["vllm", "jax"], min_length=1)  # side or engine names
    vllm_url: str | None = None  # attach to a running server instead of starting one
    vllm_served_model: str | None = None  # the name a running server serves the model under
    vllm_api_key: SecretStr | None = None  # never written anywhere; VLLM_API_KEY works too
    request_timeout: float = Field(300.0, gt=0)  # seconds per vLLM request (whole stream)
    max_tokens: int = Field(24, ge=1)  # parity: greedy tokens per prompt
    temperature: float = Field(0.0, ge=0)  # answers of `run`; parity is always greedy
    top_k_logprobs: int = Field(5, ge=1, le=20)
    tolerance: Literal["auto", "float32", "bfloat16"] = "auto"
    # layer-by-layer localisation: off, the prompts whose log-probs fail, or all prompts
    localize: Literal["off", "failing", "all"] = "failing"
    localize_threshold: float = Field(1e-4, gt=0)  # relative max difference at which a row parts
    # start a managed vLLM server with its layer-capture extension (dev mode); --localize sets it
    layer_capture: bool = False
    seed: int = 0
    bench: BenchSettings = Field(default_factory=BenchSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    # more options per engine, given to its constructor as they are (e.g. {"jax": {"conventions": "hf"}})
    engines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    out: str = "out/compare"

    # named sides: each an engine with its own model and options; `backends` then lists side names
    sides: list[SideSpec] = Field(default_factory=list)
    reference: str | None = None  # the side every other side is compared with (default: every pair)

    @model_validator(mode="after")
    def _sides(self) -> CompareConfig:
        from backends import check_options, engines

        names = [s.name for s in self.sides]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"field sides: two sides are named {twice[0]!r}; give each side its own name")
        if self.sides and "backends" not in self.model_fields_set:
            self.backends = names
        known = engines()
        for n in self.backends:
            if n not in names and n not in known:
                raise ValueError(f"field backends: unknown side or engine {n!r}; sides: {', '.join(names) or 'none'}; engines: "
                                 f"{', '.join(known)}")
        if len(set(self.backends)) != len(self.backends):
            raise ValueError("field backends: each side at most once")
        if self.reference is not None and self.reference not in self.backends:
            raise ValueError(f"field reference: {self.reference!r} is not among the sides ({', '.join(self.backends)})")
        for s in self.sides:
            if s.engine not in known:
                raise ValueError(f"field sides: side {s.name!r}: unknown engine {s.engine!r}; choose from {', '.join(known)}")
            try:
                check_options(s.engine, {**self.engines.get(s.engine, {}), **s.options})
            except InputError as e:
                raise ValueError(f"field sides: side {s.name!r}: {e}") from None
        return self

    def side(self, name: str) -> SideSpec:
        """The side `name`: a named side, or the shorthand of an engine's name."""
        return next((s for s in self.sides if s.name == name), None) or SideSpec(name=name, engine=name)

    def pairs(self) -> list[tuple[str, str]]:
        """The pairs compared: the reference with each other side, else every pair in order."""
        if self.reference is not None:
            return [(self.reference, n) for n in self.backends if n != self.reference]
        return [(x, y) for i, x in enumerate(self.backends) for y in self.backends[i + 1:]]

    def model_for(self, backend: str) -> str:
        """The model of one side: a named side's own, else its engine's field (`<engine>_model`, e.g.
        `jax_model`; with `<engine>_url`, the name that server serves it under: `<engine>_served_model`),
        else the shared one."""
        side = self.side(backend)
        if side.model:
            return side.model
        own = getattr(self, f"{side.engine}_model", None)
        if getattr(self, f"{side.engine}_url", None) and getattr(self, f"{side.engine}_served_model", None):
            own = getattr(self, f"{side.engine}_served_model")
        return own or self.model

    def engine_options(self, backend: str) -> dict[str, Any]:
        """Options this comparison gives side `backend`'s engine: the comparison's own settings that
        the engine takes (`option_names`: the client's concurrency, its timeout, the API key, layer
        capture; the shorthand side's `<side>_url`), then `engines.<engine>`, then the named side's own."""
        from backends import option_names

        side = self.side(backend)
        shared: dict[str, Any] = {"max_concurrency": max(self.bench.concurrency + [16]),
                                  "request_timeout": self.request_timeout}
        key = getattr(self, f"{side.engine}_api_key", None)
        if key is not None:
            shared["api_key"] = key.get_secret_value()
        shorthand = all(s.name != backend for s in self.sides)  # a side named after its engine
        url = getattr(self, f"{side.engine}_url", None) if shorthand else None
        if "url" not in side.options:
            if url:
                shared["url"] = url
            elif self.layer_capture:
                shared["layer_capture"] = True
        taken = set(option_names(side.engine))
        return {**{k: v for k, v in shared.items() if k in taken}, **self.engines.get(side.engine, {}), **side.options}

    def public(self) -> dict[str, Any]:
        """The settings as recorded in results: the API key only as whether one was set."""
        d = self.model_dump(mode="json", exclude={"vllm_api_key"})
        d["vllm_api_key_set"] = self.vllm_api_key is not None
        return d


class _ArgenticLLM(BaseModel):
    """The `llm:` section of an Argentic config.yaml (fields other than these are ignored)."""

    model_config = ConfigDict(extra="ignore")
    # paritybench reads the vLLM settings of an Argentic config; other providers are a schema error
    provider: Literal["vllm"]
    vllm_base_url: str | None = None
    vllm_model_name: str | None = None
    vllm_api_key: SecretStr | None = None
    temperature: float | None = None
    max_tokens: int | None = None


def load(path: str | Path) -> CompareConfig:
    """A `CompareConfig` from a YAML file (paritybench's own or Argentic's)."""
    data, node = yamlio.read(path, "config file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path} line 1: a config file is a mapping of settings (see docs/architecture.md)")
    if "llm" not in data:
        return yamlio.validate(CompareConfig, data, path, node)
    llm = yamlio.validate(_ArgenticLLM, data["llm"], path, node, prefix=["llm"])
    own = data.get("paritybench") or {}
    if not isinstance(own, dict):
        raise InputError(f"{path} line {yamlio.line_of(node, ['paritybench'])}: field paritybench: must be a mapping")
    mapped: dict[str, Any] = {}
    if llm.vllm_base_url:
        mapped["vllm_url"] = llm.vllm_base_url
    if llm.vllm_model_name:
        mapped["vllm_served_model"] = llm.vllm_model_name
        mapped["model"] = llm.vllm_model_name
    if llm.vllm_api_key is not None:
        mapped["vllm_api_key"] = llm.vllm_api_key
    if llm.temperature is not None:
        mapped["temperature"] = llm.temperature
    if llm.max_tokens is not None:
        mapped["max_tokens"] = llm.max_tokens
    return yamlio.validate(CompareConfig, {**mapped, **own}, path, node, prefix=["paritybench"])


def with_overrides(config: CompareConfig, **flags: Any) -> CompareConfig:
    """`config` with every flag that was given (not None) replacing its value; bench.* by dotted name."""
    top = {k: v for k, v in flags.items() if v is not None and not k.startswith("bench_")}
    bench = {k[6:]: v for k, v in flags.items() if v is not None and k.startswith("bench_")}
    data = config.model_dump(exclude_unset=True)  # what was set stays set, defaults stay defaults
    data.update(top)
    if bench:
        data["bench"] = {**config.bench.model_dump(exclude_unset=True), **bench}
    try:
        return CompareConfig.model_validate(data)
    except ValidationError as e:  # a flag with a bad value
        first = e.errors()[0]
        msg = first["msg"].removeprefix("Value error, ")
        if not first["loc"]:  # a check across settings (sides, reference)
            raise InputError(msg) from None
        raise InputError(f"--{'-'.join(str(x) for x in first['loc']).replace('_', '-')}: {msg}") from None
