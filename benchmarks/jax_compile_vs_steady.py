# mypy: check-untyped-defs
"""First-call (compile) vs steady-state time of the JAX backend on tiny-gemma3.

Both are measured in one run, on the same prompts and batch: the first `generate` call compiles
(sampler prefill + decode loop + the teacher-forced log-prob pass), the later ones reuse the
compiled programs. Goal: steady state at least 20x faster than the first call.

    .venv/bin/python benchmarks/jax_compile_vs_steady.py [--model tiny-gemma3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-gemma3")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import backends
    from backends import Request, SamplingParams
    from backends.jax import compile_stats

    prompts = ["What is the capital of France?", "Count to ten: one, two,", "Hello there!", "Привет, как дела?"]
    reqs = [Request.from_text(prompts[i % len(prompts)] + f" ({i})") for i in range(args.batch)]
    sampling = SamplingParams(max_tokens=args.max_tokens, logprobs=5)
    b = backends.get("jax", model=args.model)

    def call() -> tuple[float, int]:
        c0 = compile_stats().count
        t0 = time.perf_counter()
        b.generate(reqs, sampling)
        return time.perf_counter() - t0, compile_stats().count - c0

    first, first_compiles = call()
    steady = [call() for _ in range(args.repeats)]
    steady_s = statistics.median(t for t, _ in steady)
    recompiles = sum(n for _, n in steady)
    print(f"model {args.model}, batch {args.batch}, {args.max_tokens} new tokens, logprobs 5")
    print(f"first call (compile + run): {first:.3f} s, {first_compiles} XLA compilations")
    print(f"steady state (median of {args.repeats}): {steady_s:.4f} s, {recompiles} compilations after warm-up")
    print(f"ratio first_call / steady_state = {first / steady_s:.1f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
