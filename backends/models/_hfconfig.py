"""The model configuration an engine consumes, as Hugging Face text-config keys, and the diff of two.

vLLM and transformers build their model from a folder's `config.json`, through transformers'
config class, which fills in what the file leaves out (a config without `layer_types` gets
transformers' default pattern); the gemma library builds it from a `GemmaArch`, whose Hugging Face
equivalent is `arch.to_hf_text_config()`. Both become one flat dict of text-config keys
(`consumed_config`), and `config_diff` compares every key either side has: not a hand-kept list,
so a field paritybench never heard of (an activation, a bidirectional-attention flag) still shows.

    models.config_diff(models.consumed_config(json.load(open("config.json"))), jax_side_config)
"""

from __future__ import annotations

import functools
import json
from typing import Any

# keys that change nothing an engine computes at inference (training, bookkeeping, the dtype, which
# is a setting of its own, and the older spellings transformers turns into `layer_types` and
# `rope_parameters`, which are compared instead)
IGNORED = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "id2label", "label2id", "problem_type", "return_dict", "output_attentions", "output_hidden_states",
    "is_encoder_decoder", "chunk_size_feed_forward", "initializer_range", "use_cache", "attention_dropout",
    "pad_token_id", "cache_implementation", "attn_implementation", "_attn_implementation_autoset",
    "sliding_window_pattern", "_sliding_window_pattern", "rope_scaling", "rope_theta", "rope_local_base_freq",
    "text_config", "vision_config", "audio_config", "initializer_factor", "torch_compile",
})

# of those, the ones a config file carries as bookkeeping (left out of `consumed_config` itself,
# so that two files differing only there compare equal without transformers' help)
BOOKKEEPING = frozenset({"_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype",
                         "id2label", "label2id", "return_dict", "output_attentions", "output_hidden_states"})

# config keys whose value an engine's `ModelSettings` already carries, under that field's name:
# a difference there is named by the field's own cause, not twice
SETTING_OF_KEY: dict[str, tuple[str, ...]] = {
    "final_logit_softcapping": ("final_logit_softcap",),
    "attn_logit_softcapping": ("attn_logit_softcap",),
    "query_pre_attn_scalar": ("query_pre_attn_scalar",),
    "sliding_window": ("sliding_window",),
    "layer_types": ("layer_types",),
    "rope_parameters": ("rope_local_base", "rope_global_base", "rope_local_scale", "rope_global_scale"),
    "rms_norm_eps": ("rms_norm_eps",),
    "tie_word_embeddings": ("tied_embeddings",),
    "vocab_size": ("logit_rows",),
    "eos_token_id": ("end_ids",),
    "image_token_index": ("image_token_id",),
    "mm_tokens_per_image": ("mm_tokens_per_image",),
    "altup_coef_clip": ("altup_coef_clip",),
    "num_kv_shared_layers": ("kv_sharing",),
    "hidden_size": ("embed_dim",),
    "intermediate_size": ("hidden_dim",),
    "num_attention_heads": ("num_heads",),
    "num_key_value_heads": ("num_kv_heads",),
    "head_dim": ("head_dim",),
}


def consumed_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The text-model keys of a `config.json` (its `text_config` for a multimodal one, with the
    top-level image-layout keys), as written: `config_diff` fills in defaults when it needs them."""
    text = dict(cfg.get("text_config") or cfg)
    text.setdefault("model_type", cfg.get("model_type"))
    if "tie_word_embeddings" in cfg:
        text.setdefault("tie_word_embeddings", cfg["tie_word_embeddings"])
    for key in ("image_token_index", "mm_tokens_per_image"):
        if key in cfg:
            text[key] = cfg[key]
    return {k: v for k, v in text.items() if k not in BOOKKEEPING}


@functools.cache
def _with_defaults(cfg_json: str) -> dict[str, Any]:
    """What transformers' config class makes of a text config: every key with its default filled
    in (the config vLLM and transformers build from). Unchanged when transformers is missing or
    does not know the model type."""
    cfg = json.loads(cfg_json)
    try:
        from transformers import AutoConfig

        kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "image_token_index", "mm_tokens_per_image")}
        made = AutoConfig.for_model(cfg.get("model_type") or "gemma3_text", **kwargs).to_dict()
    except Exception:  # transformers missing, or its config class refusing a value (a null where it wants a float)
        return cfg
    return {**made, **{k: cfg[k] for k in ("image_token_index", "mm_tokens_per_image") if k in cfg}}


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every text-config key whose value two consumed configurations disagree on (a key one side
    lacks takes transformers' default), as (key, a's value, b's value); keys that change nothing at
    inference are left out (`IGNORED`)."""
    if a == b:
        return []
    fa, fb = (_with_defaults(json.dumps(c, sort_keys=True)) for c in (a, b))
    keys = sorted((set(fa) | set(fb)) - IGNORED)
    return [(k, fa.get(k), fb.get(k)) for k in keys if _norm(fa.get(k)) != _norm(fb.get(k))]


def _norm(v: Any) -> Any:
    """Values as engines read them: lists and tuples alike, integers and equal floats alike."""
    if isinstance(v, list | tuple):
        return tuple(_norm(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _norm(x)) for k, x in v.items()))
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return float(v)
    return v
