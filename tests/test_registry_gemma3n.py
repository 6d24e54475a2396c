"""The registry's real Gemma 3n models, checked abstractly (`jax.eval_shape`: no weights, no
download): the gemma library's E2B/E4B give the Hugging Face configuration Google published, except
where the two libraries differ by design (the final soft-cap, the vocabulary rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backends import models

PUBLISHED = json.loads((Path(__file__).parent / "data" / "gemma3n_published_configs.json").read_text())
# "E2B"/"E4B": the effective size, the parameters without the embedding tables (token and per-layer)
EFFECTIVE_B = {"E2B": (1.8, 2.0), "E4B": (3.8, 4.0)}
# all parameters of gemma's text-only model, billions (tests/test_models.py counts the other real entries)
TOTAL_B = {"E2B": (4.0, 6.0), "E4B": (6.0, 8.5)}


@pytest.mark.parametrize("size", ["E2B", "E4B"])
def test_gemma_config_gives_the_published_hf_config(size):
    spec = models.get_spec(f"gemma-3n-{size}-it")
    model = models.real_model(spec)
    ours = models.Gemma3nArch.from_gemma3n_config(model.config)
    published = models.Gemma3nArch.from_hf_config({"model_type": "gemma3n", **PUBLISHED[spec.hf_id]["top_level"],
                                                   "text_config": PUBLISHED[spec.hf_id]["text_config"]})
    differ = {k: (getattr(ours, k), getattr(published, k)) for k in type(ours).model_fields
              if getattr(ours, k) != getattr(published, k)}
    # by design: gemma 3.3 has no final soft-cap (HF 30), and 262144 rows where HF appends 256 (262400)
    assert differ == {"final_logit_softcap": (None, 30.0), "vocab_size": (262144, 262400)}, differ
    assert ours.padded_vocab_size == published.padded_vocab_size == 262400
    assert ours.text_vocab_size == published.text_vocab_size == 262144
    # the KV-sharing rules of the engines agree on the released layouts
    assert ours.kv_sharing("gemma") == ours.kv_sharing("hf")
    shared = {i: t for i, t in enumerate(ours.kv_sharing("gemma")) if i != t}
    assert len(shared) == published.num_kv_shared_layers and set(shared.values()) == {ours.num_layers
                                                                                        - ours.num_kv_shared_layers - 2,
                                                                                        ours.num_layers
                                                                                        - ours.num_kv_shared_layers - 1}


@pytest.mark.parametrize("size", ["E2B", "E4B"])
def test_parameter_counts(size):
    spec = models.get_spec(f"gemma-3n-{size}-it")
    model = models.real_model(spec)
    params = models.abstract_params(model)
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    total = sum(int(np.prod(x.shape)) for _, x in leaves)
    ple = next(x for p, x in leaves if "per_layer_input_embedding" in jax.tree_util.keystr(p))
    emb = next(x for p, x in leaves if "'input_embedding'" in jax.tree_util.keystr(p))
    arch = models.Gemma3nArch.from_gemma3n_config(model.config)
    assert ple.shape == (262144, arch.num_layers, 256) and emb.shape == (262144, 2048)
    effective = (total - int(np.prod(ple.shape)) - int(np.prod(emb.shape))) / 1e9
    lo, hi = EFFECTIVE_B[size]
    assert lo <= effective <= hi, (total, effective)
    lo, hi = TOTAL_B[size]
    assert lo <= total / 1e9 <= hi, total
    # text-only on JAX in gemma 3.3, everything on vLLM
    assert spec.jax_modalities == {"text"} and spec.vllm_modalities == {"text", "image", "audio"}
    assert "text-only" in spec.unsupported["jax"]["audio"]
    # no k/v projections in the KV-shared layers
    kv_layers = {jax.tree_util.keystr(p).split("'")[1] for p, _ in leaves if "kv_einsum" in jax.tree_util.keystr(p)}
    assert len(kv_layers) == arch.num_layers - arch.num_kv_shared_layers
    print(f"{size}: {total / 1e9:.3f}B text parameters, {effective:.3f}B without the embeddings")
