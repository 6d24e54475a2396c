"""paritybench backends: one protocol, two inference engines.

    import backends
    with backends.get("jax", model="tiny-gemma3") as b:
        [g] = b.generate([backends.Request.from_text("Hello")], backends.SamplingParams(max_tokens=8))

`backends.get(name, model=..., **options)` is the one switch between engines:

- `"jax"`: the gemma library in process. Options: dtype ("float32" | "bfloat16"), checkpoint
  (Orbax folder or gs:// path), tokenizer (tokenizer.model path), cache_length, max_batch_size,
  text_only.
- `"vllm"`: a vLLM OpenAI-compatible server; managed when no `url=` is given, attached to when
  it is.
"""

from ._errors import BackendGone, InputError, ModelError, ParitybenchError, UnsupportedError
from ._protocol import Backend
from ._types import (
    AudioPart,
    Capabilities,
    Generation,
    ImagePart,
    MemorySnapshot,
    Message,
    Request,
    SamplingParams,
    TextPart,
    Timings,
    TokenScores,
)
from .models import REGISTRY, ModelSpec, get_spec

BACKENDS = ("jax", "vllm")


def get(name: str, *, model: str, **options) -> Backend:
    """The backend `name` ("jax" or "vllm") serving `model` (registry name or folder path)."""
    if name == "jax":
        from .jax_backend import JaxBackend

        return JaxBackend(model, **options)
    if name == "vllm":
        from .vllm_backend import VllmBackend

        return VllmBackend(model, **options)
    raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


__all__ = [
    "AudioPart", "BackendGone", "Backend", "BACKENDS", "Capabilities", "Generation", "ImagePart", "InputError", "MemorySnapshot",
    "Message", "ModelError", "ModelSpec", "ParitybenchError", "REGISTRY", "Request", "SamplingParams", "TextPart",
    "Timings", "TokenScores", "UnsupportedError", "get", "get_spec",
]
