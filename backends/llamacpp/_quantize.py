"""GGUF files quantized by llama.cpp's own quantizer (`llama-quantize`), into the cache once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .._errors import InputError, ModelError
from ._server import program

# llama.cpp's quantization types paritybench offers (llama-quantize takes these names)
QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q2_K")


def quantized(src: Path, qtype: str) -> Path:
    """`src` (a GGUF, F32 or F16 for a faithful result) quantized to `qtype` beside it in the
    cache (`<name>-<qtype>.gguf`), made once."""
    if qtype not in QUANT_TYPES:
        raise InputError(f"quantize={qtype!r}: choose one of {', '.join(QUANT_TYPES)}")
    src = Path(src)
    from ..models import cache_root

    dst = cache_root() / "gguf-converted" / f"{src.stem}-{qtype}.gguf"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.part")
    p = subprocess.run([str(program("llama-quantize")), str(src), str(tmp), qtype], capture_output=True, text=True)
    if p.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"llama-quantize could not write {qtype} from {src}: {last[0]}")
    tmp.replace(dst)
    return dst
