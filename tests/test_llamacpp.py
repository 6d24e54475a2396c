"""The llamacpp engine: llama.cpp's own server (built by scripts/ensure_llamacpp_env.sh) on GGUF
files paritybench writes (tiny-gemma3 as F32, Q8_0 and a K-quant) and on the real model's shipped
Q4_K_M file; managed and attached; its forced-token scoring checked against its own generation;
bad input and a server that dies; then its request bodies and stream parsing (no server needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from conftest import cli_in_process, still_running

import backends
from backends import InputError, ModelError, Request, SamplingParams, UnsupportedError, models
from backends.llamacpp import LlamaServer
from backends.llamacpp._native import forced_scores, native_body, native_generation

PLAIN = [Request.plain("The capital of France is", id="capital"),
         Request.plain("Count to ten: one, two,", id="count"),
         Request.plain("def fibonacci(n):\n    if n < 2:", id="code")]


@pytest.fixture(scope="module")
def llama_text():
    """tiny-gemma3 written as an F32 GGUF, served by a managed llama-server."""
    with backends.get("llamacpp", model="tiny-gemma3") as b:
        yield b


def test_a_managed_server_on_an_f32_gguf_says_what_it_runs(llama_text):
    d = llama_text.describe()
    assert d["managed"] and d["file_type"] == "F32" and d["cache_type"] == "f32" and d["gguf"].endswith("-F32.gguf")
    assert d["tensor_types"] == {"F32": sum(d["tensor_types"].values())}
    s = llama_text.model_settings()
    assert s.convention == "llamacpp" and s.dtype == "float32" and s.kv_cache_dtype == "float32"
    assert s.quantization is None and s.sliding_window == 8 and s.rope_global_scale == 8.0 and s.logit_rows == 1024
    assert llama_text.memory().rss_bytes > 5e6  # the server process tree
    caps = llama_text.capabilities
    assert caps.modalities == frozenset({"text"}) and not caps.chat  # paritybench's GGUFs carry no chat template
    with pytest.raises(UnsupportedError, match="chat"):
        llama_text.generate([Request.from_text("Hi")], SamplingParams(max_tokens=2))


def test_tokenizer_and_prompt_ids_equal_the_jax_sides(llama_text, jax_text):
    for r in PLAIN:
        assert llama_text.prompt_ids(r) == jax_text.prompt_ids(r), r.id
    text = "Привет, мир! <start_of_turn> 1234   spaces\tand tabs"
    assert llama_text.text_ids(text) == jax_text.text_ids(text)
    ids = jax_text.text_ids("The capital of France")
    assert llama_text.detokenize(ids) == jax_text.detokenize(ids)


def test_forced_scores_equal_the_sides_own_generation_log_probs(llama_text):
    """Scoring a continuation by forcing its ids (a grammar of token ids) gives the log-probs the
    server reported while generating those same ids: teacher forcing, decode-time consistent. One
    request at a time: llama.cpp is not batch-invariant (requests decoded in one batch moved
    log-probs by up to 1e-4 here)."""
    s = SamplingParams(max_tokens=10, logprobs=5)
    gens = [llama_text.generate([r], s)[0] for r in PLAIN]
    scores = [llama_text.score([r], [g.token_ids], top_logprobs=5)[0] for r, g in zip(PLAIN, gens)]
    for g, sc in zip(gens, scores):
        assert sc.token_ids == g.token_ids and len(sc.logprobs) == len(g.logprobs) > 0
        # the prefix cached or recomputed in another batch: float32 noise (1.05e-5 seen), far below its
        # noise against exact float32 (2e-4)
        assert max(abs(a - b) for a, b in zip(sc.logprobs, g.logprobs)) < 5e-5, g.request_id
        assert [t for t, _ in sc.top_logprobs[0]] == [t for t, _ in g.top_logprobs[0]]
    whole = llama_text.prompt_ids(PLAIN[0]) + gens[0].token_ids
    by_ids = llama_text.score_ids(whole, top_logprobs=2)
    assert max(abs(a - b) for a, b in zip(by_ids.logprobs[-len(gens[0].token_ids):], gens[0].logprobs)) < 5e-5


def test_llamacpp_f32_against_jax_float32_names_what_it_measures(tmp_path, jax_text, llama_text):
    """The float32 JAX reference against llama.cpp on the same weights as F32: greedy identical,
    teacher-forced log-probs within llama.cpp's own float32 noise (docs/llamacpp.md), and against
    the same weights quantized to Q8_0 and Q4_K_M by llama.cpp, a gap that grows with quantization,
    each side named as quantized (report only)."""
    from harness import parity

    rep = parity.compare(jax_text, llama_text, PLAIN, max_tokens=12)
    gaps = {p.id: p.agreement.max_abs_dlogprob for p in rep.prompts}
    assert all(p.greedy_equal for p in rep.prompts), [p.reasons for p in rep.prompts]
    assert max(gaps.values()) < 1e-3, gaps
    measured = {}
    for qtype in ("Q8_0", "Q4_K_M"):
        with backends.get("llamacpp", model="tiny-gemma3", quantize=qtype, warmup=False) as q:
            assert q.model_settings().quantization == qtype and q.describe()["file_type"] == qtype
            r = parity.compare(jax_text, q, PLAIN, max_tokens=12)
            measured[qtype] = max(p.agreement.max_abs_dlogprob for p in r.prompts)
            assert all("quantization" in {c.name for c in p.causes} for p in r.prompts if p.agreement)
    assert max(gaps.values()) < measured["Q8_0"] < measured["Q4_K_M"], (gaps, measured)


def test_an_attached_server_works_like_a_managed_one(llama_text, tmp_path):
    gguf = llama_text.describe()["gguf"]
    with LlamaServer(gguf, served_model_name="mine", log_path=tmp_path / "s.log") as server:
        with backends.get("llamacpp", model="mine", url=server.url) as attached:
            s = SamplingParams(max_tokens=8, logprobs=3)
            [a] = attached.generate(PLAIN[:1], s)
            [m] = llama_text.generate(PLAIN[:1], s)
            # two server processes on the same file: the same ids, log-probs to float32 noise (2.9e-6 seen)
            assert a.token_ids == m.token_ids and max(abs(x - y) for x, y in zip(a.logprobs, m.logprobs)) < 2e-5
            d = attached.describe()
            assert not d["managed"] and d["served_model"] == "mine" and attached.vocab_size == 1024
            assert attached.memory().rss_bytes > 5e6  # found by its listening port


def test_bad_input_is_one_line(tmp_path, vllm_text):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(InputError, match="broken.gguf: not a readable GGUF file"):  # before a server starts
        backends.get("llamacpp", model=str(bad))
    with pytest.raises(ModelError, match=r"llama.cpp server for .* exited with code \d+ during start-up\. Log: "):
        backends.get("llamacpp", model="tiny-gemma3", extra_args=["--ctx-size", "not-a-number"])
    with pytest.raises(ModelError, match="GGUF file not found"):
        backends.get("llamacpp", model=str(tmp_path / "missing.gguf"))
    with pytest.raises(InputError, match="is not llama.cpp's llama-server"):
        backends.get("llamacpp", model="tiny-gemma3", url=vllm_text.url)
    with pytest.raises(InputError, match="quantize='Q9_X': choose one of"):
        backends.get("llamacpp", model="tiny-gemma3", quantize="Q9_X")


def test_a_server_that_dies_mid_run_is_one_line_and_leaves_nothing(tmp_path):
    """A compare whose llama.cpp side is killed while it benchmarks: the run ends with one error
    line, results.json keeps parity, and no server process is left."""
    (tmp_path / "s.yaml").write_text("name: s\nprompts:\n  - {id: a, text: 'The capital of France is'}\n")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [".venv/bin/paritybench", "compare", "--model", "tiny-gemma3", "--backends", "jax,llamacpp", "--suite",
         str(tmp_path / "s.yaml"), "--out", str(out), "--max-tokens", "4", "--num-prompts", "64", "--output-len", "64",
         "--concurrency", "4", "--batch-sizes", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ})
    pid = _wait_for_bench(out)
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "llama.cpp server" in err and "Traceback" not in err, err[-2000:]
    r = json.loads((out / "results.json").read_text())
    assert r["parity"]["prompts"] and r["error"]
    assert not still_running([pid])


def _wait_for_bench(out, timeout: float = 240.0) -> int:
    """The managed llama-server's pid once the run has recorded parity (its benchmark then runs)."""
    import time

    t0 = time.time()
    while time.time() - t0 < timeout:
        path = out / "results.jsonl"
        if path.is_file():
            records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if any(x.get("type") == "parity" for x in records):
                setup = next(x for x in records if x.get("type") == "setup" and x["backend"] == "llamacpp")
                return _server_pid(setup["describe"]["url"])
        time.sleep(0.5)
    raise AssertionError("the run never reached its benchmark")


