"""OpenAI-compatible engines: `OpenAICompatibleBackend`, the base class of every engine that
talks to a server through the OpenAI API (vLLM's, `backends.vllm`), and the `openai` engine
(`OpenAIBackend`), which attaches to any such server and finds out at start what it offers
beyond generation (`EndpointFeatures`).

    backends.get("openai", model="tiny-gemma3", url="http://127.0.0.1:8000/v1")

Modules: `_transport` (the aiohttp client on its own event loop: concurrency, retries, several
servers), `_payloads` (request bodies, streamed events -> `Generation`, scores), `_backend` (the
base class), `_memory` (a local server's processes and memory), `_features` (the probes and what
their answers mean), `_engine` (the `openai` engine).
"""

from ._backend import OpenAICompatibleBackend, split_urls
from ._engine import OpenAIBackend
from ._features import Answer, EndpointFeatures, features_from
from ._memory import nvml_process_bytes
from ._payloads import collect, openai_messages, sse_data
from ._transport import root_url

__all__ = ["Answer", "EndpointFeatures", "OpenAIBackend", "OpenAICompatibleBackend", "collect", "features_from",
           "nvml_process_bytes", "openai_messages", "root_url", "split_urls", "sse_data"]
