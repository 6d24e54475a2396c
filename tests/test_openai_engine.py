"""The `openai` engine attached to a real vLLM server (the session's, tests/conftest.py): what it
finds out about the server, and the same numbers as the `vllm` engine on the same server. Then the
probe decisions and the stream parsing on answers as servers write them (no server needed)."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import backends
from backends import Backend, InputError, ModelError, Request, SamplingParams, TimedStreaming, UnsupportedError
from backends.openai import Answer, EndpointFeatures, OpenAIBackend, OpenAICompatibleBackend, collect, features_from
from backends.openai._payloads import error_text, sse_data, stream_error

PROMPTS = [Request.from_text("What is the capital of France?", id="chat"),
           Request.from_text("Count to ten: one, two,", id="count"),
           Request.plain("The Eiffel Tower is located in", id="plain")]
ON_VLLM = EndpointFeatures(completions=True, chat=True, tokenize=True, tokenize_chat=True, detokenize=True,
                           token_ids=True, return_token_ids=True, prompt_logprobs=True, echo_logprobs=True,
                           max_top_logprobs=20)


@pytest.fixture(scope="module")
def openai_text(vllm_text):
    """The openai engine on the session's vLLM server (tiny-gemma3)."""
    with backends.get("openai", model="tiny-gemma3", url=vllm_text.url) as b:
        yield b


def _reduced(vllm_text, **lacking: bool) -> OpenAIBackend:
    """The openai engine on the same server, taken to lack what `lacking` sets False (as a server
    without vLLM's extensions would)."""
    b = OpenAIBackend("tiny-gemma3", url=vllm_text.url, warmup=False)
    b.features = dataclasses.replace(b.features, **lacking)
    b.capabilities = b._capabilities(None)
    return b


# ---------------------------------------------------------------- on a real vLLM server


def test_every_feature_is_found_on_vllm(openai_text, vllm_text):
    assert openai_text.features == ON_VLLM
    d = openai_text.describe()
    assert d["features"] == {**dataclasses.asdict(ON_VLLM), "scoring": "prompt_logprobs"}
    assert d["backend"] == "openai" and d["served_model"] == "tiny-gemma3" and d["max_model_len"] == 4096
    assert isinstance(openai_text, Backend) and isinstance(openai_text, TimedStreaming)
    assert isinstance(vllm_text, OpenAICompatibleBackend)
    caps = openai_text.capabilities
    assert caps.chat and caps.scoring and caps.max_top_logprobs == 20 and caps.modalities == frozenset({"text"})
    settings = openai_text.model_settings()
    assert settings.convention == "openai" and settings.max_model_len == 4096
    assert openai_text.memory().rss_bytes > 500e6  # the server found by its listening port


def test_generations_equal_the_vllm_engines(openai_text, vllm_text):
    s = SamplingParams(max_tokens=10, logprobs=3)
    mine, ref = openai_text.generate(PROMPTS, s), vllm_text.generate(PROMPTS, s)
    for a, b in zip(mine, ref):
        assert a.token_ids == b.token_ids and a.prompt_ids == b.prompt_ids and a.text == b.text
        assert a.logprobs == b.logprobs and a.top_logprobs == b.top_logprobs
        assert a.finish_reason == b.finish_reason and a.timings.ttft_s is not None
    from_ids = openai_text.generate_from_ids([g.prompt_ids for g in ref], s)
    assert [g.token_ids for g in from_ids] == [g.token_ids for g in ref]
    [(sent, timed)] = openai_text.run_timed([(PROMPTS[0], s)], concurrency=1)
    assert sent > 0 and timed.token_ids == ref[0].token_ids


def test_scores_and_tokenizer_equal_the_vllm_engines(openai_text, vllm_text):
    gens = vllm_text.generate(PROMPTS, SamplingParams(max_tokens=8))
    conts = [g.token_ids for g in gens]
    assert openai_text.score(PROMPTS, conts, top_logprobs=3) == vllm_text.score(PROMPTS, conts, top_logprobs=3)
    ids = gens[0].prompt_ids + conts[0]
    assert openai_text.score_ids(ids, top_logprobs=2) == vllm_text.score_ids(ids, top_logprobs=2)
    assert [openai_text.prompt_ids(r) for r in PROMPTS] == [vllm_text.prompt_ids(r) for r in PROMPTS]
    assert openai_text.text_ids("Hello there") == vllm_text.text_ids("Hello there")
    assert openai_text.detokenize(conts[1]) == vllm_text.detokenize(conts[1])


