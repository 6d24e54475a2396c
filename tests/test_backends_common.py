"""Behaviour every engine must share, run against each on the same requests."""

import numpy as np
import pytest

from backends import Backend, Request, SamplingParams, TimedStreaming

PROMPTS = ["What is the capital of France?", "Count to ten: one, two,", "Hello there", "Привет, как дела?"]


@pytest.fixture(params=["jax_text", "vllm_text", "hf_text"])
def text_backend(request) -> Backend:
    return request.getfixturevalue(request.param)


def test_batch_greedy_with_token_id_logprobs(text_backend):
    reqs = [Request.from_text(p, id=str(i)) for i, p in enumerate(PROMPTS)]
    gens = text_backend.generate(reqs, SamplingParams(max_tokens=12, logprobs=5))
    assert [g.request_id for g in gens] == ["0", "1", "2", "3"]
    for g in gens:
        assert 1 <= len(g.token_ids) <= 12
        assert all(0 <= t < text_backend.vocab_size for t in g.token_ids)
        assert len(g.logprobs) == len(g.token_ids) == len(g.top_logprobs)
        assert all(len(t) == 5 for t in g.top_logprobs)
        # greedy: the chosen id is the top alternative and carries the same log-prob
        assert [t[0][0] for t in g.top_logprobs] == g.token_ids
        assert np.allclose([t[0][1] for t in g.top_logprobs], g.logprobs, atol=1e-6)
        assert all(lps == sorted(lps, reverse=True) for lps in ([lp for _, lp in t] for t in g.top_logprobs))
        assert all(lp <= 0 for lp in g.logprobs)
        assert g.finish_reason in ("stop", "length") and g.prompt_ids[0] == 2
        # in-process engines batch the four requests; a streaming server (vLLM) answers each alone
        assert g.timings.batch_size == (1 if isinstance(text_backend, TimedStreaming) else 4)
    assert len({tuple(g.token_ids) for g in gens}) > 1, "different prompts should give different outputs"


def test_ignore_eos_gives_exact_lengths_without_logprobs(text_backend):
    reqs = [Request.from_text(p) for p in PROMPTS]
    gens = text_backend.generate(reqs, SamplingParams(max_tokens=20, ignore_eos=True, return_logprobs=False))
    assert [len(g.token_ids) for g in gens] == [20] * 4
    assert all(g.logprobs is None and g.top_logprobs is None and g.finish_reason == "length" for g in gens)


def test_seeded_sampling_is_deterministic(text_backend):
    reqs = [Request.from_text(p) for p in PROMPTS]
    for s in (SamplingParams(temperature=1.0, seed=7, max_tokens=10),
              SamplingParams(temperature=0.8, top_k=5, seed=7, max_tokens=10),
              SamplingParams(temperature=0.9, top_p=0.9, seed=7, max_tokens=10)):
        a, b = text_backend.generate(reqs, s), text_backend.generate(reqs, s)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
    a = text_backend.generate(reqs, SamplingParams(temperature=1.0, seed=7, max_tokens=10))
    c = text_backend.generate(reqs, SamplingParams(temperature=1.0, seed=8, max_tokens=10))
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    # top_k=1 at any temperature is greedy
    greedy = text_backend.generate(reqs, SamplingParams(max_tokens=10))
    k1 = text_backend.generate(reqs, SamplingParams(temperature=1.0, top_k=1, seed=3, max_tokens=10))
    assert [g.token_ids for g in k1] == [g.token_ids for g in greedy]


def test_prompt_ids_of_generation_equal_prompt_ids(text_backend):
    req = Request.from_text("Hello")
    [g] = text_backend.generate([req], SamplingParams(max_tokens=4))
    assert isinstance(text_backend, Backend)
    assert g.prompt_ids == text_backend.prompt_ids(req) and g.prompt_ids[0] == 2
    assert text_backend.detokenize(text_backend.text_ids("Hello there")) == "Hello there"
