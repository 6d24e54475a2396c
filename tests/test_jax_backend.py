"""The JAX backend on the embedded tiny models (real gemma library, CPU)."""

import numpy as np
import pytest
from conftest import image, perturb_one_tensor, variant

import backends
from backends import ImagePart, Request, SamplingParams, UnsupportedError

PROMPTS = ["What is the capital of France?", "Count to ten: one, two,", "Hello there", "Привет, как дела?"]


def test_score_matches_generation_logprobs(jax_text):
    reqs = [Request.from_text(p) for p in PROMPTS[:2]]
    gens = jax_text.generate(reqs, SamplingParams(max_tokens=8))
    scores = jax_text.score(reqs, [g.token_ids for g in gens], top_logprobs=3)
    for g, s in zip(gens, scores):
        assert s.token_ids == g.token_ids
        assert np.allclose(s.logprobs, g.logprobs, atol=1e-6)
        assert len(s.top_logprobs[0]) == 3
    # scoring arbitrary (non-greedy) ids works too and gives lower log-probs than the argmax
    other = jax_text.score(reqs[:1], [[500, 501, 502]])[0]
    assert len(other.logprobs) == 3


def test_prompt_ids_have_bos_and_chat_template(jax_text):
    ids = jax_text.prompt_ids(Request.from_text("Hello"))
    # <bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n
    assert ids[:2] == [2, 105] and ids[-1] == 107 and ids.count(105) == 2 and ids.count(106) == 1


def test_stop_strings_cut_text(jax_text):
    req = [Request.from_text(PROMPTS[0])]
    full = jax_text.generate(req, SamplingParams(max_tokens=12))[0]
    assert len(full.text) >= 4, full.text
    stop = full.text[2:4]  # any two characters of the greedy output, whitespace included
    cut = jax_text.generate(req, SamplingParams(max_tokens=12, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)


def test_memory_snapshot(jax_text):
    m = jax_text.memory()
    assert m.device == "cpu" and m.rss_bytes > 100 * 2**20 and m.live_array_bytes > 0


def test_compile_is_reported_apart(jax_text):
    reqs = [Request.from_text(p) for p in PROMPTS]
    s = SamplingParams(max_tokens=20)
    jax_text.generate(reqs, s)
    again = jax_text.generate(reqs, s)
    assert again[0].timings.compile_s < 0.05 * again[0].timings.e2e_s + 0.01


def test_a_second_backend_with_other_weights_scores_and_captures_without_compiling(tmp_path, tiny_text_dir, jax_text):
    """The scorer and the layer walk take the network as a static argument: a backend whose
    weights alone differ shares the first one's compilations (and scores differently)."""
    from backends.jax._backend import compile_stats

    req, cont = Request.from_text(PROMPTS[0]), [500, 501, 502]
    first = jax_text.score([req], [cont], top_logprobs=2)[0]
    jax_text.capture_layers(req, cont)
    with backends.get("jax", model=str(variant(tmp_path, tiny_text_dir, "other", params_fn=perturb_one_tensor))) as b:
        n = compile_stats().count
        second = b.score([req], [cont], top_logprobs=2)[0]
        b.capture_layers(req, cont)
        assert compile_stats().count == n
    assert second.logprobs != first.logprobs


def test_image_prompt_depends_on_image(jax_vision):
    def req(seed):
        return Request(messages=[{"role": "user", "content": [ImagePart(array=image(seed)),
                                                               {"type": "text", "text": "Describe the image."}]}])

    a, b = jax_vision.generate([req(1), req(2)], SamplingParams(max_tokens=6, logprobs=1))
    assert a.logprobs != b.logprobs
    ids = jax_vision.prompt_ids(req(1))
    assert ids.count(262143) == 16 and 255999 in ids and 256000 in ids  # 16 soft tokens between boi/eoi


def test_image_to_text_only_model_is_refused(jax_text):
    req = Request(messages=[{"role": "user", "content": [ImagePart(array=image(1)), {"type": "text", "text": "x"}]}])
    with pytest.raises(UnsupportedError, match="image input, which is unsupported: tiny-gemma3 is a text-only"):
        jax_text.generate([req], SamplingParams(max_tokens=4))


def test_a_prompt_beyond_the_models_context_is_refused_in_one_line(jax_text):
    # as vLLM refuses it (HTTP 400), before anything is compiled for it; the context is 4096 here
    long = Request.from_text("word " * 4200, id="too-long")
    with pytest.raises(backends.InputError, match=r"^request too-long: its prompt is \d+ tokens, more than the model's "
                                                  r"context of 4096 \(max_position_embeddings\); shorten it$"):
        jax_text.generate([long], SamplingParams(max_tokens=2))


def test_backend_honours_protocol(jax_text):
    assert isinstance(jax_text, backends.Backend)
    assert jax_text.capabilities.modalities == {"text"}


LAZY_WINDOWS = r'''
import contextlib, sys, threading
from etils import epy
from etils.epy import lazy_imports_utils
import numpy as np
import backends
from backends import Message, Request, SamplingParams

windows = []  # each time gemma's code replaces builtins.__import__ while a module loads
real = lazy_imports_utils.lazy_imports

@contextlib.contextmanager
def recorded(*a, **k):
    windows.append(sys._getframe(2).f_code.co_filename)
    with real(*a, **k):
        yield

epy.lazy_imports = lazy_imports_utils.lazy_imports = recorded
backends.import_libraries("jax")
before = len(windows)
with backends.get("jax", model=sys.argv[1]) as b:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    reqs = [Request.from_text("Hello there"),
            Request(messages=[Message(role="user", content=[{"type": "image", "array": img}, {"type": "text", "text": "What?"}])])]
    gens = b.generate(reqs, SamplingParams(max_tokens=3))
    b.score(reqs, [g.token_ids for g in gens], top_logprobs=2)
    b.capture_layers(reqs[1], gens[1].token_ids)
print(before, windows[before:])
'''


def test_no_lazy_import_window_opens_after_import_libraries(tiny_vision_dir):
    """gemma and kauldron import through etils' lazy imports, which replace `builtins.__import__`
    for the whole process while a module loads (an import in another thread then gets a
    placeholder: torch's `@dataclass` became a `LazyModule` while hf set up beside jax). After
    `import_libraries` (which `compare` runs before opening sides in threads), loading a model,
    generating with an image, scoring and capturing layers open none. The recorder sees the
    windows `import_libraries` itself opens, so it can fail."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", LAZY_WINDOWS, "tiny-gemma3-vision"], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    before, after = p.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(before) > 10  # the recorder works: gemma's own imports were seen
    assert after == "[]", f"lazy-import windows opened after import_libraries: {after}"
