"""Measurement: metric math against hand-computed values; real runs count every request."""

import math

import numpy as np
import pytest
from conftest import assert_quiet, cli_in_process

from backends import Request
from harness import bench
from harness.metrics import RequestRecord, summarize


def test_metrics_match_hand_computed_values():
    # request A: sent at 0, tokens at 0.10, 0.15, 0.25 (s); request B: sent at 0.05, tokens at 0.30, 0.30, 0.50
    a = RequestRecord.from_token_times(0.0, [0.10, 0.15, 0.25], prompt_len=10)
    b = RequestRecord.from_token_times(0.05, [0.25, 0.25, 0.45], prompt_len=20)
    failed = RequestRecord.failure(0.1, "HTTP 400: prompt too long", prompt_len=5000)
    assert a.ttft == pytest.approx(0.10) and a.latency == pytest.approx(0.25)
    assert a.itl == pytest.approx([0.05, 0.10])
    assert b.itl == pytest.approx([0.20])  # two tokens in one chunk: one gap, as vllm bench counts chunks
    m = summarize([a, b, failed], duration_s=0.5, percentiles=[50, 99])
    assert (m["completed"], m["failed"]) == (2, 1)
    assert m["total_input_tokens"] == 30 and m["total_output_tokens"] == 6  # the failed request adds nothing
    assert m["output_throughput"] == pytest.approx(6 / 0.5)
    assert m["total_token_throughput"] == pytest.approx(36 / 0.5)
    assert m["request_throughput"] == pytest.approx(2 / 0.5)
    assert m["mean_ttft_ms"] == pytest.approx((100 + 250) / 2)
    assert m["median_e2el_ms"] == pytest.approx((250 + 450) / 2)
    # TPOT excludes the first token: (E2EL - TTFT) / (n - 1)
    tpots = [(0.25 - 0.10) / 2, (0.45 - 0.25) / 2]
    assert m["mean_tpot_ms"] == pytest.approx(1000 * np.mean(tpots))
    assert m["median_itl_ms"] == pytest.approx(1000 * np.median([0.05, 0.10, 0.20]))
    assert m["p99_itl_ms"] == pytest.approx(1000 * np.percentile([0.05, 0.10, 0.20], 99))
    assert m["std_ttft_ms"] == pytest.approx(1000 * np.std([0.10, 0.25]))


def test_all_failed_is_reported_not_divided_by_zero():
    m = summarize([RequestRecord.failure(0.0, "refused")], duration_s=1.0)
    assert m["completed"] == 0 and m["failed"] == 1 and m["output_throughput"] == 0.0


def test_arrivals_follow_the_rate():
    assert bench.arrival_offsets(4, math.inf) == [0.0] * 4
    offs = bench.arrival_offsets(2000, 10.0, seed=1)
    gaps = np.diff(offs)
    assert offs[0] == 0.0 and np.all(gaps >= 0)
    assert np.mean(gaps) == pytest.approx(0.1, rel=0.1)  # Poisson: mean gap 1/rate, std about the mean
    assert np.std(gaps) == pytest.approx(0.1, rel=0.15)
    bursty = np.diff(bench.arrival_offsets(2000, 10.0, burstiness=0.25, seed=1))
    assert np.std(bursty) > 1.5 * np.std(gaps)  # burstiness < 1: more bursty at the same mean
    assert bench.arrival_offsets(5, 2.0, seed=3) == bench.arrival_offsets(5, 2.0, seed=3)


def test_synthetic_workload_lengths(jax_text):
    wl = bench.synthetic(jax_text, num_prompts=6, input_len=40, output_len=8, range_ratio=0.25, seed=2)
    lens = [len(jax_text.text_ids(r.messages[0].content[0].text)) for r in wl.requests]
    assert all(28 <= n <= 52 for n in lens), lens  # 40 +- 25%, +-2 from re-tokenization
    assert all(6 <= n <= 10 for n in wl.output_lens)
    again = bench.synthetic(jax_text, num_prompts=6, input_len=40, output_len=8, range_ratio=0.25, seed=2)
    assert again.requests == wl.requests


def test_jax_no_compilation_after_warmup(jax_text):
    wl = bench.synthetic(jax_text, num_prompts=6, input_len=24, output_len=8, seed=0)
    r = bench.run_batched(jax_text, wl, batch_size=3)
    assert r.compilations_counted and r.compilations_after_warmup == 0, r
    assert r.batches == 2 and r.warmup_batches == 1  # two batches of one shape: one compiles it
    assert r.total_output_tokens == 6 * 8  # ignore_eos: exactly the asked lengths
    assert r.output_throughput > 0 and r.memory.samples >= 1 and (r.memory.peak_rss_bytes or 0) > 0


def test_a_shape_the_warmup_missed_makes_the_measured_pass_a_warmup(jax_text):
    # one batch size and output length, but prompts in two of the engine's length buckets: the
    # one-batch warm-up compiles only the first; the pass that compiles the second is run again
    wl = bench.from_requests("two buckets", [Request.from_text("hi", id="short"),
                                            Request.from_text("word " * 60, id="long")], output_len=4)
    r = bench.run_batched(jax_text, wl, batch_size=1)
    assert r.compilations_after_warmup == 0 and r.compilations_warmup >= 2, r
    assert r.batches == 2 and r.warmup_batches == 1 + 2


