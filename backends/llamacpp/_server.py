"""llama.cpp's own server (`llama-server`, built by scripts/ensure_llamacpp_env.sh) as a managed
process (`backends._process.ServerProcess`).

    with LlamaServer("model.gguf", cache_type="f32") as server:
        server.url            # http://127.0.0.1:PORT/v1 (its OpenAI-compatible API; the native one at the root)

Flags: the model file, its alias (the served name), the context (`ctx_size` tokens shared by the
`parallel` slots: `--kv-unified`), the KV cache type (`cache_type`: f32, f16, bf16, q8_0), flash
attention (`flash_attn`: off by default: on this CPU build it moves float32 log-probs by up to 4e-4,
measured on tiny-gemma3, docs/llamacpp.md), the threads, `--metrics`; `extra_args` as they are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .._errors import InputError, ModelError
from .._process import ServerProcess

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0")
ADVICE = [
    (re.compile(r"failed to load model|error loading model|invalid magic|unknown model architecture", re.I),
     "llama.cpp cannot load this file: give a GGUF of a Gemma 3 text model (paritybench convert --to gguf writes one)"),
    (re.compile(r"failed to allocate|out of memory|cannot allocate", re.I),
     "out of memory: lower ctx_size or parallel"),
    (re.compile(r"Illegal instruction", re.I),
     "this llama.cpp was built for another CPU (a native build): rebuild it here with scripts/ensure_llamacpp_env.sh"),
]


def llamacpp_dir() -> Path:
    """llama.cpp's programs: $PARITYBENCH_LLAMACPP_ENV, else `.llamacpp` in the working directory or
    beside this checkout (`make env` links it there)."""
    if os.environ.get("PARITYBENCH_LLAMACPP_ENV"):
        return Path(os.environ["PARITYBENCH_LLAMACPP_ENV"])
    here = Path.cwd() / ".llamacpp"
    return here if here.exists() else Path(__file__).resolve().parents[2] / ".llamacpp"


def program(name: str) -> Path:
    """One of llama.cpp's programs (llama-server, llama-quantize), or a one-line error saying how to build them."""
    path = llamacpp_dir() / "bin" / name
    if not path.is_file():
        raise ModelError(f"llama.cpp's {name} is not built at {path}; run scripts/ensure_llamacpp_env.sh "
                         "(make env does) or set PARITYBENCH_LLAMACPP_ENV to a folder with bin/llama-server")
    return path


def version_text() -> str:
    """What the build says of itself (.complete: the llama-cpp-python release whose sources it is)."""
    marker = llamacpp_dir() / ".complete"
    return marker.read_text().strip() if marker.is_file() else "unknown build"


class LlamaServer(ServerProcess):
    """`llama-server -m FILE.gguf` as a child process group."""

    title = "llama.cpp server"

    def __init__(self, gguf: str | os.PathLike, *, served_model_name: str, port: int | None = None,
                 host: str = "127.0.0.1", ctx_size: int = 4096, parallel: int = 4, cache_type: str = "f32",
                 threads: int | None = None, flash_attn: str = "off", extra_args: Sequence[str] = (),
                 log_path: str | os.PathLike | None = None, startup_timeout: float = 300.0) -> None:
        from ..models import cache_root

        if cache_type not in CACHE_TYPES:
            raise InputError(f"cache_type={cache_type!r}: choose one of {', '.join(CACHE_TYPES)}")
        if flash_attn not in ("off", "on", "auto"):
            raise InputError(f"flash_attn={flash_attn!r}: choose off, on or auto")
        super().__init__(str(gguf), host=host, port=port, startup_timeout=startup_timeout, log_path=log_path,
                         log_dir=cache_root() / "llamacpp-runtime" / "logs", log_prefix="llama-server")
        self.server = program("llama-server")
        self.served_model_name = served_model_name
        self.cache_type = cache_type
        self.flash_attn = flash_attn
        # --swa-full: sliding-window layers keep every position, so that a request reusing a cached
        # prefix (forced scoring, one position at a time) attends as a fresh one does
        self.flags = ["--alias", served_model_name, "-c", str(ctx_size), "-np", str(parallel), "--kv-unified",
                      "--swa-full", "--flash-attn", flash_attn,
                      "--cache-type-k", cache_type, "--cache-type-v", cache_type, "--metrics", "--no-webui",
                      *(["-t", str(threads)] if threads else []), *[str(a) for a in extra_args]]

    @property
    def command(self) -> list[str]:
        return [str(self.server), "-m", self.model, "--host", self.host, "--port", str(self.port), *self.flags]

    def advice_for(self, text: str) -> str | None:
        return next((advice for pattern, advice in ADVICE if pattern.search(text)), None)
