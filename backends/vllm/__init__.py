"""The vLLM engine: a real vLLM server through its OpenAI-compatible API (aiohttp client, as
`vllm bench serve`), managed (`VllmServer`: started, watched, stopped) or attached to by URL.
`VllmBackend` is an `backends.openai.OpenAICompatibleBackend` with what is vLLM's own.

    backends.get("vllm", model="tiny-gemma3")                         # managed server
    backends.get("vllm", model="google/gemma-3n-E4B-it", url="http://host:8000/v1")

Streams every request and times every token (`TimedStreaming`); the pixels vLLM's image
processor makes (`ImagePixels`, computed in the vLLM environment).
"""

from ..openai import nvml_process_bytes, openai_messages
from ._backend import VllmBackend
from ._server import VllmServer, advice_for, attach, root_url

__all__ = ["VllmBackend", "VllmServer", "advice_for", "attach", "nvml_process_bytes", "openai_messages", "root_url"]
