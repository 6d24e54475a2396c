"""Differences named from the sides' effective settings, on a model of this file's own (multi-query
attention, head_dim 48 unlike embed/heads = 32, five layers, a window of 16, RoPE scaling 4 on full
layers): a change to one configuration field on one side is named `config:<field>` with both values
and confirmed by re-scoring the JAX side with the other side's value; a dtype mismatch is named and
the tolerance follows the lower precision; a clean pair names nothing and passes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import backends
from backends import Request, models
from harness import parity

ARCH = models.GemmaArch(
    vocab_size=1024, embed_dim=96, hidden_dim=192, num_heads=3, head_dim=48, num_kv_heads=1,
    layer_types=("sliding", "sliding", "full", "sliding", "full"), sliding_window=16, query_pre_attn_scalar=48,
    final_logit_softcap=20.0, rope_global_scale=4.0, max_position_embeddings=2048, dtype="float32",
)
PROMPTS = [Request.from_text("The quick brown fox jumps over the lazy dog while the river runs past the old mill, "
                             "and nobody notices the time at all.", id="long"),
           Request.from_text("What is two plus two?", id="short")]


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_text_dir):
    root = tmp_path_factory.mktemp("own")
    card = models.ModelCard(name="own", arch=ARCH)
    gemma = models.write_model_dir(root / "own", card, models.random_params(ARCH, seed=3, sharpen=6.0),
                                   tiny_text_dir / models.TOKENIZER)
    return gemma, models.gemma_dir_to_hf(gemma, root / "own-hf").path


@pytest.fixture(scope="module")
def jax_own(own):
    with backends.get("jax", model=str(own[0])) as b:
        yield b


def planted(tmp_path: Path, hf: Path, edit) -> Path:
    d = tmp_path / "planted"
    shutil.copytree(hf, d)
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def named(report) -> dict[str, bool]:
    return {c.name: c.explains for p in report.prompts for c in p.causes}


def test_a_clean_pair_names_nothing_and_passes(own, jax_own):
    with backends.get("hf", model=str(own[1])) as hf:
        report = parity.compare(jax_own, hf, PROMPTS, max_tokens=8)
    assert report.verdict == "pass" and not named(report), [p.reasons for p in report.prompts]
    assert report.a["settings"]["sliding_window"] == report.b["settings"]["sliding_window"] == 16


PLANTS = {
    "rope_global_scale": lambda c: c["rope_parameters"]["full_attention"].update(factor=2.0),
    "query_pre_attn_scalar": lambda c: c.update(query_pre_attn_scalar=32),
    "sliding_window": lambda c: c.update(sliding_window=12),
    "rope_local_base": lambda c: c["rope_parameters"]["sliding_attention"].update(rope_theta=500.0),
}


@pytest.mark.parametrize("field", sorted(PLANTS))
def test_a_changed_config_field_is_named_and_confirmed(tmp_path, own, jax_own, field):
    with backends.get("hf", model=str(planted(tmp_path, own[1], PLANTS[field]))) as hf:
        report = parity.compare(jax_own, hf, PROMPTS, max_tokens=8)
    causes = named(report)
    assert causes.get(f"config:{field}") is True, [p.reasons for p in report.prompts]
    assert report.verdict == "fail"  # a configuration difference is a real one, named, not excused
    c = next(c for p in report.prompts for c in p.causes if c.name == f"config:{field}")
    assert c.evidence["max_abs_dlogprob_aligned"] <= 1e-5 < c.evidence["max_abs_dlogprob"]
    assert "weights" not in causes


def test_a_changed_final_softcap_is_named_and_confirmed(tmp_path, own, jax_own):
    """Soft-caps differ by design only between Gemma 3n's engines (gemma none, Hugging Face 30);
    on Gemma 3 a cap on one side is a configuration difference: named, confirmed, a failure.
    (tests/test_engine_bugs.py plants the attention soft-cap, which transformers' and vLLM's Gemma 3
    never apply.)"""
    with backends.get("hf", model=str(planted(tmp_path, own[1], lambda c: c.update(final_logit_softcapping=8.0)))) as hf:
        report = parity.compare(jax_own, hf, PROMPTS, max_tokens=8)
    assert named(report).get("config:final_logit_softcap") is True, [p.reasons for p in report.prompts]
    assert report.verdict == "fail"


def test_a_changed_norm_epsilon_is_named(tmp_path, own, jax_own):
    with backends.get("hf", model=str(planted(tmp_path, own[1], lambda c: c.update(rms_norm_eps=0.5)))) as hf:
        report = parity.compare(jax_own, hf, PROMPTS, max_tokens=8)
    assert "config:rms_norm_eps" in named(report), [p.reasons for p in report.prompts]
    assert report.verdict == "fail"


def test_a_dtype_mismatch_is_named_and_the_bound_follows_the_lower_precision(own, jax_own):
    with backends.get("hf", model=str(own[1]), dtype="bfloat16") as hf:
        report = parity.compare(jax_own, hf, PROMPTS, max_tokens=8)
    assert report.tolerance.name == "bfloat16" and "dtype-mismatch" in report.tolerance.reason
    assert report.a["settings"]["dtype"] == "float32" and report.b["settings"]["dtype"] == "bfloat16"
    assert "weights" not in named(report)


def test_tied_embeddings_and_the_image_token_layout_are_named_from_the_settings(tiny_vision_dir):
    from harness import diagnosis

    arch = models.read_card(tiny_vision_dir).arch
    assert arch.vision is not None
    mine = models.engine_settings(arch, "gemma", tied_embeddings=True)
    other = arch.model_copy(update={"vision": arch.vision.model_copy(update={"mm_tokens_per_image": 64}),
                                    "image_token_id": 262000})
    theirs = models.engine_settings(other, "vllm", tied_embeddings=False)
    names = {d.cause: (d.a, d.b) for d in diagnosis.settings_diff(mine, theirs)}
    assert names["config:mm_tokens_per_image"] == (16, 64)
    assert names["config:image_token_id"] == (arch.hf_image_token_id, 262000)
    assert names["config:tie_word_embeddings"] == (True, False)
    assert not diagnosis.settings_diff(mine, models.engine_settings(arch, "vllm", tied_embeddings=True))


def test_kv_cache_dtype_quantization_and_chat_template_are_named(tmp_path, tiny_text_dir):
    from backends import ModelSettings
    from harness import diagnosis

    def names(x, y):
        return {d.cause for d in diagnosis.settings_diff(x, y)}

    f32 = ModelSettings(dtype="float32", kv_cache_dtype="float32", quantization=None)
    assert names(f32, ModelSettings(dtype="bfloat16", kv_cache_dtype="bfloat16", quantization=None)) == {"dtype-mismatch"}
    assert names(f32, ModelSettings(dtype="float32", kv_cache_dtype="fp8", quantization=None)) == {"kv-cache-dtype"}
    assert names(f32, ModelSettings(dtype="float32", kv_cache_dtype="float32", quantization="awq")) == {"quantization"}
    hf = tmp_path / "hf"
    shutil.copytree(tiny_text_dir / "hf", hf)
    before = models.hf_folder_settings(hf, "hf")
    (hf / "chat_template.jinja").write_text((hf / "chat_template.jinja").read_text() + "\n")
    assert names(before, models.hf_folder_settings(hf, "hf")) == {"chat-template"}
