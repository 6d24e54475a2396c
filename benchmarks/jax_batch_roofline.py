# mypy: check-untyped-defs
"""The JAX engine's decode throughput at batch 1, 2, 4, 8, 16 on both tiny models, next to a
roofline estimate from this machine's measured matmul throughput and memory bandwidth, and a
profile of each batch: the XLA operation that takes the most time.

Roofline of one decode step at batch B (every decoded token reads all text weights once per step;
the logits product is a [B, D] x [D, V] matmul):

    flops(B) = 2 B (text weights in matmuls + V D) + 4 B layers q_dim context
    bytes(B) = bytes of the text weights (the embedding table included: it is the logits matrix)
               + B layers 2 kv_dim cache_length 4 (the KV cache, float32)
    roofline tok/s = B / max(flops / peak FLOP/s, bytes / bandwidth)

The profile is `jax.profiler` on one steady-state `generate` of B prompts (the trace's events of
XLA's CPU threads, summed by operation name): "XLA ms/step" is all operation time per decode step
(summed over XLA's threads; what is left of "step ms" is the sampler's host work between steps),
"top XLA op" the operation with the most of it. Runs about 3 minutes on 2 cores.

    .venv/bin/python benchmarks/jax_batch_roofline.py [--models tiny-gemma3,tiny-gemma3-vision]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from backends import SamplingParams  # noqa: E402
from backends.jax import JaxBackend  # noqa: E402
from harness import bench  # noqa: E402

BATCHES = (1, 2, 4, 8, 16)
INPUT_LEN, OUTPUT_LEN = 32, 32


def best_seconds(f, *args, n: int = 5) -> float:
    f(*args).block_until_ready()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine_peaks() -> tuple[float, float]:
    """(matmul FLOP/s, memory read bytes/s) measured with XLA on this machine, float32."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    flops = 2 * n**3 / best_seconds(jax.jit(lambda x, y: x @ y), a, a)
    big = jnp.ones((64 * 2**20,), jnp.float32)  # 256 MiB
    bandwidth = big.nbytes / best_seconds(jax.jit(jnp.sum), big)
    return flops, bandwidth


def text_weights(b) -> tuple[int, int, int]:
    """(text weights in matmuls, bytes of the text weights, embedding rows x width) of a JAX side."""
    import jax

    flat = jax.tree_util.tree_flatten_with_path(b._params)[0]
    matmul, nbytes, table = 0, 0, 0
    for path, x in flat:
        key = jax.tree_util.keystr(path)
        if "vision" in key or "siglip" in key or "mm_" in key:
            continue  # the image tower and projection do not run in a text decode step
        nbytes += x.size * x.dtype.itemsize
        if "input_embedding" in key:
            table = x.size
        elif x.ndim >= 2:
            matmul += x.size
    return matmul, nbytes, table


def profile(b, reqs, s: SamplingParams, steps: int) -> tuple[str, float, float, float]:
    """(the XLA operation with the most time, its ms per decode step, its share of all XLA op time,
    all XLA op time per step in ms, summed over XLA's threads)."""
    import jax

    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        b.generate(reqs, s)
        jax.profiler.stop_trace()
        [xplane] = list(Path(d).rglob("*.xplane.pb"))
        data = jax.profiler.ProfileData.from_file(str(xplane))
    ops: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA's CPU worker threads: one event per executed operation
                continue
            for ev in line.events:
                if not ev.name.startswith("ThunkExecutor"):
                    ops[ev.name] += ev.duration_ns
    (name, ns), = ops.most_common(1)
    return name, ns / 1e6 / steps, ns / sum(ops.values()), sum(ops.values()) / 1e6 / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-gemma3,tiny-gemma3-vision")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes (smoke run: 1,2)")
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    flops_peak, bandwidth = machine_peaks()
    print(f"machine: matmul {flops_peak / 1e9:.1f} GFLOP/s, memory read {bandwidth / 1e9:.1f} GB/s (XLA, float32)")
    print(f"workload: {INPUT_LEN} prompt tokens, {OUTPUT_LEN} output tokens per request, end tokens ignored\n")
    header = (f"{'model':<20} {'batch':>5} {'tok/s':>8} {'roofline':>9} {'% roof':>7} {'step ms':>8}  "
              f"{'XLA ms/step':>11}  {'top XLA op':<22} {'op ms/step':>10} {'op share':>8}")
    print(header)
    for model in args.models.split(","):
        with JaxBackend(model) as b:
            arch = b.arch
            matmul, nbytes, table = text_weights(b)
            wl = bench.synthetic(b, num_prompts=max(batches), input_len=INPUT_LEN, output_len=OUTPUT_LEN, seed=0)
            s = SamplingParams(max_tokens=OUTPUT_LEN, ignore_eos=True, return_logprobs=False)
            for batch in batches:
                run = bench.run_batched(b, wl, batch_size=batch)
                cache_length = max(c for _, c, _ in b._samplers)
                kv_dim = arch.num_kv_heads * arch.head_dim
                context = INPUT_LEN + OUTPUT_LEN / 2
                flops = 2 * batch * (matmul + table) + 4 * batch * arch.num_layers * arch.num_heads * arch.head_dim * context
                step_bytes = nbytes + batch * arch.num_layers * 2 * kv_dim * cache_length * 4
                roof = batch / max(flops / flops_peak, step_bytes / bandwidth)
                op, op_ms, share, xla_ms = profile(b, wl.requests[:batch], s, OUTPUT_LEN)
                tok_s = run.output_throughput
                print(f"{model:<20} {batch:>5} {tok_s:>8.1f} {roof:>9.0f} {100 * tok_s / roof:>6.1f}% "
                      f"{1000 * batch / tok_s:>8.2f} {xla_ms:>11.2f}  {op:<22} {op_ms:>10.2f} {100 * share:>7.0f}%")
    print("\nThe top operation at batch >= 2 on the 262k vocabulary is the logits product of gemma's "
          "Embedder.decode (jnp.dot(x, table.T)); alone: benchmarks/xla_cpu_transposed_dot.py")


if __name__ == "__main__":
    main()
