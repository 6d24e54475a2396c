# mypy: check-untyped-defs
"""paritybench's latency and throughput of a llama.cpp side against what llama.cpp itself reports
for the same requests (each request's `timings`: prompt_ms, predicted_n, predicted_ms).

    .venv/bin/python benchmarks/llamacpp_timings.py                       # gemma-3-270m (F32), levels 1 and 4
    .venv/bin/python benchmarks/llamacpp_timings.py --model tiny-gemma3 --smoke

The serving benchmark (`harness.bench.run_serving`, vLLM's metric definitions) runs a synthetic
workload at each concurrency; for every request the client's decode time (E2EL - TTFT: from the
first streamed token to the last) and token count are set beside llama.cpp's decode time of that
request (predicted_ms) and its count (predicted_n), and the client's TTFT beside llama.cpp's
prompt time (prompt_ms). Printed per level, as medians over requests:
- `ratio decode_tok_s`: the client's (n - 1) / (E2EL - TTFT) over llama.cpp's (predicted_n - 1) /
  predicted_ms (its clock starts at the first generated token, as the client's does); goal 0.95-1.05;
- `ratio tokens`: output tokens counted by the client over llama.cpp's predicted_n (goal 1.00);
- the TTFT beside prompt_ms, in ms (the client's also holds the request's trip and the first
  token's sampling: reported, not judged).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backends  # noqa: E402
from harness import bench  # noqa: E402


def compare_level(side, wl, level: int) -> dict[str, float]:
    side.timings.clear()
    run = bench.run_serving(side, wl, max_concurrency=level, warmups=0)
    entries = [e for e in side.timings.entries if e["output_tokens"] > 1 and e["server"].get("predicted_n", 0) > 1]
    client = [(e["output_tokens"] - 1) / (e["client_e2e_s"] - e["client_ttft_s"]) for e in entries]
    server = [(e["server"]["predicted_n"] - 1) / (e["server"]["predicted_ms"] / 1000) for e in entries]
    counted = sum(e["output_tokens"] for e in side.timings.entries)
    reported = sum(e["server"].get("predicted_n", 0) for e in side.timings.entries)
    return {
        "requests": len(entries), "output_tok_s": run.output_throughput,
        "client_decode_tok_s": statistics.median(client), "llamacpp_decode_tok_s": statistics.median(server),
        "ratio_decode": statistics.median(c / s for c, s in zip(client, server)),
        "ratio_tokens": counted / reported if reported else float("nan"),
        "client_ttft_ms": 1000 * statistics.median(e["client_ttft_s"] for e in entries),
        "llamacpp_prompt_ms": statistics.median(e["server"]["prompt_ms"] for e in entries),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--levels", default="1,4")
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="a few short requests (the test suite runs this)")
    args = ap.parse_args()
    if args.smoke:
        args.num_prompts, args.output_len, args.levels = 4, 16, "1"
    levels = [int(x) for x in args.levels.split(",")]
    with backends.get("llamacpp", model=args.model, parallel=max(levels)) as side:
        wl = bench.synthetic(side, num_prompts=args.num_prompts, input_len=args.input_len,
                             output_len=args.output_len, seed=0)
        bench.run_serving(side, wl, max_concurrency=1, warmups=0)  # first requests warm the server's caches
        for level in levels:
            r = compare_level(side, wl, level)
            print(f"concurrency {level}: {r['requests']} requests, output {r['output_tok_s']:.1f} tok/s; decode "
                  f"{r['client_decode_tok_s']:.1f} tok/s (paritybench) vs {r['llamacpp_decode_tok_s']:.1f} tok/s "
                  f"(llama.cpp); TTFT {r['client_ttft_ms']:.1f} ms vs prompt {r['llamacpp_prompt_ms']:.1f} ms")
            print(f"ratio decode_tok_s = {r['ratio_decode']:.3f} (goal 0.95-1.05); ratio tokens = {r['ratio_tokens']:.3f}")


if __name__ == "__main__":
    main()
