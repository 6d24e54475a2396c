"""llama.cpp as an engine: its own server (`llama-server`) over HTTP, managed or attached
(`LlamacppBackend`, engine name `llamacpp`), the server process (`LlamaServer`), and GGUF files
quantized by its quantizer (`quantized`)."""

from ._backend import LlamacppBackend
from ._quantize import QUANT_TYPES, quantized
from ._server import LlamaServer, llamacpp_dir, program

__all__ = ["QUANT_TYPES", "LlamaServer", "LlamacppBackend", "llamacpp_dir", "program", "quantized"]