def test_vllm_run_counts_every_request(vllm_text):
    wl = bench.synthetic(vllm_text, num_prompts=6, input_len=24, output_len=8, seed=0)
    too_long = Request.from_text("word " * 6000, id="too-long")  # beyond the model's limit: HTTP 400
    wl = wl.model_copy(update={"requests": wl.requests + [too_long], "output_lens": wl.output_lens + [8]})
    r = bench.run_serving(vllm_text, wl, max_concurrency=3, warmups=1)
    assert r.completed + r.failed == 7 and r.failed == 1
    assert "HTTP 400" in r.errors[-1] and "maximum context length" in r.errors[-1]
    assert r.output_lens[:6] == [8] * 6 and r.total_output_tokens == 48
    assert r.median_ttft_ms > 0 and r.output_throughput > 0 and r.percentile("ttft", 99) is not None
    assert (r.memory.peak_rss_bytes or 0) > 500e6 and r.memory.peak_kv_cache_usage is not None


def test_load_256_requests_at_concurrency_64_none_lost(vllm_text, tmp_path):
    """256 streamed requests, 64 in flight, through the CLI: every request is in the results file
    exactly once, completed + failed = sent; the harness's own peak memory is reported."""
    import json
    import subprocess
    import sys

    out = tmp_path / "load.json"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "--backend", "vllm", "--vllm-url", vllm_text.url,
                        "--model", "tiny-gemma3", "--num-prompts", "256", "--input-len", "16", "--output-len", "8",
                        "--concurrency", "64", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    assert_quiet(p)
    [r] = json.loads(out.read_text())["runs"]
    assert r["completed"] + r["failed"] == 256 == r["num_prompts"]
    for key in ("input_lens", "output_lens", "ttfts", "itls", "latencies", "errors"):
        assert len(r[key]) == 256, key
    assert r["completed"] == 256 and r["output_lens"] == [8] * 256
    assert 30e6 < r["harness_peak_rss_bytes"] < 4e9  # the client process alone (VmHWM, not the parent's peak)
    assert "dtype" in json.loads(out.read_text())["roofline"]["note"]  # an attached server does not say its dtype
    print(f"\n256 requests at concurrency 64: {r['output_throughput']:.0f} output tok/s, median TTFT "
          f"{r['median_ttft_ms']:.0f} ms, harness peak RSS {r['harness_peak_rss_bytes'] / 2**20:.0f} MiB")


def test_a_falling_throughput_curve_is_flagged_with_the_engines_known_cause():
    from harness import report
    from harness.results import BatchRun, BenchSection, ComparisonResults, SuiteInfo

    def runs(*tok_s):
        return [BatchRun(backend="jax", batch_size=b, num_prompts=8, batches=8 // b, warmup_s=1, compile_s=1,
                         compilations_warmup=1, duration=1, compilations_after_warmup=0, compile_s_after_warmup=0,
                         total_input_tokens=64, total_output_tokens=64, output_throughput=t, total_token_throughput=t,
                         request_throughput=1) for b, t in zip((1, 2, 4, 8), tok_s)]

    def results(**sections):
        return ComparisonResults(kind="run", config={}, suite=SuiteInfo(name="s", path="s", prompts=1), started="now",
                                 bench=sections)

    rising = results(jax=BenchSection(runs=runs(100, 180, 300, 290)))  # 290 vs 300: noise, not a fall
    assert report.curve_rows(rising) == []
    dip = results(jax=BenchSection(runs=runs(217, 68, 133, 227), notes=["the logits product"]),
                  other=BenchSection(runs=runs(50, 30)))
    rows = report.curve_rows(dip)
    assert rows[0] == {"backend": "jax", "curve": "output tok/s falls from 217.0 at batch size 1 to 68.0 at batch size 2",
                       "known cause": "the logits product"}
    assert rows[1]["backend"] == "other" and rows[1]["known cause"].startswith("none known")
    md = report.markdown(dip, {})
    assert "### Throughput curves that fall" in md and "the logits product" in md


def test_the_jax_engine_names_the_logits_product_on_a_large_vocabulary(jax_text, jax_vision):
    assert jax_text.vocab_size < 65536 and jax_text.throughput_notes() == []
    [note] = jax_vision.throughput_notes()  # 262144 pieces, on CPU
    assert "jnp.dot(x, table.T)" in note and "262144" in note


def test_bench_of_a_suite_prints_each_levels_roofline_at_the_suites_lengths(jax_text, tmp_path):
    """`paritybench bench` on a suite: the roofline's context is the suite's mean prompt length (its
    token ids) plus half the output; each level's line says what fraction of it the level reached."""
    import json

    import evals
    from harness import suites

    out = tmp_path / "bench.json"
    p = cli_in_process("bench", "--backend", "jax", "--model", "tiny-gemma3", "--suite", evals.path("smoke"),
                       "--num-prompts", "5", "--output-len", "4", "--batch-sizes", "1,2", "--out", out)
    assert p.returncode == 0, p.stderr[-2000:]
    roof = json.loads(out.read_text())["roofline"]
    _, reqs = suites.load(evals.path("smoke"))
    mean_in = round(sum(len(jax_text.prompt_ids(r)) for r in reqs) / len(reqs))
    assert roof["context"] == mean_in + 2 and roof["note"] is None
    assert 0 < roof["tok_s"]["1"] < roof["tok_s"]["2"]
    assert sum("roofline" in line and "of it" in line for line in p.stdout.splitlines()) == 2, p.stdout
