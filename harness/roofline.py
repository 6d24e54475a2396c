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

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from backends import ModelSettings, models

from .results import MachinePeaks, Roofline

_DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}
_QUANT_BYTES = {None: None, "fp8": 1.0}  # stored bytes per matmul weight (None: the compute dtype's)
_NEEDED = (*models.SHAPE_FIELDS, "layer_types", "logit_rows", "dtype")


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
    missing = [f for f in _NEEDED if getattr(s, f) is None]
    if missing:
        return f"the side does not report its model's {', '.join(missing)}"
    if s.dtype not in _DTYPE_BYTES:
        return f"unknown bytes per value of dtype {s.dtype}"
    if s.quantization not in _QUANT_BYTES:
        return f"weights quantized with {s.quantization}: their stored size per weight is not known here"
    return None


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What the estimate reads of a side's settings (checked by `why_not` first)."""

    width: int  # D
    q_dim: int
    kv_dim: int
    hidden: int
    layer_types: tuple[str, ...]
    window: int | None
    rows: int  # V: the logits matrix's rows
    value_bytes: float  # the compute dtype's
    stored_bytes: float  # a matmul weight as stored
    kv_bytes: float  # a key or value element in the cache

    @property
    def layer_weights(self) -> int:
        """Matmul weights of one layer: q, k, v, o, gate, up, down."""
        return 2 * self.width * self.q_dim + 2 * self.width * self.kv_dim + 3 * self.width * self.hidden

    def seen(self, context: int) -> list[int]:
        """Key positions each layer reads at `context` tokens (a sliding layer: its window at most)."""
        return [min(context, self.window or context) if t == "sliding" else context for t in self.layer_types]


def _shape(s: ModelSettings) -> _Shape:
    reason = why_not(s)
    if reason is not None:
        raise ValueError(f"no roofline: {reason}")
    assert s.embed_dim and s.num_heads and s.head_dim and s.num_kv_heads and s.hidden_dim  # checked by why_not
    assert s.layer_types is not None and s.logit_rows and s.dtype
    value = _DTYPE_BYTES[s.dtype]
    return _Shape(width=s.embed_dim, q_dim=s.num_heads * s.head_dim, kv_dim=s.num_kv_heads * s.head_dim,
                  hidden=s.hidden_dim, layer_types=s.layer_types, window=s.sliding_window, rows=s.logit_rows,
                  value_bytes=value, stored_bytes=_QUANT_BYTES[s.quantization] or value,
                  kv_bytes=_DTYPE_BYTES.get(s.kv_cache_dtype or s.dtype, value))


def weight_bytes(s: ModelSettings) -> float:
    """Bytes one decode step reads of the weights: the layers' matmul weights as stored, the
    embedding table (the logits matrix) at the compute dtype."""
    m = _shape(s)
    return len(m.layer_types) * m.layer_weights * m.stored_bytes + m.rows * m.width * m.value_bytes


def decode_tok_s(s: ModelSettings, batch: int, context: int, peaks: MachinePeaks) -> float:
    """Output tok/s one decode step of `batch` sequences at `context` tokens can reach."""
    m = _shape(s)
    seen = m.seen(context)
    flops = 2 * batch * (len(seen) * m.layer_weights + m.rows * m.width) + sum(4 * batch * m.q_dim * n for n in seen)
    nbytes = weight_bytes(s) + batch * sum(2 * m.kv_dim * n for n in seen) * m.kv_bytes
    return batch / max(flops / peaks.matmul_flops, nbytes / peaks.read_bytes_s)


def prefill_s(s: ModelSettings, tokens: int, peaks: MachinePeaks) -> float:
    """Seconds a prefill of `tokens` needs at the matmul throughput (the logits of the last
    position only, as a server computes them; scores and weighted sums within each layer's window)."""
    m = _shape(s)

    def attended(window: int | None) -> int:  # key positions all query positions attend to
        w = min(window or tokens, tokens)
        return w * (w + 1) // 2 + (tokens - w) * w

    attn = sum(4 * m.q_dim * attended(m.window if t == "sliding" else None) for t in m.layer_types)
    flops = 2 * tokens * len(m.layer_types) * m.layer_weights + 2 * m.rows * m.width + attn
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