def test_scoring_by_echo_gives_the_same_scores(vllm_text):
    """Without `prompt_logprobs`, an echoed prompt's log-probs score it (lm-eval's way)."""
    gens = vllm_text.generate(PROMPTS, SamplingParams(max_tokens=8))
    conts = [g.token_ids for g in gens]
    with _reduced(vllm_text, prompt_logprobs=False) as b:
        assert b.features.scoring == "echo"
        mine, ref = b.score(PROMPTS, conts, top_logprobs=3), vllm_text.score(PROMPTS, conts, top_logprobs=3)
        for x, y in zip(mine, ref):
            assert x.token_ids == y.token_ids and x.prompt_ids == y.prompt_ids
            assert np.allclose(x.logprobs, y.logprobs, atol=1e-6)
            assert [[t for t, _ in top] for top in x.top_logprobs] == [[t for t, _ in top] for top in y.top_logprobs]


def test_what_the_server_lacks_is_refused_in_one_line(vllm_text):
    lacking = {f.name: False for f in dataclasses.fields(ON_VLLM) if getattr(ON_VLLM, f.name) is True}
    with _reduced(vllm_text, **lacking, chat_refusal="HTTP 400: no chat template") as b:
        url = vllm_text.url
        calls = {"score": lambda: b.score(PROMPTS[2:], [[5, 6]]), "score_ids": lambda: b.score_ids([2, 5, 6]),
                 "prompt_ids": lambda: b.prompt_ids(PROMPTS[2]), "text_ids": lambda: b.text_ids("Hi"),
                 "detokenize": lambda: b.detokenize([5]),
                 "generate_from_ids": lambda: b.generate_from_ids([[2, 5]], SamplingParams(max_tokens=2)),
                 "chat": lambda: b.generate(PROMPTS[:1], SamplingParams(max_tokens=2))}
        for what, call in calls.items():
            with pytest.raises(UnsupportedError) as e:
                call()
            assert url in str(e.value) and "\n" not in str(e.value), what
        with pytest.raises(UnsupportedError, match="no prompt log-probs and no echo log-probs.*scoring is not available"):
            b.score_ids([2, 5, 6])
        with pytest.raises(UnsupportedError, match="refuses chat requests .HTTP 400: no chat template"):
            b.generate(PROMPTS[:1], SamplingParams(max_tokens=2))
        assert b.capabilities.max_top_logprobs == 0 and not b.capabilities.scoring


def test_served_model_option(vllm_text):
    with backends.get("openai", model="any label", url=vllm_text.url, served_model="tiny-gemma3", warmup=False) as b:
        assert b.served_model == "tiny-gemma3" and b.describe()["model"] == "any label"
    with pytest.raises(InputError, match="serves 'tiny-gemma3', not served_model='other'"):
        backends.get("openai", model="tiny-gemma3", url=vllm_text.url, served_model="other")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_url_that_is_not_an_openai_server_is_one_clear_line(tmp_path):
    port = _free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        with pytest.raises(InputError, match=rf"server at http://127\.0\.0\.1:{port}/v1 is not OpenAI-compatible: "
                                             r"GET .*/v1/models answered HTTP 404"):
            backends.get("openai", model="tiny-gemma3", url=f"http://127.0.0.1:{port}/v1")
    finally:
        web.terminate()
        web.wait(timeout=10)
    with pytest.raises(ModelError, match=r"cannot reach OpenAI API at http://127\.0\.0\.1:9/v1: connection refused"):
        backends.get("openai", model="tiny-gemma3", url="http://127.0.0.1:9/v1")
    with pytest.raises(InputError, match="attaches to a running server: give url="):
        backends.get("openai", model="tiny-gemma3")


# ---------------------------------------------------------------- the probe decisions (no server)

VLLM_COMPLETION = {"choices": [{"text": "A", "token_ids": [176], "finish_reason": "length", "logprobs": {
    "tokens": ["token_id:176"], "token_logprobs": [-5.4],
    "top_logprobs": [{f"token_id:{i}": -5.0 - i / 10 for i in range(20)}]}}]}


def _vllm_like() -> dict[str, Answer]:
    return {"tokenize": Answer(200, {"count": 3, "tokens": [2, 935, 864]}),
            "tokenize_chat": Answer(200, {"count": 9, "tokens": [2, 105, 2364, 107]}),
            "detokenize": Answer(200, {"prompt": "Hello"}),
            "completion": Answer(200, VLLM_COMPLETION, {"logprobs": 20}),
            "prompt_logprobs": Answer(200, {"choices": [{"text": "A", "prompt_logprobs": [None, {"935": {"logprob": -6.2}}]}]}),
            "echo": Answer(200, {"choices": [{"logprobs": {"token_logprobs": [None, -6.2, -5.4]}}]}),
            "chat": Answer(200, {"choices": [{"message": {"content": "A"}}]})}