def _server_pid(url: str) -> int:
    from urllib.parse import urlsplit

    import psutil

    port = urlsplit(url).port
    return next(c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid)


def test_convert_to_gguf_writes_files_llama_cpp_loads(tmp_path):
    p = cli_in_process("convert", "tiny-gemma3", tmp_path / "t.gguf", "--to", "gguf", "--gguf-type", "Q4_K_M")
    assert p.returncode == 0, p.stderr[-2000:]
    h = models.read_gguf_header(tmp_path / "t.gguf")
    # tiny-gemma3's rows of 64 are not whole K-quant blocks (256): llama.cpp falls back to Q5_0/Q8_0 there
    assert h.file_type == 15 and set(h.tensor_types.values()) - {"F32"}
    p = cli_in_process("convert", "tiny-gemma3", tmp_path / "t.gguf", "--to", "gguf")
    assert p.returncode == 2 and "already exists" in p.stderr
    p = cli_in_process("convert", "tiny-gemma3", tmp_path / "t.bin", "--to", "gguf")
    assert p.returncode == 2 and "name the file .gguf" in p.stderr


# ---------------------------------------------------------------- the real model's shipped file


def test_llama_cpps_tokenizer_on_the_real_model_differs_only_on_long_runs_of_spaces():
    """llama.cpp's tokenizer on the real model's own GGUF (as shipped, Q4_K_M) against Gemma's
    reference tokenizer (the SentencePiece model paritybench rebuilt from the file, which gives
    transformers' ids on every line): the 2,190 lines of the tokenizer check corpus agree except
    exactly those with a run of 32 or more spaces. llama.cpp marks the space-run pieces (up to 31)
    user-defined and matches them greedily (36 spaces: 31 + 5); SentencePiece merges them as BPE
    pieces (16 + 20). Parity names such a prompt `tokenization`."""
    import re
    from pathlib import Path

    import sentencepiece

    lines = (Path(__file__).parent / "data" / "tokenizer_check_corpus.txt").read_text().splitlines()
    with backends.get("llamacpp", model="gemma-3-270m", gguf_type="shipped", warmup=False) as ll:
        assert ll.describe()["file_type"] == "Q4_K_M" and ll.model_settings().quantization == "Q4_K_M"
        gemma_dir = models.resolve("gemma-3-270m", want="gemma").gemma_dir
        sp = sentencepiece.SentencePieceProcessor(model_file=str(gemma_dir / models.TOKENIZER))
        differ = {line for line in lines if ll.text_ids(line) != sp.encode(line)}
        runs = {line for line in lines if re.search(" {32,}", line)}
        assert differ == runs and len(runs) == 30, sorted(differ ^ runs)[:3]
        assert ll.text_ids(" " * 36 + "x")[:2] == [167, 141] and sp.encode(" " * 36 + "x")[:2] == [152, 156]


