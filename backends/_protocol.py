"""The one interface every inference engine implements, and the optional capabilities.

The harness only ever talks to `Backend`. What only some engines can do is an optional,
runtime-checkable protocol the harness picks with `isinstance`, never by the engine's name:

- `TimedStreaming`: streamed requests timed token by token, sent at a bounded concurrency
  (serving benchmarks: TTFT, TPOT, ITL at concurrency levels).
- `CompileCounting`: XLA-style compilation counts and seconds (batch sweeps report compile time
  apart from the steady state).
- `ImagePixels`: the pixels the engine feeds its vision tower for a request's images.
- `CausalImageScoring`: teacher-forced scoring with causal attention inside images (a diagnostic:
  an engine that attends both ways inside images reproduces one that attends causally).
- `SettingsRescoring`: teacher-forced scoring with other `ModelSettings` (another soft-cap,
  vocabulary rows, KV-sharing targets, AltUp clip): confirms a cause named from the settings diff.
- `LayerCapture`: the residual stream after every decoder layer for one prompt (layer-wise
  localisation of a divergence); raises `UnsupportedError` with the reason where this engine
  instance cannot (an attached vLLM server, a Gemma 3n model).

Every engine reports `model_settings()` (what it computes where engines part by design).

Engines without `TimedStreaming` are benchmarked in batches (`generate` on batch sizes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._errors import ParitybenchError
from ._types import Capabilities, Generation, MemorySnapshot, ModelSettings, Request, SamplingParams, TokenScores


@runtime_checkable
class Backend(Protocol):
    """A model behind one inference engine.

    - `generate`: sample continuations (token ids, text, per-token log-probs and top-k).
    - `score`: teacher-forced log-probs of given continuation ids after each prompt: the
      numerically fair comparison, free of divergence cascades.
    - `prompt_ids`: the exact prompt ids the engine feeds (chat template applied, BOS
      included, image soft tokens expanded).
    - `score_ids`: log-probs of ids[1:] each given the ids before it, no template (text only):
      position-by-position comparison of two models.
    - `text_ids` / `detokenize`: the engine's tokenizer, plain (no template, no BOS).
    - `describe`: what this side is (model, dtype, versions, ...), for the record.
    - `model_settings`: what the engine computes where engines part by design (`ModelSettings`).
    - `guide_facts`: the engine's own words for the provider guide's table rows (setup, API,
      model loading, memory model, multi-device, quantization).
    - `throughput_notes`: known causes, on this engine and machine, of a throughput curve that
      does not rise with the batch or concurrency (shown next to a curve the report flags).
    - `memory`: a snapshot of what the engine holds now.
    - `check_alive`: raise `BackendGone` when the engine can no longer answer (a dead server).
    - `close`: release everything (a managed server, device memory). Engines are context managers.
    - `load_s` / `warmup_s`: seconds to load the model and to answer a first tiny request.
    """

    name: str
    model: str
    capabilities: Capabilities
    load_s: float | None
    warmup_s: float | None

    @property
    def vocab_size(self) -> int | None: ...

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[Generation]: ...

    def score(
        self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *, top_logprobs: int = 0
    ) -> list[TokenScores]: ...

    def prompt_ids(self, request: Request) -> list[int]: ...

    def score_ids(self, ids: Sequence[int], *, top_logprobs: int = 0) -> TokenScores: ...

    def text_ids(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def guide_facts(self) -> dict[str, str]: ...

    def throughput_notes(self) -> list[str]: ...

    def model_settings(self) -> ModelSettings: ...

    def noise_bound(self) -> tuple[float, str] | None: ...

    def weight_tensors(self) -> dict[str, np.ndarray] | None: ...

    def memory(self) -> MemorySnapshot: ...

    def check_alive(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class TimedStreaming(Protocol):
    """Serving benchmarks: requests streamed and timed, at most `concurrency` in flight."""

    def run_timed(self, pairs: Sequence[tuple[Request, SamplingParams]], *, concurrency: int | None = None,
                  offsets: Sequence[float] | None = None) -> list[tuple[float, Generation | ParitybenchError]]: ...


@dataclasses.dataclass(frozen=True)
class CompileCount:
    """Compilations so far in this process: how many, and the seconds they took."""

    count: int
    seconds: float


@runtime_checkable
class CompileCounting(Protocol):
    """Engines that compile per shape report compilations, so batch sweeps separate them."""

    def compilations(self) -> CompileCount: ...


@dataclasses.dataclass(frozen=True)
class ImagePixelsResult:
    """The pixels an engine feeds its vision tower: `resized` (HxWx3 uint8, after resizing) and
    `pixels` (HxWx3 float32, normalised), one per image of the request, and who made them."""

    processor: str
    resized: list[np.ndarray]
    pixels: list[np.ndarray]


@runtime_checkable
class ImagePixels(Protocol):
    def image_pixels(self, request: Request) -> ImagePixelsResult | None: ...


@runtime_checkable
class CausalImageScoring(Protocol):
    def score_causal_images(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
                            top_logprobs: int = 0) -> list[TokenScores]: ...


@runtime_checkable
class ImageAttentionScoring(Protocol):
    """Scores with another attention pattern inside images: "per-image" (both ways within each
    image), "causal", or "across-images" (every image token of the prompt sees every other)."""

    def score_with_image_attention(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
                                   attention: str, top_logprobs: int = 0) -> list[TokenScores]: ...


@runtime_checkable
class SettingsRescoring(Protocol):
    def score_with_settings(self, settings: ModelSettings, requests: Sequence[Request],
                            continuation_ids: Sequence[Sequence[int]], *, top_logprobs: int = 0) -> list[TokenScores]: ...


@dataclasses.dataclass(frozen=True)
class LayerStates:
    """The residual stream at every depth for one token sequence.

    hidden: (N + 2, L, D) float32, rows [embedding (images merged in), after layer 0 .. N-1, final
    norm]; ids: the L token ids fed (prompt with media soft tokens expanded, then the continuation);
    media: (L,) bool, where image or audio soft tokens sit; seconds: what the capture took."""

    hidden: np.ndarray
    ids: list[int]
    media: np.ndarray
    seconds: float


@runtime_checkable
class LayerCapture(Protocol):
    def capture_layers(self, request: Request, continuation_ids: Sequence[int] = (), *,
                       reference: np.ndarray | None = None) -> LayerStates: ...
