# mypy: check-untyped-defs
"""XLA:CPU's dot against a transposed operand, at the batch sizes of a decode step.

gemma's `Embedder.decode` computes the logits as `jnp.dot(x, table.T)` with the [vocab, D]
embedding table. On CPU, with the 262k vocabulary of real Gemma models, that product costs about
10x more at batch 2..8 than at batch 1, and than the same product with a pre-transposed [D, vocab]
copy: the dip in the JAX engine's tok/s at batch sizes > 1 (docs: issue 17's finding). Prints
milliseconds per call for each form and the ratio transposed / pre-transposed.

    .venv/bin/python benchmarks/xla_cpu_transposed_dot.py [--vocab 262144] [--dim 64]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def per_call_ms(f, *args, n: int = 20) -> float:
    f(*args).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(n):
        f(*args).block_until_ready()
    return 1000 * (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    table = jnp.asarray(np.random.default_rng(0).standard_normal((args.vocab, args.dim)).astype(np.float32))
    table_t = jnp.asarray(np.asarray(table).T.copy())
    transposed = jax.jit(lambda x, e: jnp.dot(x, e.T))  # gemma's Embedder.decode
    pre_transposed = jax.jit(lambda x, et: x @ et)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, vocab {args.vocab}, dim {args.dim}")
    print(f"{'batch':>5} {'dot(x, E.T) ms':>15} {'x @ E_T ms':>12} {'ratio':>7}")
    for b in (1, 2, 4, 8, 16):
        x = jnp.ones((b, args.dim), jnp.float32)
        a, c = per_call_ms(transposed, x, table), per_call_ms(pre_transposed, x, table_t)
        print(f"{b:>5} {a:>15.2f} {c:>12.2f} {a / c:>7.1f}")


if __name__ == "__main__":
    main()
