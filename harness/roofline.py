"""Roofline estimates: the output tok/s this machine's measured matmul throughput and memory read
bandwidth allow one decode step of a Gemma 3 model, and the seconds they allow a prefill.

One decode step of B sequences at context C (every sequence reads its own keys and values; the
logits are a [B, D] x [D, V] product):

    flops(B) = 2 B (layers x matmul weights per layer + V D) + 4 B q_dim (positions each layer sees)
    bytes(B) = weight bytes (matmul weights at their stored size, the V x D table at the compute
               dtype) + B x (keys and values each layer reads) x KV-cache bytes
    roofline tok/s = B / max(flops / matmul FLOP/s, bytes / read bandwidth)

A sliding layer sees min(C, window) positions, a full layer C. The machine's figures are measured
with numpy (float32 matmul of 2048 x 2048, a matrix-vector product over 256 MiB, best of 5), so the
roofline is what this machine's BLAS reaches, not a datasheet peak. Gemma 3n (AltUp, per-layer
inputs, KV sharing) and weights of unknown stored size are not estimated: the reason is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from backends import ModelSettings

from .results import MachinePeaks, Roofline

_DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
_QUANT_BYTES = {None: None, "fp8": 1.0}  # stored bytes per matmul weight (None: the compute dtype's)
_SHAPE = ("embed_dim", "hidden_dim", "num_heads", "num_kv_heads", "head_dim", "layer_types", "logit_rows", "dtype")


def measure_machine() -> MachinePeaks:
    """This machine's float32 matmul FLOP/s and matrix-vector read bandwidth (numpy, best of 5)."""

    def best(f: Callable[[], object], n: int = 5) -> float:
        f()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    flops = 2 * 2048**3 / best(lambda: a @ a)
    # read bandwidth as a decode step sees it: a matrix-vector product over a 256 MiB matrix (BLAS,
    # every core); numpy's one-threaded sum reads at half that on these machines
    big, x = np.ones((16384, 4096), np.float32), np.ones(4096, np.float32)
    return MachinePeaks(matmul_flops=flops, read_bytes_s=big.nbytes / best(lambda: big @ x))


def why_not(s: ModelSettings) -> str | None:
    """Why no roofline can be estimated for a side with settings `s` (None: it can)."""
    if s.family not in (None, "gemma3"):
        return f"{s.family}: AltUp, per-layer inputs and KV sharing are not in the estimate"
    missing = [f for f in _SHAPE if getattr(s, f) is None]
    if missing:
        return f"the side does not report its model's {', '.join(missing)}"
    if s.dtype not in _DTYPE_BYTES:
        return f"unknown bytes per value of dtype {s.dtype}"
    if s.quantization not in _QUANT_BYTES:
        return f"weights quantized with {s.quantization}: their stored size per weight is not known here"
    return None


def _layer_weights(s: ModelSettings) -> int:
    """Matmul weights of one layer: q, k, v, o, gate, up, down."""
    assert s.embed_dim and s.num_heads and s.head_dim and s.num_kv_heads and s.hidden_dim
    d, q, kv = s.embed_dim, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    return 2 * d * q + 2 * d * kv + 3 * d * s.hidden_dim


def _seen(s: ModelSettings, context: int) -> list[int]:
    assert s.layer_types is not None
    return [min(context, s.sliding_window or context) if t == "sliding" else context for t in s.layer_types]


def weight_bytes(s: ModelSettings) -> float:
    """Bytes one decode step reads of the weights: the layers' matmul weights as stored, the
    embedding table (the logits matrix) at the compute dtype."""
    assert s.layer_types is not None and s.logit_rows and s.embed_dim and s.dtype
    value = _DTYPE_BYTES[s.dtype]
    stored = _QUANT_BYTES[s.quantization] or value
    return len(s.layer_types) * _layer_weights(s) * stored + s.logit_rows * s.embed_dim * value


def decode_tok_s(s: ModelSettings, batch: int, context: int, peaks: MachinePeaks) -> float:
    """Output tok/s one decode step of `batch` sequences at `context` tokens can reach."""
    assert s.layer_types is not None and s.logit_rows and s.embed_dim and s.dtype
    assert s.num_heads and s.head_dim and s.num_kv_heads
    q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    seen = _seen(s, context)
    kv_value = _DTYPE_BYTES.get(s.kv_cache_dtype or s.dtype, _DTYPE_BYTES[s.dtype])
    flops = 2 * batch * (len(seen) * _layer_weights(s) + s.logit_rows * s.embed_dim) + sum(4 * batch * q * n for n in seen)
    nbytes = weight_bytes(s) + batch * sum(2 * kv * n for n in seen) * kv_value
    return batch / max(flops / peaks.matmul_flops, nbytes / peaks.read_bytes_s)


def prefill_s(s: ModelSettings, tokens: int, peaks: MachinePeaks) -> float:
    """Seconds a prefill of `tokens` needs at the matmul throughput (the logits of the last
    position only, as a server computes them; scores and weighted sums within each layer's window)."""
    assert s.layer_types is not None and s.logit_rows and s.embed_dim and s.num_heads and s.head_dim

    def attended(window: int | None) -> int:  # key positions all query positions attend to
        w = min(window or tokens, tokens)
        return w * (w + 1) // 2 + (tokens - w) * w

    q = s.num_heads * s.head_dim
    attn = sum(4 * q * attended(s.sliding_window if t == "sliding" else None) for t in s.layer_types)
    flops = 2 * tokens * len(s.layer_types) * _layer_weights(s) + 2 * s.logit_rows * s.embed_dim + attn
    return flops / peaks.matmul_flops


def for_levels(s: ModelSettings, levels: Sequence[int], input_len: int, output_len: int,
               peaks: MachinePeaks) -> Roofline:
    """The roofline of a side's bench levels (context: the input plus half the output, the mean
    context of a decode step)."""
    context = input_len + output_len // 2
    reason = why_not(s)
    if reason is not None:
        return Roofline(machine=peaks, context=context, note=f"no roofline: {reason}")
    return Roofline(machine=peaks, context=context, weight_bytes=weight_bytes(s),
                    prefill_ms=prefill_s(s, input_len, peaks) * 1e3,
                    tok_s={int(b): decode_tok_s(s, int(b), context, peaks) for b in levels})
