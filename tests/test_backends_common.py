"""Behaviour both backends must share, run against each on the same requests."""

import pytest

from backends import Backend, Request, SamplingParams

PROMPTS = ["What is the capital of France?", "Count to ten: one, two,", "Hello there", "Привет, как дела?"]


@pytest.fixture(params=["jax_text", "vllm_text"])
def text_backend(request) -> Backend:
    return request.getfixturevalue(request.param)


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
