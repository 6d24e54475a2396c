"""Every script in benchmarks/ runs here in a smoke mode (a few requests, seconds), so none rots
unseen; the three that need minutes or a GPU (localize_plants, real_shape, gpu_memory_check) are
type-checked with the rest by mypy (`make checks`, untyped code included: `# mypy:` line of each)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE_RUN = {"vllm_vs_vllm_bench", "parity_cost_growth", "jax_compile_vs_steady", "jax_vs_bare_sampler",
             "jax_batch_roofline", "xla_cpu_transposed_dot", "llamacpp_timings", "engine_bugs"}
TYPE_CHECKED_ONLY = {"localize_plants", "real_shape", "gpu_memory_check"}


def bench(script: str, *args: object) -> str:
    p = subprocess.run([sys.executable, ROOT / "benchmarks" / f"{script}.py", *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert p.returncode == 0, f"{script}: {p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_every_benchmark_is_run_here_or_type_checked():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == SMOKE_RUN | TYPE_CHECKED_ONLY, scripts ^ (SMOKE_RUN | TYPE_CHECKED_ONLY)
    for name in scripts:  # mypy checks their untyped functions too
        assert (ROOT / "benchmarks" / f"{name}.py").read_text().startswith("# mypy: check-untyped-defs\n"), name


def test_vllm_client_against_vllm_bench_serve(vllm_text):
    out = bench("vllm_vs_vllm_bench", "--smoke", "--url", vllm_text.url)
    ratio = re.search(r"^ratio output_tok_s = (\d+\.\d+)$", out, re.M)
    assert ratio and float(ratio.group(1)) > 0, out
    assert re.search(r"^completed\s+4\.00\s+4\.00\s+1\.000$", out, re.M), out  # both tools: every request


def test_parity_cost_growth(vllm_text):
    out = bench("parity_cost_growth", "--sizes", "2,3", "--max-tokens", "4", "--vllm-url", vllm_text.url)
    assert re.search(r"^\s+3\s+\d+\.\d\s+\d+\.\d+\s+pass$", out, re.M) and "per-prompt cost at 3 / at 2" in out, out


def test_llamacpp_timings_against_llama_cpps_own():
    out = bench("llamacpp_timings", "--model", "tiny-gemma3", "--smoke")
    ratio = re.search(r"^ratio decode_tok_s = (\d+\.\d+) \(goal 0.95-1.05\); ratio tokens = (\d+\.\d+)$", out, re.M)
    assert ratio and float(ratio.group(1)) > 0 and float(ratio.group(2)) == 1.0, out


def test_engine_bugs_catalogue():
    out = bench("engine_bugs", "--cases", "doubled-bos")
    assert re.search(r"^\| Doubled BOS \| .* \| fail \| doubled-bos\* \| prompt id 1 \| ", out, re.M), out


@pytest.mark.slow
def test_jax_benchmarks():
    out = bench("jax_compile_vs_steady", "--batch", "1", "--max-tokens", "4", "--repeats", "1")
    assert re.search(r"^ratio first_call / steady_state = \d+\.\dx", out, re.M), out
    out = bench("jax_vs_bare_sampler", "--batch", "2", "--input-len", "8", "--output-len", "4", "--rounds", "1")
    assert re.search(r"^ratio output_tok_s = \d+\.\d+$", out, re.M), out
    out = bench("jax_batch_roofline", "--models", "tiny-gemma3", "--batches", "1")
    assert re.search(r"^tiny-gemma3\s+1\s+\d", out, re.M), out
    out = bench("xla_cpu_transposed_dot", "--vocab", "4096", "--dim", "64")
    assert re.search(r"^\s+16\s+\d+\.\d+\s+\d+\.\d+\s+\d+\.\d$", out, re.M), out  # batch, ms, ms, ratio
