"""Named sides: a comparison of engine configurations against a reference side. Bad settings are
refused in one line each before anything starts (YAML, CLI)."""

from __future__ import annotations

import json

import pytest

from backends import InputError
from harness import config as cfg
from tests.test_compare import cli

SIDES = [{"name": "ref", "engine": "vllm"}, {"name": "kv8", "engine": "vllm", "options": {"kv_cache_dtype": "fp8"},
                                              "bound": "report"},
         {"name": "jax", "engine": "jax", "options": {"dtype": "bfloat16"}, "bound": 0.2}]


def test_named_sides_pairs_options_and_models():
    c = cfg.with_overrides(cfg.CompareConfig(), sides=SIDES, reference="ref", model="tiny-gemma3", jax_model="other")
    assert c.backends == ["ref", "kv8", "jax"]
    assert c.pairs() == [("ref", "kv8"), ("ref", "jax")]
    assert c.engine_options("kv8")["kv_cache_dtype"] == "fp8" and "url" not in c.engine_options("kv8")
    assert c.model_for("kv8") == "tiny-gemma3" and c.model_for("jax") == "other"
    assert c.side("jax").bound == 0.2 and c.side("kv8").bound == "report"
    # without a reference, every pair; the shorthand still works
    assert cfg.CompareConfig(backends=["vllm", "jax", "hf"]).pairs() == [("vllm", "jax"), ("vllm", "hf"), ("jax", "hf")]


@pytest.mark.parametrize("bad, says", [
    ({"sides": [{"name": "a", "engine": "vllm"}, {"name": "a", "engine": "jax"}]}, "two sides are named 'a'"),
    ({"sides": [{"name": "a", "engine": "vllm", "options": {"colour": 1}}]}, "side 'a': the vllm engine takes no option 'colour'"),
    ({"sides": [{"name": "a", "engine": "jax", "options": {"kv_cache_dtype": "fp8"}}]}, "the jax engine takes no option 'kv_cache_dtype'"),
    ({"sides": [{"name": "a", "engine": "tpu"}]}, "side 'a': unknown engine 'tpu'"),
    ({"sides": SIDES, "reference": "nope"}, "reference 'nope' is not among the sides (ref, kv8, jax)"),
    ({"backends": ["vllm", "mystery"]}, "unknown side or engine 'mystery'"),
])
def test_bad_sides_are_refused_in_one_line(bad, says):
    with pytest.raises(InputError) as e:
        cfg.with_overrides(cfg.CompareConfig(), **bad)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_bad_sides_in_yaml_and_on_the_command_line_name_the_file_or_flag(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("sides:\n  - {name: a, engine: vllm}\n  - {name: a, engine: jax}\n")
    p = cli("compare", "--config", y, "--out", tmp_path / "o")
    assert p.returncode == 2 and f"{y}" in p.stderr and "two sides are named 'a'" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = cli("compare", "--side", "ref=vllm", "--side", "q=vllm,quantisation=awq", "--out", tmp_path / "o")
    assert p.returncode == 2 and "the vllm engine takes no option 'quantisation'" in p.stderr, p.stderr
    p = cli("compare", "--side", "refvllm", "--out", tmp_path / "o")
    assert p.returncode == 2 and "NAME=ENGINE" in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()  # nothing started, nothing written


# ---------------------------------------------------------------- a comparison of configurations, for real

YAML = """model: tiny-gemma3
suite: {suite}
reference: ref
max_tokens: 8
sides:
  - {{name: ref, engine: jax}}
  - {{name: vllm, engine: vllm, options: {{url: "{url}"}}}}
  - {{name: bf16, engine: jax, options: {{dtype: bfloat16}}, bound: 0.5}}
  - {{name: mesh2, engine: jax, options: {{mesh: {{model: 2}}}}}}
  - {{name: kv8, engine: vllm, options: {{kv_cache_dtype: fp8, cpu_kv_cache_gib: 0.25}}}}
bench: {{num_prompts: 4, output_len: 8, concurrency: [2], batch_sizes: [2], warmups: 1}}
"""


def test_sides_against_a_float32_reference(tmp_path, vllm_text):
    """A float32 JAX reference; vLLM (attached), a bfloat16 JAX side with its own bound, a JAX side
    sharded over 2 simulated devices and a vLLM side with an fp8 KV cache (report only): one run,
    one report, a sides table; the exit code follows only the sides that have a bound."""
    (tmp_path / "s.yaml").write_text("name: s\\nprompts:\\n"
                                     "  - {id: a, messages: [{role: user, content: 'What is the capital of France?'}]}\\n"
                                     "  - {id: b, messages: [{role: user, content: 'Count to ten: one, two,'}]}\\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(YAML.format(suite=tmp_path / "s.yaml", url=vllm_text.url))
    p = cli("compare", "--config", cfg, "--out", tmp_path / "out")
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(r["pairs"]) == {"ref-vllm", "ref-bf16", "ref-mesh2", "ref-kv8"}, p.stderr[-2000:]
    pairs = r["pairs"]
    assert pairs["ref-vllm"]["verdict"] == "pass" and pairs["ref-mesh2"]["verdict"] == "pass"
    assert pairs["ref-bf16"]["tolerance"]["logprob_pass"] == 0.5 and not pairs["ref-bf16"]["report_only"]
    assert pairs["ref-kv8"]["report_only"] and pairs["ref-kv8"]["b"]["settings"]["kv_cache_dtype"].startswith("fp8")
    assert r["setup"]["mesh2"]["describe"]["mesh"] == {"data": 1, "model": 2}
    assert p.returncode == (1 if any(v["verdict"] == "fail" for k, v in pairs.items() if not v["report_only"]) else 0)
    for name in ("ref", "vllm", "bf16", "mesh2", "kv8"):
        assert r["bench"][name], name  # every side measured
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Every side against the reference (ref)" in report and "report only" in report
    assert "every side against the reference" in p.stdout
