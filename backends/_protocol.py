"""The one interface both inference backends implement."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from ._types import Capabilities, Generation, MemorySnapshot, Request, SamplingParams, TokenScores


@runtime_checkable
class Backend(Protocol):
    """A model behind one inference engine.

    - `generate`: sample continuations (token ids, text, per-token log-probs and top-k).
    - `score`: teacher-forced log-probs of given continuation ids after each prompt: the
      numerically fair comparison, free of divergence cascades.
    - `prompt_ids`: the exact prompt ids the backend feeds (chat template applied, BOS
      included, image soft tokens expanded).
    - `memory`: a snapshot of what the backend holds now.
    - `close`: release everything (a managed server, device memory). Backends are context
      managers.
    """

    name: str
    model: str
    capabilities: Capabilities

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[Generation]: ...

    def score(
        self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *, top_logprobs: int = 0
    ) -> list[TokenScores]: ...

    def prompt_ids(self, request: Request) -> list[int]: ...

    def memory(self) -> MemorySnapshot: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Backend": ...

    def __exit__(self, *exc: object) -> None: ...
