"""Model plumbing: the registry, one resolver, the architecture description, the tokenizer, gemma
checkpoints, gemma <-> Hugging Face conversion and the embedded tiny models.

    from backends import models
    m = models.resolve("tiny-gemma3", want="hf")     # ResolvedModel(gemma_dir=..., hf_dir=...)
    models.ensure_tiny("tiny-gemma3-vision")          # built on first use, cached
    models.gemma_dir_to_hf(src, dst)                  # the converter behind `paritybench convert`

Engines never read a model path themselves: they call `resolve` and load what it returns.
"""

from ._arch import (
    BOS,
    CONFIG_FIELDS,
    END_OF_IMAGE,
    END_OF_TURN,
    EOS,
    HF_GEMMA3N_SOFTCAP,
    KV_RULES,
    PAD,
    SHAPE_FIELDS,
    START_OF_IMAGE,
    START_OF_TURN,
    Gemma3nArch,
    GemmaArch,
    ModelCard,
    VisionArch,
    arch_from_hf_config,
    conventional,
    engine_settings,
    kv_sharing_targets,
)
from ._checkpoint import (
    CARD,
    PARAMS,
    TOKENIZER,
    atomic_dir,
    chat_template_sha256,
    commit_dir,
    dir_fingerprint,
    file_sha256,
    hf_end_ids,
    hf_folder_settings,
    load_params,
    read_card,
    save_params,
    tree_digest,
    write_model_dir,
)
from ._convert import (
    Conversion,
    gemma_dir_to_hf,
    gguf_to_model_dir,
    hf_dir_tensors,
    hf_dir_to_gemma,
    hf_state_dict,
    hf_to_params,
    model_dir_to_gguf,
    params_to_hf,
)
from ._gguf import GgufHeader, read_gguf, read_gguf_header
from ._hfconfig import SETTING_OF_KEY, config_diff, consumed_config
from ._quantize import SCHEMES, quantize_hf_dir
from ._registry import (
    GEMMA3N_TEXT_ONLY,
    NO_AUDIO_GEMMA3,
    REGISTRY,
    ModelSpec,
    abstract_params,
    download_kaggle,
    find_spec,
    gemma_model_class,
    get_spec,
    is_path,
    locate_kaggle_download,
    looks_like_hf_id,
    random_twin,
    real_model,
)
from ._resolve import GGUF_TYPES, ResolvedModel, converted, gguf_for, resolve
from ._tiny import GEMMA3N as TINY_GEMMA3N
from ._tiny import RECIPES as TINY_RECIPES
from ._tiny import build as build_tiny
from ._tiny import cache_root
from ._tiny import ensure as ensure_tiny
from ._tiny import init_params as random_params
from ._tokenizer import (
    CHAT_TEMPLATE,
    CORPUS,
    FULL_VOCAB,
    IMAGE_SOFT_TOKEN,
    gemma3n_tokenizer,
    render_chat,
    render_prompt,
)
from ._tokenizer import train_tiny as train_tiny_tokenizer

__all__ = [
    "SETTING_OF_KEY", "read_gguf", "hf_dir_tensors", "hf_state_dict", "conventional", "config_diff", "consumed_config",
    "CONFIG_FIELDS", "SHAPE_FIELDS", "random_params", "file_sha256", "hf_end_ids", "hf_folder_settings", "SCHEMES", "quantize_hf_dir", "HF_GEMMA3N_SOFTCAP", "KV_RULES", "Conversion", "Gemma3nArch", "arch_from_hf_config", "engine_settings", "gemma3n_tokenizer",
    "kv_sharing_targets", "BOS", "CARD", "CHAT_TEMPLATE", "CORPUS", "END_OF_IMAGE", "END_OF_TURN", "EOS", "FULL_VOCAB",
    "GEMMA3N_TEXT_ONLY", "IMAGE_SOFT_TOKEN", "NO_AUDIO_GEMMA3", "PAD", "PARAMS", "REGISTRY", "START_OF_IMAGE",
    "START_OF_TURN", "TINY_GEMMA3N", "TINY_RECIPES", "TOKENIZER", "GemmaArch",
    "ModelCard", "ModelSpec", "ResolvedModel", "VisionArch", "abstract_params", "atomic_dir", "build_tiny", "cache_root",
    "chat_template_sha256", "commit_dir", "converted", "dir_fingerprint", "download_kaggle", "ensure_tiny", "find_spec",
    "GGUF_TYPES", "GgufHeader", "read_gguf_header", "gemma_dir_to_hf", "gguf_for", "gemma_model_class", "gguf_to_model_dir", "model_dir_to_gguf", "get_spec", "hf_dir_to_gemma", "hf_to_params", "is_path",
    "load_params", "locate_kaggle_download", "looks_like_hf_id", "params_to_hf", "random_twin", "read_card", "real_model",
    "render_chat", "render_prompt", "resolve", "save_params", "train_tiny_tokenizer", "tree_digest", "write_model_dir",
]
