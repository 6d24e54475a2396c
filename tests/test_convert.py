"""gemma <-> Hugging Face conversion: bit-exact round trip, and an independent numerical check
against transformers' Gemma 3 models (float32, same weights)."""

import json

import numpy as np
import pytest
from conftest import image

from backends import ImagePart, Request, SamplingParams
from backends import models as checkpoint
from backends import models as convert


@pytest.mark.parametrize("fixture", ["tiny_text_dir", "tiny_vision_dir"])
def test_round_trip_is_bit_exact(tmp_path, request, fixture):
    src = request.getfixturevalue(fixture)
    hf = convert.gemma_dir_to_hf(src, tmp_path / "hf").path
    back = convert.hf_dir_to_gemma(hf, tmp_path / "gemma").path
    a = checkpoint.load_params(src / "params")
    b = checkpoint.load_params(back / "params")
    assert checkpoint.tree_digest(a) == checkpoint.tree_digest(b)
    assert checkpoint.read_card(back).arch == checkpoint.read_card(src).arch
    cfg = json.loads((hf / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    assert text["sliding_window"] == checkpoint.read_card(src).arch.sliding_window
    assert text["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert text["rope_parameters"]["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    for f in ("model.safetensors", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
              "chat_template.jinja", "generation_config.json"):
        assert (hf / f).is_file(), f


def _hf_logprobs(model, ids, token_type_ids=None, pixel_values=None):
    import torch

    kw = {}
    if pixel_values is not None:
        kw = dict(pixel_values=torch.tensor(pixel_values), token_type_ids=torch.tensor([token_type_ids]))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **kw).logits[0].float()
    return torch.log_softmax(logits, -1).numpy()


def test_transformers_agrees_on_text(jax_text, tiny_text_dir):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_text_dir / "hf", dtype=torch.float32, attn_implementation="eager")
    reqs = [Request.from_text(p) for p in ("What is the capital of France?", "Count: one, two,",
                                           "A longer prompt that goes past the sliding window of eight tokens.")]
    gens = jax_text.generate(reqs, SamplingParams(max_tokens=16))
    worst = 0.0
    for g in gens:
        lp = _hf_logprobs(hf, g.prompt_ids + g.token_ids)
        pos = np.arange(len(g.prompt_ids) - 1, len(g.prompt_ids) - 1 + len(g.token_ids))
        assert lp[pos].argmax(-1).tolist() == g.token_ids  # HF greedy takes the same tokens
        worst = max(worst, float(np.abs(lp[pos, g.token_ids] - np.asarray(g.logprobs)).max()))
        out = hf.generate(torch.tensor([g.prompt_ids]), max_new_tokens=len(g.token_ids), do_sample=False,
                          eos_token_id=[1, 106], pad_token_id=0)
        assert out[0, len(g.prompt_ids):].tolist() == g.token_ids
    print(f"max |dlogprob| JAX vs transformers (text): {worst:.2e}")
    assert worst <= 1e-4


def test_transformers_agrees_on_image_prompt(jax_vision, tiny_vision_dir):
    import torch
    from transformers import Gemma3ForConditionalGeneration

    hf = Gemma3ForConditionalGeneration.from_pretrained(tiny_vision_dir / "hf", dtype=torch.float32,
                                                        attn_implementation="eager")
    img = image(5)  # already 64x64: no resize on either side
    req = Request(messages=[{"role": "user", "content": [{"type": "text", "text": "Look:"}, ImagePart(array=img),
                                                         {"type": "text", "text": "What is it?"}]}])
    g = jax_vision.generate([req], SamplingParams(max_tokens=12))[0]
    ids = g.prompt_ids + g.token_ids  # expanded prompt: soft tokens carry the image token id
    tti = [1 if t == 262143 else 0 for t in ids]
    pixels = (img.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]  # rescale 1/255, normalise 0.5/0.5
    lp = _hf_logprobs(hf, ids, tti, pixels)
    pos = np.arange(len(g.prompt_ids) - 1, len(ids) - 1)
    assert lp[pos].argmax(-1).tolist() == g.token_ids
    worst = float(np.abs(lp[pos, g.token_ids] - np.asarray(g.logprobs)).max())
    print(f"max |dlogprob| JAX vs transformers (image prompt): {worst:.2e}")
    assert worst <= 1e-4
    # the image matters on both sides: another image moves the log-probs far more than the tolerance
    lp2 = _hf_logprobs(hf, ids, tti, (image(6).astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None])
    assert np.abs(lp2[pos, g.token_ids] - lp[pos, g.token_ids]).max() > 1e-2


def test_bfloat16_round_trip_keeps_dtype(tmp_path, tiny_text_dir):
    import jax
    import jax.numpy as jnp

    card = checkpoint.read_card(tiny_text_dir)
    p16 = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16)), checkpoint.load_params(tiny_text_dir / "params"))
    arch16 = card.arch.model_copy(update={"dtype": "bfloat16"})
    src = checkpoint.write_model_dir(tmp_path / "g", card.model_copy(update={"arch": arch16}), p16,
                                     tiny_text_dir / "tokenizer.model")
    hf = convert.gemma_dir_to_hf(src, tmp_path / "hf").path
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    back = convert.hf_dir_to_gemma(hf, tmp_path / "back").path
    assert checkpoint.tree_digest(checkpoint.load_params(back / "params")) == checkpoint.tree_digest(p16)