def test_probe_decisions_on_vllm_like_answers():
    assert features_from(_vllm_like()) == ON_VLLM
    assert ON_VLLM.scoring == "prompt_logprobs"


def test_probe_decisions_on_a_server_without_vllms_extensions():
    """The OpenAI API as such: no /tokenize, log-probs' tokens as text, at most 5 alternatives,
    no prompt_logprobs (the field ignored), echo with log-probs."""
    text_tokens = {"choices": [{"text": " Paris", "logprobs": {"tokens": [" Paris"], "token_logprobs": [-0.1],
                                                               "top_logprobs": [{" Paris": -0.1, " the": -2.5, " a": -3.0, " in": -3.5, " Lyon": -4.0}]}}]}
    answers = {"tokenize": Answer(404, "Not Found"), "detokenize": Answer(0, "not sent"),
               "completion": Answer(200, text_tokens, {"logprobs": 5}),
               "prompt_logprobs": Answer(200, {"choices": [{"text": " Paris"}]}),
               "echo": Answer(200, {"choices": [{"logprobs": {"token_logprobs": [None, -3.0, -0.1],
                                                              "tokens": ["Hello", ",", " Paris"]}}]}),
               "chat": Answer(400, "As of transformers v4.44, default chat template is no longer allowed")}
    f = features_from(answers)
    assert f == EndpointFeatures(completions=True, chat=False, tokenize=False, tokenize_chat=False, detokenize=False,
                                 token_ids=False, return_token_ids=False, prompt_logprobs=False, echo_logprobs=True,
                                 max_top_logprobs=5, chat_refusal="HTTP 400: As of transformers v4.44, default chat "
                                 "template is no longer allowed")
    assert f.scoring is None  # echoed tokens as text cannot be checked against the ids fed
    assert dataclasses.replace(f, token_ids=True).scoring == "echo"


def test_probe_decisions_on_answers_that_are_not_what_was_asked():
    """Answers of other shapes (llama.cpp's /tokenize of pieces, an HTML page, nothing) count as missing."""
    odd = {"tokenize": Answer(200, {"tokens": [{"id": 2, "piece": "<bos>"}]}), "tokenize_chat": Answer(200, "<html>"),
           "completion": Answer(500, "internal error", {"logprobs": 20}), "echo": Answer(200, {"choices": []})}
    f = features_from(odd)
    assert not any(getattr(f, x.name) is True for x in dataclasses.fields(f))
    assert f.max_top_logprobs == 0 and f.chat_refusal == "not sent"


# ---------------------------------------------------------------- the stream (no server)


