"""Plain unit tests of the request/result types and the chat rendering."""

import numpy as np
import pytest
from pydantic import ValidationError

from backends import AudioPart, ImagePart, Request, SamplingParams
from backends.models import render_chat


def test_text_shorthand_and_modalities():
    r = Request(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                        {"type": "image", "path": "x.png"}]}])
    assert r.modalities == {"text", "image"}
    assert len(r.images) == 1
    assert Request.from_text("hello").messages[0].content[0].text == "hello"


@pytest.mark.parametrize("kwargs", [{}, {"path": "a.png", "data": b"x"}])
def test_image_part_needs_exactly_one_source(kwargs):
    with pytest.raises(ValidationError, match="exactly one"):
        ImagePart(**kwargs)


def test_image_array_shape_checked():
    with pytest.raises(ValidationError, match="HxWxC uint8"):
        ImagePart(array=np.zeros((4, 4), np.uint8))


def test_audio_samples_need_rate():
    with pytest.raises(ValidationError, match="sample rate"):
        AudioPart(samples=np.zeros(10, np.float32))
    assert AudioPart(samples=np.zeros(10, np.float32), rate=16000).rate == 16000


def test_roles_must_alternate():
    with pytest.raises(ValidationError, match="alternate"):
        Request(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValidationError, match="last message"):
        Request(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_sampling_validation():
    assert SamplingParams().greedy
    with pytest.raises(ValidationError, match="temperature > 0"):
        SamplingParams(top_k=5)
    with pytest.raises(ValidationError, match="not both"):
        SamplingParams(temperature=1.0, top_k=5, top_p=0.9)
    with pytest.raises(ValidationError):
        SamplingParams(max_tokens=0)


def test_render_chat_matches_gemma_format():
    r = Request(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Hi  "},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "image", "path": "x.png"}, {"type": "text", "text": "What?"}]},
    ])
    assert render_chat(r) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\n<start_of_image>What?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_render_chat_equals_hf_chat_template():
    """The JAX side's renderer and the template shipped to vLLM agree (jinja2, as HF renders)."""
    import jinja2

    from backends.models import CHAT_TEMPLATE

    msgs = [{"role": "system", "content": "Sys"}, {"role": "user", "content": " a "},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": [{"type": "text", "text": "c"}]}]
    env = jinja2.Environment()
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(ValueError(m))
    hf = env.from_string(CHAT_TEMPLATE).render(messages=msgs, bos_token="<bos>", add_generation_prompt=True)
    assert hf == "<bos>" + render_chat(Request(messages=msgs))


def test_plain_text_requests():
    from backends import Capabilities, UnsupportedError

    r = Request.plain("The capital of France is", id="p")
    assert not r.is_chat and r.modalities == {"text"} and r.images == [] and r.audio == []
    assert Request.from_text("hi").is_chat
    for bad in ({"text": "x", "messages": [{"role": "user", "content": "hi"}]}, {"text": ""}, {}):
        with pytest.raises(ValueError):
            Request(**bad)
    base = Capabilities(modalities=frozenset({"text"}), chat=False)
    base.check(r, "jax")
    with pytest.raises(UnsupportedError, match="jax: request q is a chat prompt, but the model has no chat template"):
        base.check(Request.from_text("hi", id="q"), "jax")
    assert base.text_request("hi") == Request.plain("hi")
    assert Capabilities(modalities=frozenset({"text"})).text_request("hi") == Request.from_text("hi")
