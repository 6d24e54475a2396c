"""The comparison's settings: one pydantic model, equal to the CLI flags, loadable from YAML.

A config file is either paritybench's own (the fields of `CompareConfig` at the top level) or an
Argentic agent's `config.yaml`: its `llm:` section (provider vllm) gives the vLLM side's settings,
and an optional `paritybench:` section the rest; other sections (messaging, ...) are ignored.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

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


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "tiny-gemma3-vision"  # the default suite has images
    jax_model: str | None = None  # a different model for one side (say a converted checkpoint)
    vllm_model: str | None = None
    suite: str | None = None  # default: evals/smoke.yaml
    backends: list[str] = Field(default_factory=lambda: ["vllm", "jax"], min_length=1)  # engine names
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
    # more options per engine, given to its constructor as they are (e.g. {"jax": {"conventions": "hf"}})
    engines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    out: str = "out/compare"

    @field_validator("backends")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        from backends import engines

        known = engines()
        unknown = [n for n in v if n not in known]
        if unknown:
            raise ValueError(f"unknown engine {unknown[0]!r}; choose from {', '.join(known)}")
        if len(set(v)) != len(v):
            raise ValueError("each backend at most once")
        return v

    def model_for(self, backend: str) -> str:
        """The model of one side: its own (`jax_model`, `vllm_model`) or the shared one."""
        own = {"jax": self.jax_model, "vllm": (self.vllm_url and self.vllm_served_model) or self.vllm_model}
        return own.get(backend) or self.model

    def engine_options(self, backend: str) -> dict[str, Any]:
        """Options this comparison gives the engine `backend` (data per engine, no behaviour)."""
        vllm: dict[str, Any] = {"max_concurrency": max(self.bench.concurrency + [16]),
                                "request_timeout": self.request_timeout}
        if self.vllm_api_key is not None:
            vllm["api_key"] = self.vllm_api_key.get_secret_value()
        if self.vllm_url:
            vllm["url"] = self.vllm_url
        elif self.layer_capture:
            vllm["layer_capture"] = True
        return {**{"vllm": vllm}.get(backend, {}), **self.engines.get(backend, {})}

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
    data = config.model_dump()
    data.update(top)
    data["bench"] = {**data["bench"], **bench}
    try:
        return CompareConfig.model_validate(data)
    except ValidationError as e:  # a flag with a bad value
        first = e.errors()[0]
        raise InputError(f"--{'-'.join(str(x) for x in first['loc']).replace('_', '-')}: {first['msg']}") from None
