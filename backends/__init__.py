"""paritybench backends: one protocol, several inference engines.

    import backends
    with backends.get("jax", model="tiny-gemma3") as b:
        [g] = b.generate([backends.Request.from_text("Hello")], backends.SamplingParams(max_tokens=8))

`backends.get(name, model=..., **options)` is the one switch between engines:

- `"jax"`: the gemma library in process. Options: dtype ("float32" | "bfloat16"), checkpoint
  (Orbax folder or gs:// path), tokenizer (tokenizer.model path), cache_length, max_batch_size,
  text_only.
- `"vllm"`: a vLLM OpenAI-compatible server; managed when no `url=` is given, attached to when
  it is.
- `"hf"`: Hugging Face transformers in process (float32, eager attention by default).
- `"openai"`: any OpenAI-compatible server, attached to by `url=`; what it offers beyond generation
  (tokenizer endpoints, token ids, prompt log-probs) is probed at start.

Engines added by other packages register under the `paritybench.engines` entry-point group.
What only some engines can do is an optional protocol (`TimedStreaming`, `CompileCounting`,
`ImagePixels`, `CausalImageScoring`) checked with `isinstance`.

Subpackages: `backends.models` (registry, resolver, conversion, tiny models), `backends.media`
(images and audio), one subpackage per engine (`backends.jax`, `backends.vllm`, `backends.hf`, `backends.openai`,
which also holds `OpenAICompatibleBackend`, the base class of engines on OpenAI-compatible servers).
"""

from . import _media as media
from ._base import BaseBackend
from ._engines import check_options, engine_class, engines, get, import_libraries, option_names
from ._envs import vllm_env_dir
from ._errors import BackendGone, InputError, ModelError, ParitybenchError, UnsupportedError
from ._protocol import (
    Backend,
    CausalImageScoring,
    CompileCount,
    CompileCounting,
    ImageAttentionScoring,
    ImagePixels,
    ImagePixelsResult,
    LayerCapture,
    LayerStates,
    SettingsRescoring,
    TimedStreaming,
)
from ._quiet import log_into as keep_library_log_in
from ._signals import install_signal_handlers, stop_point
from ._system import cpu_features, describe_cpu, peak_rss_bytes
from ._types import (
    AudioPart,
    Capabilities,
    Generation,
    ImagePart,
    MemorySnapshot,
    Message,
    Modality,
    ModelSettings,
    Request,
    SamplingParams,
    TextPart,
    Timings,
    TokenScores,
)
from .models import REGISTRY, ModelSpec, get_spec

__all__ = [
    "AudioPart", "Backend", "BackendGone", "BaseBackend", "Capabilities", "CausalImageScoring", "CompileCount",
    "CompileCounting", "Generation", "ImagePart", "ImagePixels", "ImagePixelsResult", "InputError", "ImageAttentionScoring", "LayerCapture", "LayerStates",
    "MemorySnapshot", "Message", "Modality", "ModelError", "ModelSettings", "SettingsRescoring", "ModelSpec", "ParitybenchError", "REGISTRY", "Request",
    "SamplingParams", "TextPart", "TimedStreaming", "Timings", "TokenScores", "UnsupportedError", "check_options", "cpu_features", "describe_cpu", "engine_class", "import_libraries", "option_names",
    "engines", "get", "get_spec", "install_signal_handlers", "keep_library_log_in", "media", "peak_rss_bytes", "stop_point", "vllm_env_dir",
]
