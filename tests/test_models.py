"""Tiny model builds, registry entries (abstract shapes, no downloads), GemmaArch <-> configs."""

import hashlib
from pathlib import Path

import pytest

from backends import REGISTRY, InputError, get_spec, models
from backends.models import GemmaArch


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-gemma3-vision"])
def test_rebuild_is_byte_identical(tmp_path, name):
    a = _digest(models.build_tiny(name, tmp_path / "a"))
    b = _digest(models.build_tiny(name, tmp_path / "b"))
    assert a == b
    assert "params/_METADATA" in a and "hf/model.safetensors" in a and "hf/tokenizer.json" in a


def test_unknown_model_lists_known_ones():
    with pytest.raises(InputError, match="unknown model 'gemma-9'.*tiny-gemma3, tiny-gemma3-vision, gemma-3n-E2B-it"):
        get_spec("gemma-9")


# Published Hugging Face config values of the real checkpoints (google/gemma-3-*-it).
HF_FACTS = {
    "gemma-3-270m-it": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                            num_key_value_heads=1, head_dim=256, sliding_window=512, query_pre_attn_scalar=256,
                            vocab_size=262144),
    "gemma-3-1b-it": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                          num_key_value_heads=1, head_dim=256, sliding_window=512, query_pre_attn_scalar=256,
                          vocab_size=262144),
    "gemma-3-4b-it": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                          num_key_value_heads=4, head_dim=256, sliding_window=1024, query_pre_attn_scalar=256,
                          vocab_size=262208),
    "gemma-3-12b-it": dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=256, sliding_window=1024, query_pre_attn_scalar=256,
                           vocab_size=262208),
    "gemma-3-27b-it": dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
                           num_key_value_heads=16, head_dim=128, sliding_window=1024, query_pre_attn_scalar=168,
                           vocab_size=262208),
}
# Parameter counts (billions, including the vision tower where there is one).
SIZES = {"gemma-3-270m-it": (0.26, 0.28), "gemma-3-1b-it": (0.95, 1.05), "gemma-3-4b-it": (3.8, 4.4), "gemma-3-12b-it": (11.5, 12.5),
         "gemma-3-27b-it": (26.5, 27.8)}
# built abstractly (and counted) by tests/test_registry_gemma3n.py::test_parameter_counts: each real
# model is traced once (several seconds each)
GEMMA3N = ("gemma-3n-E2B-it", "gemma-3n-E4B-it")


def test_every_real_registry_entry_is_built_abstractly_somewhere():
    # a packaged model (trained weights imported from a GGUF) is checked against gemma's class in
    # tests/test_real_model.py
    assert {n for n in REGISTRY if not REGISTRY[n].tiny and not REGISTRY[n].gguf_package} == set(SIZES) | set(GEMMA3N)


@pytest.mark.parametrize("name", list(SIZES))
def test_real_registry_entries_build_abstractly(name):
    import numpy as np

    spec = get_spec(name)
    model = models.real_model(spec)
    shapes = models.abstract_params(model)
    import jax

    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) / 1e9
    lo, hi = SIZES[name]
    assert lo <= n <= hi, f"{name}: {n:.2f}B parameters"
    arch = GemmaArch.from_gemma_config(model.config, max_position_embeddings=spec.max_model_len)
    cfg = arch.to_hf_config()
    text = cfg.get("text_config", cfg)
    for k, v in HF_FACTS[name].items():
        assert text[k] == v, (name, k, text[k], v)
    assert text["rope_parameters"]["full_attention"].get("factor", 1.0) == (1.0 if name.endswith(("1b-it", "270m-it")) else 8.0)
    assert ("vision_config" in cfg) == ("image" in spec.jax_modalities)
    if "vision_config" in cfg:
        assert cfg["image_token_index"] == 262144 and cfg["vision_config"]["image_size"] == 896
    # and back: the HF config reproduces the same architecture
    assert GemmaArch.from_hf_config(cfg) == arch.model_copy(update={"dtype": "bfloat16"})


@pytest.mark.parametrize("name", ["random-gemma-3-270m", "random-gemma-3-1b"])
def test_random_weight_models_have_the_real_architecture(name):
    """A random-weight model's recipe is the gemma library's own class configuration (float32, max
    position 4096), and `--random-weights` on the real registry name finds it."""
    from gemma import gm

    recipe = models.TINY_RECIPES[name]
    real = GemmaArch.from_gemma_config(getattr(gm.nn, recipe.gemma_class).config, dtype="float32",
                                       max_position_embeddings=4096)
    assert recipe.arch == real
    spec = get_spec(name)
    assert models.random_twin(spec.shape_of) is spec and get_spec(spec.shape_of).gemma_class == recipe.gemma_class
    with pytest.raises(InputError, match="no random-weight build of gemma-3-4b-it's architecture; there is one of: "
                                         "gemma-3-270m-it \\(random-gemma-3-270m\\)"):
        models.random_twin("gemma-3-4b-it")


def test_kaggle_download_layout_is_found(tmp_path, tiny_text_dir):
    import shutil

    root = tmp_path / "kaggle" / "gemma3-4b-it" / "1"
    shutil.copytree(tiny_text_dir / "params", root / "gemma3-4b-it")
    shutil.copy(tiny_text_dir / "tokenizer.model", root / "tokenizer.model")
    ckpt, tok = models.locate_kaggle_download(tmp_path / "kaggle")
    assert ckpt == root / "gemma3-4b-it" and tok == root / "tokenizer.model"


@pytest.mark.slow
def test_a_model_built_from_three_threads_at_once_is_built_once(tmp_path, monkeypatch):
    """The sides of a comparison open side by side in threads, each resolving the model: the first
    builds it, the others wait for it (a cache lock), none collides in a staging folder."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("PARITYBENCH_CACHE", str(tmp_path))
    with ThreadPoolExecutor(3) as pool:
        dirs = list(pool.map(lambda _: models.ensure_tiny("tiny-gemma3"), range(3)))
    assert len(set(dirs)) == 1 and (dirs[0] / ".complete").is_file()
    assert [p.name for p in dirs[0].parent.iterdir() if ".tmp-" in p.name] == []
