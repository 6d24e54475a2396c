"""The one interface both inference backends implement."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from ._types import Capabilities, Generation, MemorySnapshot, Request, SamplingParams, TokenScores


@runtime_checkable
class Backend(Protocol):
    """A model behind one inference engine.

    - `generate`: sample continuations (token ids, text, per-token log-probs and top-k).
    - `score`: teacher-forced log-probs of given continuation ids after each prompt: the
      numerically fair comparison, free of divergence cascades.
    - `prompt_ids`: the exact prompt ids the backend feeds (chat template applied, BOS
      included, image soft tokens expanded).
    - `score_ids`: log-probs of ids[1:] each given the ids before it, no template (text only):
      position-by-position comparison of the two models.
    - `text_ids` / `detokenize`: the backend's tokenizer, plain (no template, no BOS).
    - `describe`: what this side is (model, dtype, versions, ...), for the record.
    - `memory`: a snapshot of what the backend holds now.
    - `close`: release everything (a managed server, device memory). Backends are context
      managers.
    """

    name: str
    model: str
    capabilities: Capabilities
    vocab_size: int | None

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[Generation]: ...

    def score(
        self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *, top_logprobs: int = 0
    ) -> list[TokenScores]: ...

    def prompt_ids(self, request: Request) -> list[int]: ...

    def score_ids(self, ids: Sequence[int], *, top_logprobs: int = 0) -> TokenScores: ...

    def text_ids(self, text: str) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def memory(self) -> MemorySnapshot: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc: object) -> None: ...