def _chat_events() -> list[tuple[float, dict]]:
    def chunk(ids, text, lps, finish=None):
        content = [{"token": f"token_id:{i}", "logprob": lp, "top_logprobs": [{"token": f"token_id:{i}", "logprob": lp},
                                                                             {"token": "token_id:7", "logprob": -9.0}]}
                   for i, lp in zip(ids, lps)]
        return {"choices": [{"delta": {"content": text}, "token_ids": ids, "logprobs": {"content": content},
                             "finish_reason": finish}]}

    lines = [b'data: {"prompt_token_ids": [2, 10, 11], "choices": []}\n', b"\n", b": keep-alive\n",
             b"data: " + json.dumps(chunk([5], "He", [-0.5])).encode() + b"\n",
             b"data: " + json.dumps(chunk([6, 1], "llo", [-0.25, -0.125], "stop")).encode() + b"\n",
             b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n', b"data: [DONE]\n"]
    events = [sse_data(line) for line in lines]
    return [(0.1 * n, e) for n, e in enumerate(e for e in events if e is not None)]


def test_sse_lines_to_a_generation():
    events = _chat_events()
    assert len(events) == 4 and stream_error(events) is None
    g = collect("r1", "chat", {"messages": [], "top_logprobs": 1}, 0.0, events, "vLLM")
    assert g.prompt_ids == [2, 10, 11] and g.token_ids == [5, 6, 1] and g.text == "Hello"
    assert g.logprobs == [-0.5, -0.25, -0.125] and g.top_logprobs == [[(5, -0.5)], [(6, -0.25)], [(1, -0.125)]]
    assert g.finish_reason == "stop" and g.timings.ttft_s == 0.1 and g.timings.token_times_s == [0.1, 0.2, 0.2]
    assert g.timings.e2e_s == pytest.approx(0.3)


def test_a_completion_stream_and_the_stream_errors():
    top = {"token_id:9": -0.1, "token_id:4": -3.0}
    events = [(0.2, {"choices": [{"text": " Paris", "token_ids": [9], "finish_reason": "length",
                                  "logprobs": {"tokens": ["token_id:9"], "token_logprobs": [-0.1], "top_logprobs": [top]}}]})]
    g = collect(None, "completion", {"prompt": [2, 3], "logprobs": 2}, 0.0, events, "vLLM")
    assert g.prompt_ids == [2, 3] and g.token_ids == [9] and g.top_logprobs == [[(9, -0.1), (4, -3.0)]]
    with pytest.raises(ModelError, match="request x: vLLM ended the stream with finish_reason='abort'"):
        collect("x", "completion", {"prompt": "Hi"}, 0.0, [(0.1, {"choices": [{"text": "", "finish_reason": "abort"}]})],
                "vLLM")
    bad = [(0.1, {"choices": [{"text": "", "token_ids": [9], "logprobs": {"tokens": ["Paris"], "token_logprobs": [-0.1],
                                                                         "top_logprobs": [{"Paris": -0.1}]}}]})]
    with pytest.raises(ModelError, match="OpenAI API returned token 'Paris' instead of 'token_id:N'"):
        collect("y", "completion", {"prompt": "Hi", "logprobs": 1}, 0.0, bad, "OpenAI API")
    assert stream_error([(0.1, {"error": {"message": "EngineCore died. See stack trace"}})]) == "EngineCore died. See stack trace"
    assert error_text('{"error": {"message": "too long\\nmore"}}') == "too long" and error_text("plain") == "plain"


# ---------------------------------------------------------------- a side on any URL, end to end


def test_a_side_on_any_url_compares_like_a_vllm_side(tmp_path, vllm_text, tiny_text_dir):
    """`--side x=openai,url=...` against a float32 JAX reference: the attached endpoint passes at the
    float32 bound with what it was found to offer recorded; against a JAX model with one tensor
    perturbed by 1 %, the same side fails (exit 1) with the difference localised to no cause of
    the prompt path."""
    from conftest import cli_in_process, perturb_one_tensor, variant

    (tmp_path / "s.yaml").write_text("name: s\nprompts:\n"
                                     "  - {id: a, messages: [{role: user, content: 'What is the capital of France?'}]}\n"
                                     "  - {id: b, text: 'Count to ten: one, two,'}\n")
    common = ["--suite", tmp_path / "s.yaml", "--max-tokens", "8", "--no-bench", "--reference", "ref",
              "--side", f"x=openai,url={vllm_text.url}", "--localize", "off"]
    p = cli_in_process("compare", "--model", "tiny-gemma3", "--side", "ref=jax", *common, "--out", tmp_path / "ok")
    r = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert p.returncode == 0 and r["verdict"] == "pass", p.stderr[-2000:]
    assert r["setup"]["x"]["engine"] == "openai" and r["setup"]["x"]["describe"]["features"]["prompt_logprobs"]
    assert r["pairs"]["ref-x"]["tolerance"]["name"] == "float32"
    perturbed = variant(tmp_path, tiny_text_dir, "perturbed", params_fn=perturb_one_tensor)
    p = cli_in_process("compare", "--model", "tiny-gemma3", "--side", f"ref=jax,model={perturbed}", *common,
                       "--out", tmp_path / "bad")
    r = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert p.returncode == 1 and r["verdict"] == "fail", p.stderr[-2000:]
    named = {c["name"] for q in r["pairs"]["ref-x"]["prompts"] for c in q["causes"]}
    assert "logprobs" in named and "weights" in named, named


def test_a_stream_without_token_ids_is_timed_by_its_chunks():
    """A server that returns no token ids (a plain OpenAI-style one) still streams one token per
    chunk: the benchmark times its tokens by the chunks that carried text (an empty chunk is none)."""
    events = [(0.1, {"choices": [{"delta": {"role": "assistant"}}]}),
              (0.2, {"choices": [{"delta": {"content": "Hel"}}]}),
              (0.3, {"choices": [{"delta": {"content": "lo"}}]}),
              (0.4, {"choices": [{"delta": {"content": ""}, "finish_reason": "stop"}]})]
    g = collect("r", "chat", {"messages": []}, 0.0, events, "OpenAI API")
    assert g.token_ids == [] and g.text == "Hello" and g.timings.token_times_s == [0.2, 0.3]
    assert g.timings.ttft_s == 0.2
