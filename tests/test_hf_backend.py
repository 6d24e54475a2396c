"""The Hugging Face transformers engine on the embedded tiny models, checked against the JAX engine
(same weights, float32): prompt ids, greedy tokens, teacher-forced log-probs, image masks and pixels."""

import numpy as np
import pytest
from conftest import image

import backends
from backends import ImagePart, InputError, ModelError, Request, SamplingParams, UnsupportedError
from backends.hf import HfBackend

PROMPTS = ["What is the capital of France?", "Count to ten: one, two,",
           "A longer prompt that goes past the sliding window of eight tokens."]
MULTI_TURN = Request(messages=[
    {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a colour."},
])
END_TOKENS = (1, 106)


def _max_dlogprob(a, b) -> float:
    return max(float(np.abs(np.asarray(x.logprobs) - np.asarray(y.logprobs)).max()) for x, y in zip(a, b))


def _image_request(img: np.ndarray, text_first: bool = True) -> Request:
    parts = [{"type": "text", "text": "Look:"}, ImagePart(array=img), {"type": "text", "text": "What is it?"}]
    return Request(messages=[{"role": "user", "content": parts if text_first else parts[1:]}])


@pytest.fixture(scope="module")
def hf_vision(tiny_vision_dir):
    with HfBackend("tiny-gemma3-vision", tiny_vision_dir / "hf") as b:
        yield b


# ---------------------------------------------------------------- text


def test_loads_and_describes_itself(hf_text):
    assert isinstance(hf_text, backends.Backend)
    assert hf_text.capabilities.modalities == {"text"}
    assert "no vision encoder" in hf_text.capabilities.unsupported["image"]
    assert hf_text.capabilities.unsupported["audio"] == "Gemma 3 has no audio encoder"
    d = hf_text.describe()
    assert (d["backend"], d["model_class"], d["dtype"], d["vocab_size"], d["device"]) == \
        ("hf", "Gemma3ForCausalLM", "float32", 1024, "cpu")
    assert d["attn_implementation"] == "eager" and d["transformers"].startswith("5.")
    assert hf_text.load_s > 0 and hf_text.warmup_s > 0
    print(f"hf load {hf_text.load_s:.2f} s, warm-up {hf_text.warmup_s:.2f} s")
    m = hf_text.memory()
    assert (m.backend, m.device) == ("hf", "cpu") and 0 < m.rss_bytes <= m.peak_rss_bytes
    hf_text.check_alive()


def test_prompt_ids_equal_jax(hf_text, jax_text):
    for req in (Request.from_text(PROMPTS[0]), Request.from_text("Hello", system="You are terse."), MULTI_TURN):
        ids = hf_text.prompt_ids(req)
        assert ids == jax_text.prompt_ids(req)
        tail = [105, *hf_text.text_ids("model"), 107]  # <start_of_turn>model\n
        assert ids[:2] == [2, 105] and ids[-len(tail):] == tail
    assert hf_text.text_ids(" two  spaces\n\nand 123") == jax_text.text_ids(" two  spaces\n\nand 123")
    assert hf_text.detokenize(hf_text.text_ids("Hello there")) == "Hello there"


def test_greedy_and_scores_match_jax(hf_text, jax_text):
    reqs = [Request.from_text(p, id=str(i)) for i, p in enumerate(PROMPTS)]
    sp = SamplingParams(max_tokens=16, logprobs=5)
    jax_gens, hf_gens = jax_text.generate(reqs, sp), hf_text.generate(reqs, sp)
    assert [g.request_id for g in hf_gens] == ["0", "1", "2"]
    assert [g.token_ids for g in hf_gens] == [g.token_ids for g in jax_gens]
    assert [g.text for g in hf_gens] == [g.text for g in jax_gens]
    assert [g.prompt_ids for g in hf_gens] == [g.prompt_ids for g in jax_gens]
    scores = hf_text.score(reqs, [g.token_ids for g in jax_gens], top_logprobs=5)
    worst = _max_dlogprob(scores, jax_gens)
    print(f"max |dlogprob| hf score vs JAX (text): {worst:.2e}; hf generate vs JAX: {_max_dlogprob(hf_gens, jax_gens):.2e}")
    assert worst <= 1e-4 and _max_dlogprob(hf_gens, jax_gens) <= 1e-4
    for g, s in zip(hf_gens, scores):
        assert g.timings.batch_size == 3 and g.finish_reason == "length" and len(g.token_ids) == 16
        for tops, chosen, lp in ((g.top_logprobs, g.token_ids, g.logprobs), (s.top_logprobs, s.token_ids, s.logprobs)):
            assert all(len(t) == 5 for t in tops) and len(tops) == len(chosen)
            assert all([v for _, v in t] == sorted((v for _, v in t), reverse=True) for t in tops)
            assert [t[0][0] for t in tops] == chosen  # greedy: the chosen id is the top alternative
            assert np.allclose([t[0][1] for t in tops], lp, atol=1e-6)


def test_batching_does_not_change_results(hf_text):
    reqs = [Request.from_text(p) for p in PROMPTS]  # different lengths: left padding
    sp = SamplingParams(max_tokens=8)
    batched = hf_text.generate(reqs, sp)
    alone = [hf_text.generate([r], sp)[0] for r in reqs]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert _max_dlogprob(batched, alone) <= 1e-5
    assert alone[0].timings.batch_size == 1


def test_score_ids_matches_score(hf_text, jax_text):
    req = Request.from_text(PROMPTS[1])
    cont = hf_text.text_ids(" three, four")
    [s] = hf_text.score([req], [cont], top_logprobs=2)
    ids = hf_text.prompt_ids(req) + cont
    si = hf_text.score_ids(ids, top_logprobs=2)
    assert si.prompt_ids == ids[:1] and si.token_ids == ids[1:]
    assert np.allclose(si.logprobs[-len(cont):], s.logprobs, atol=1e-5)
    assert [[i for i, _ in t] for t in si.top_logprobs[-len(cont):]] == [[i for i, _ in t] for t in s.top_logprobs]
    assert np.abs(np.asarray(si.logprobs) - np.asarray(jax_text.score_ids(ids).logprobs)).max() <= 1e-4


def test_stop_strings_cut_text(hf_text):
    req = [Request.from_text(PROMPTS[0])]
    full = hf_text.generate(req, SamplingParams(max_tokens=12))[0]
    assert len(full.text) >= 4, full.text
    stop = full.text[2:4]
    cut = hf_text.generate(req, SamplingParams(max_tokens=12, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)
    assert len(cut.logprobs) == len(cut.token_ids)


def test_end_tokens_stop_unless_ignore_eos(hf_text):
    """The random tiny model rarely emits <eos>/<end_of_turn>; near-uniform seeded sampling makes
    some rows do so, and the same seed with ignore_eos draws the same tokens and goes on."""
    reqs = [Request.from_text(f"{p} {i}") for i in range(4) for p in PROMPTS]
    for seed in range(20):
        sp = SamplingParams(temperature=100.0, seed=seed, max_tokens=24)
        gens = hf_text.generate(reqs, sp)
        if any(g.finish_reason == "stop" for g in gens):
            break
    else:
        pytest.fail("no end token in 20 seeded runs")
    ignored = hf_text.generate(reqs, sp.model_copy(update={"ignore_eos": True, "return_logprobs": False}))
    for g, i in zip(gens, ignored):
        ends = [k for k, t in enumerate(g.token_ids) if t in END_TOKENS]
        assert ends in ([], [len(g.token_ids) - 1])
        assert g.finish_reason == ("stop" if ends else "length") and (ends or len(g.token_ids) == 24)
        assert i.finish_reason == "length" and len(i.token_ids) == 24 and i.logprobs is None and i.top_logprobs is None
        assert i.token_ids[: len(g.token_ids)] == g.token_ids
        assert not any(str(t) in g.text for t in ("<eos>", "<end_of_turn>"))
    assert any(any(t in END_TOKENS for t in i.token_ids[:-1]) for i in ignored)


def test_errors_are_one_line(hf_text, tiny_text_dir, tmp_path):
    def one_line(exc_info) -> None:
        assert "\n" not in str(exc_info.value) and str(exc_info.value)

    with pytest.raises(InputError, match="dtype 'float16'") as e:
        HfBackend("tiny-gemma3", tiny_text_dir / "hf", dtype="float16")
    one_line(e)
    with pytest.raises(ModelError, match="no config.json") as e:
        HfBackend("nothing", tmp_path)
    one_line(e)
    req = Request.from_text("Hello")
    with pytest.raises(InputError, match="outside the vocabulary") as e:
        hf_text.score([req], [[5, 1024]])
    one_line(e)
    with pytest.raises(InputError, match="outside the vocabulary"):
        hf_text.score_ids([2, 99999])
    with pytest.raises(InputError, match="2 requests but 1 continuations"):
        hf_text.score([req, req], [[5]])
    with pytest.raises(InputError, match="top_logprobs=21"):
        hf_text.score([req], [[5]], top_logprobs=21)
    with pytest.raises(InputError, match="at least two ids"):
        hf_text.score_ids([2])
    img_req = _image_request(image(1))
    for call in (lambda: hf_text.generate([img_req], SamplingParams(max_tokens=2)),
                 lambda: hf_text.score([img_req], [[5]]), lambda: hf_text.prompt_ids(img_req)):
        with pytest.raises(UnsupportedError, match="image input, which is unsupported: the model has no vision") as e:
            call()
        one_line(e)


# ---------------------------------------------------------------- vision


def test_vision_prompt_and_scores_match_jax(hf_vision, jax_vision):
    assert hf_vision.capabilities.modalities == {"text", "image"}
    assert hf_vision.describe()["model_class"] == "Gemma3ForConditionalGeneration"
    req = _image_request(image(5))  # 64x64: the vision input size, no resize on either side
    ids = hf_vision.prompt_ids(req)
    assert ids == jax_vision.prompt_ids(req)
    assert ids.count(262143) == 16 and ids[ids.index(255999) - 1] == 108 and ids[ids.index(256000) + 1] == 108
    sp = SamplingParams(max_tokens=12, logprobs=3)
    [jg], [hg] = jax_vision.generate([req], sp), hf_vision.generate([req], sp)
    assert hg.token_ids == jg.token_ids
    [s] = hf_vision.score([req], [jg.token_ids], top_logprobs=3)
    worst = _max_dlogprob([s], [jg])
    print(f"max |dlogprob| hf score vs JAX (image prompt): {worst:.2e}; hf generate vs JAX: {_max_dlogprob([hg], [jg]):.2e}")
    assert worst <= 1e-4 and _max_dlogprob([hg], [jg]) <= 1e-4
    # text-only requests to the vision model take the same path without pixels
    text_req = Request.from_text("Hello there", system="Be brief.")
    assert hf_vision.prompt_ids(text_req) == jax_vision.prompt_ids(text_req)


def test_causal_images_change_image_logprobs(hf_vision, jax_vision):
    req = _image_request(image(5))
    [g] = jax_vision.generate([req], SamplingParams(max_tokens=12))
    [both] = hf_vision.score([req], [g.token_ids])
    [causal] = hf_vision.score([req], [g.token_ids], causal_images=True)
    assert hf_vision.score_causal_images([req], [g.token_ids])[0].logprobs == causal.logprobs
    moved = float(np.abs(np.asarray(both.logprobs) - np.asarray(causal.logprobs)).max())
    [jax_causal] = jax_vision.score_causal_images([req], [g.token_ids])
    vs_jax = _max_dlogprob([causal], [jax_causal])
    print(f"causal_images moves image-prompt log-probs by {moved:.2e}; hf causal vs JAX causal: {vs_jax:.2e}")
    assert moved > 1e-4 and vs_jax <= 1e-4
    # a text-only prompt has no image tokens: causal_images changes nothing
    t = Request.from_text("Hello")
    assert hf_vision.score([t], [[5, 6]])[0].logprobs == hf_vision.score([t], [[5, 6]], causal_images=True)[0].logprobs


def test_image_first_merges_newlines_as_transformers_does(hf_vision, jax_vision):
    """transformers expands <start_of_image> in the text before tokenizing, so "\\n" + "\\n\\n"
    becomes one "\\n\\n\\n" token (109); gemma inserts token ids, keeping "\\n" "\\n\\n" (107, 108)."""
    req = _image_request(image(5), text_first=False)
    hf_ids, jax_ids = hf_vision.prompt_ids(req), jax_vision.prompt_ids(req)
    k = jax_ids.index(255999)
    assert jax_ids[k - 2:k] == [107, 108] and hf_ids == jax_ids[:k - 2] + [109] + jax_ids[k:]


def test_image_pixels(hf_vision, jax_vision):
    img = image(5)
    got = hf_vision.image_pixels(_image_request(img))
    processor, resized, pixels = got.processor, got.resized, got.pixels
    assert processor == "Gemma3ImageProcessorPil"
    assert resized[0].shape == (64, 64, 3) and resized[0].dtype == np.uint8 and (resized[0] == img).all()
    assert pixels[0].shape == (64, 64, 3) and pixels[0].dtype == np.float32
    assert np.abs(pixels[0] - (img / 127.5 - 1.0)).max() < 1e-6
    assert np.abs(pixels[0] - jax_vision.image_pixels(_image_request(img)).pixels[0]).max() < 1e-6
    big = np.random.default_rng(0).integers(0, 256, size=(100, 80, 3), dtype=np.uint8)
    two = Request(messages=[{"role": "user", "content": [ImagePart(array=big), ImagePart(array=img),
                                                         {"type": "text", "text": "Compare."}]}])
    res = hf_vision.image_pixels(two)
    assert [r.shape for r in res.resized] == [(64, 64, 3)] * 2 and [p.shape for p in res.pixels] == [(64, 64, 3)] * 2
    assert hf_vision.image_pixels(Request.from_text("Hello")) is None


def test_engine_registry_resolves_the_folder(tiny_text_dir):
    """`backends.get("hf", model=...)` without hf_dir resolves the registry name to its folder."""
    with backends.get("hf", model="tiny-gemma3", max_batch_size=2) as b:
        assert isinstance(b, HfBackend) and b.hf_dir == tiny_text_dir / "hf" and b.max_batch_size == 2
        gens = b.generate([Request.from_text(p) for p in PROMPTS], SamplingParams(max_tokens=3))
        assert [g.timings.batch_size for g in gens] == [2, 2, 1]


def test_bfloat16_keeps_greedy_tokens(hf_text, tiny_text_dir):
    reqs = [Request.from_text(p) for p in PROMPTS]
    f32 = hf_text.generate(reqs, SamplingParams(max_tokens=8))
    with HfBackend("tiny-gemma3", tiny_text_dir / "hf", dtype="bfloat16") as b16:
        assert b16.describe()["dtype"] == "bfloat16"
        scores = b16.score(reqs, [g.token_ids for g in f32])
    worst = _max_dlogprob(scores, f32)
    print(f"max |dlogprob| hf bfloat16 vs float32 (text): {worst:.2e}")
    assert 0 < worst < 0.1