# ---------------------------------------------------------------- the native API, without a server


def test_the_request_body_fixes_what_the_user_did_not_choose():
    b = native_body([2, 5], SamplingParams(max_tokens=3, logprobs=4))
    assert b["prompt"] == [2, 5] and b["n_predict"] == 3 and b["temperature"] == 0.0 and b["n_probs"] == 4
    assert (b["top_k"], b["top_p"], b["min_p"], b["repeat_penalty"]) == (0, 1.0, 0.0, 1.0)  # not llama.cpp's 40/0.95/0.05
    assert not b["post_sampling_probs"] and not b["cache_prompt"] and b["return_tokens"]


def test_a_stream_to_a_generation_and_its_timings():
    def ev(t, lp):
        return {"content": "x", "tokens": [t], "stop": False,
                "completion_probabilities": [{"id": t, "logprob": lp, "top_logprobs": [{"id": t, "logprob": lp}]}]}

    events = [(0.1, ev(5, -0.5)), (0.2, ev(6, -0.25)),
              (0.3, {"content": "", "tokens": [], "stop": True, "stop_type": "limit", "timings": {"predicted_n": 2}})]
    g, timings = native_generation("r", {"prompt": [2], "n_probs": 1}, 0.0, events, "llama.cpp")
    assert g.token_ids == [5, 6] and g.logprobs == [-0.5, -0.25] and g.finish_reason == "length"
    assert g.timings.token_times_s == [0.1, 0.2] and timings == {"predicted_n": 2}
    with pytest.raises(ModelError, match="without its final event"):
        native_generation("r", {"prompt": [2]}, 0.0, events[:1], "llama.cpp")
    with pytest.raises(UnsupportedError, match="an end token inside the continuation"):
        forced_scores({"completion_probabilities": [{"id": 1, "logprob": -1.0}]}, [1, 7], 1, "score x")


def test_three_engines_on_the_tiny_model_agree(tmp_path, vllm_text):
    """JAX, vLLM (the session's server) and llama.cpp (F32) on plain prompts: every pair passes,
    the llama.cpp pairs at the bound its engine declares (its fp16 GELU table, said in the report),
    and the arbitration finds no odd one out."""
    (tmp_path / "s.yaml").write_text("name: s\nprompts:\n" + "".join(
        f"  - {{id: {r.id}, text: {json.dumps(r.text)}}}\n" for r in PLAIN))
    p = cli_in_process("compare", "--model", "tiny-gemma3", "--backends", "jax,vllm,llamacpp", "--vllm-url", vllm_text.url,
                       "--suite", tmp_path / "s.yaml", "--max-tokens", "12", "--no-bench", "--localize", "off",
                       "--out", tmp_path / "out")
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert p.returncode == 0 and r["verdict"] == "pass", (p.stderr[-2000:], {k: v["verdict"] for k, v in r["pairs"].items()})
    assert {k: v["verdict"] for k, v in r["pairs"].items()} == {"jax-vllm": "pass", "vllm-llamacpp": "pass",
                                                                  "jax-llamacpp": "pass"}
    assert r["pairs"]["jax-llamacpp"]["tolerance"]["logprob_pass"] == 2e-4
    assert "fp16 table" in r["pairs"]["jax-llamacpp"]["tolerance"]["reason"]
    assert all(a["line"] == "all 3 sides agree" for a in r["arbitration"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| llama.cpp |" in report or "llama.cpp" in report.splitlines()[4]  # the guide table's column
