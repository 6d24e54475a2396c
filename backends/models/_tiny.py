"""Models built locally from a fixed seed (no downloads): the embedded tiny Gemma 3 and Gemma 3n
models, and real Gemma 3 shapes (270M, 1B) with random weights.

`build("tiny-gemma3")` writes, into the cache folder (or `out`):

    paritybench-model.json, tokenizer.model, params/   gemma-format model (JAX backend)
    hf/                                                 the same weights as a Hugging Face folder
                                                        (vLLM backend, transformers)

Parameters come from the gemma library's own classes (`model.init` with seed 0). Its
initialisers leave every RMSNorm scale at 0 and every SigLIP LayerNorm/bias at 1/0; those get
seeded noise so the `1 + scale` convention and the affine terms are exercised by parity checks.
The embedding (and the image projection) is multiplied by `sharpen` so next-token
distributions are peaked rather than flat, as in trained models. Rebuilding gives identical bytes.

tiny-gemma3n is built the same way from ONE set of text weights (the gemma library's Gemma 3n,
seeded noise as in Google's probe of it); its Hugging Face folder also has a MobileNetV5 vision
tower and an audio conformer for vLLM, written by `vllm_env/tiny_gemma3n_build.py` in the vLLM
environment (they need torch and timm) and joined to the converted text weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from .._envs import SCRIPTS
from . import _checkpoint as _ckpt
from . import _convert, _convert3n
from . import _tokenizer as _tok
from ._arch import Gemma3nArch, GemmaArch, ModelCard, VisionArch

# Bump when the recipe changes, so caches built by older code are rebuilt.
RECIPE_VERSION = 1
GEMMA3N = "tiny-gemma3n"


@dataclasses.dataclass(frozen=True)
class TinyRecipe:
    """arch: the architecture. gemma_class: the gemma library class whose configuration `arch`
    copies (a real-shape model; `tests/test_models.py` checks they agree)."""

    arch: GemmaArch
    seed: int = 0
    vocab_pieces: int = 1024
    full_vocab: bool = False
    sharpen: float = 6.0
    gemma_class: str | None = None


_TEXT = GemmaArch(
    vocab_size=1024, embed_dim=64, hidden_dim=128, num_heads=4, head_dim=32, num_kv_heads=2,
    layer_types=("sliding",) * 5 + ("full",), sliding_window=8, query_pre_attn_scalar=32,
    rope_global_scale=8.0, max_position_embeddings=4096, dtype="float32",
)
# head_dim 32: vLLM's CPU attention supports 32, 64, 80, ... (not 16). num_kv_heads != num_heads
# keeps the q_einsum + kv_einsum layout of the released 4B/12B/27B. Window 8 matters on short prompts.

_REAL_SHAPE = GemmaArch(
    vocab_size=_tok.FULL_VOCAB, embed_dim=0, hidden_dim=0, num_heads=4, head_dim=256, num_kv_heads=1,
    layer_types=("full",), sliding_window=512, query_pre_attn_scalar=256, max_position_embeddings=4096,
    dtype="float32",
)

RECIPES: dict[str, TinyRecipe] = {
    "tiny-gemma3": TinyRecipe(arch=_TEXT),
    "tiny-gemma3-vision": TinyRecipe(
        arch=_TEXT.model_copy(update=dict(
            vocab_size=_tok.FULL_VOCAB, sliding_window=32, image_token_id=_tok.FULL_VOCAB - 1,
            vision=VisionArch(image_size=64, patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=128,
                              mm_tokens_per_image=16),
        )),
        full_vocab=True,
    ),
    # Real shapes with seeded random weights: the gemma library's Gemma3_270M and Gemma3_1B
    # configurations (head_dim 256, one KV head, window 512, 5 sliding : 1 full, the 262144-piece
    # vocabulary), in float32. max_position_embeddings is 4096 (the releases say 32768): a managed
    # vLLM server sizes its longest sequence by it, and a whole 32768-token sequence needs more CPU KV
    # cache than a test server reserves; RoPE without scaling does not depend on it.
    "random-gemma-3-270m": TinyRecipe(arch=_REAL_SHAPE.model_copy(update=dict(
        embed_dim=640, hidden_dim=2048, layer_types=(("sliding",) * 5 + ("full",)) * 3)),
        full_vocab=True, gemma_class="Gemma3_270M"),
    "random-gemma-3-1b": TinyRecipe(arch=_REAL_SHAPE.model_copy(update=dict(
        embed_dim=1152, hidden_dim=6912, layer_types=((("sliding",) * 5 + ("full",)) * 5)[:26])),
        full_vocab=True, gemma_class="Gemma3_1B"),
    # Every Gemma 3n feature on: AltUp, LAuReL, per-layer inputs, activation sparsity, soft-cap,
    # a window of 8, KV sharing. Layers 3-5 share KV caches; "sliding, full" as the last unshared
    # layers keeps gemma's/vLLM's fixed offsets and HF's same-type rule on the same targets
    # (3, 4 -> 1; 5 -> 2). Vocabulary: 1024 text pieces + 256 vision/audio ids, the same rows on
    # both sides (so no vocabulary-padding difference on the clean model).
    GEMMA3N: TinyRecipe(arch=Gemma3nArch(
        vocab_size=1280, text_vocab_size=1024, padded_vocab_size=1280, embed_dim=64, hidden_dim=128,
        num_heads=4, head_dim=32, num_kv_heads=2, layer_types=("sliding", "sliding", "full") * 2,
        sliding_window=8, final_logit_softcap=30.0, max_position_embeddings=4096, dtype="float32",
        per_layer_input_dim=16, laurel_rank=8, activation_sparsity=(0.95, 0.95, 0.0, 0.0, 0.0, 0.0),
        num_kv_shared_layers=3,
    )),
}


def cache_root() -> Path:
    return Path(os.environ.get("PARITYBENCH_CACHE", Path.home() / ".cache" / "paritybench"))


def recipe_key(name: str) -> str:
    """Cache key of a tiny model: its recipe and tokenizer corpus; for Gemma 3n also the tower
    builder script, the chat template it adapts and the versions of the packages that write the towers."""
    r = RECIPES[name]
    parts = {"v": RECIPE_VERSION, "arch": r.arch.model_dump(mode="json"), "seed": r.seed,
             "pieces": r.vocab_pieces, "full": r.full_vocab, "sharpen": r.sharpen,
             "corpus": hashlib.sha256(_tok.CORPUS.read_bytes()).hexdigest()}
    if r.gemma_class:
        parts["init"] = ["real-shape leafwise numpy", r.gemma_class, POST_NORM_SHIFT]
    if isinstance(r.arch, Gemma3nArch):
        from .._envs import vllm_env_dir

        parts["towers"] = [hashlib.sha256(GEMMA3N_BUILDER.read_bytes()).hexdigest(),
                           hashlib.sha256(_tok.CHAT_TEMPLATE.encode()).hexdigest(), _env_versions(vllm_env_dir())]
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_dir(name: str) -> Path:
    return cache_root() / "models" / f"{name}-{recipe_key(name)}"


def check_buildable(name: str) -> None:
    if name not in RECIPES:
        from .._errors import InputError

        raise InputError(f"no model recipe {name!r}; models built locally: {', '.join(RECIPES)} "
                         "(real models: paritybench models list)")


def ensure(name: str) -> Path:
    """The tiny model's folder, built on first use."""
    check_buildable(name)
    d = default_dir(name)
    if not (d / ".complete").is_file():
        with _ckpt.build_lock(d):  # the sides of a comparison open side by side, in threads
            if not (d / ".complete").is_file():
                build(name, d)
    return d


def init_params(arch: GemmaArch, *, seed: int, sharpen: float) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ._registry import gemma_model_class

    model = gemma_model_class(arch)(dtype=jnp.float32 if arch.dtype == "float32" else jnp.bfloat16)
    kw = {}
    if arch.vision is not None:
        s = arch.vision.image_size
        kw["images"] = jnp.zeros((1, 1, s, s, 3), jnp.uint8)
        tokens = jnp.asarray([[2, 255999, 3]], jnp.int32)
    else:
        tokens = jnp.zeros((1, 4), jnp.int32)
    params = model.init(jax.random.key(seed), tokens=tokens, **kw)["params"]
    key = jax.random.key(seed + 1)
    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for i, (path, x) in enumerate(flat):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        k = jax.random.fold_in(key, i)
        if name.endswith("scale") and "siglip_encoder" not in name:  # Gemma RMSNorm: 1 + scale
            x = jax.random.normal(k, x.shape, x.dtype) * 0.1
        elif "siglip_encoder" in name and (name.endswith("scale") or name.endswith("bias")):
            x = x + 0.1 * jax.random.normal(k, x.shape, x.dtype)
        if name in ("embedder/input_embedding", "embedder/mm_input_projection/w"):
            x = x * sharpen
        out.append(np.asarray(x))
    return jax.tree_util.tree_unflatten(tree, out)


# Post-attention and post-FFW norm scales of the real shapes are 1 + (2 + 0.1 N): with scales near 1,
# the input embedding outweighs the 18-26 normalised block outputs in the residual stream and the
# network predicts its input token (measured on random-gemma-3-270m, 256 random tokens: the argmax
# was the input token at 93% of positions; at 1 + 2: none).
POST_NORM_SHIFT = 2.0


def init_real_shape_params(arch: GemmaArch, *, seed: int, sharpen: float) -> dict:
    """Seeded random weights for a real-size architecture, drawn leaf by leaf with numpy (the
    gemma library's `model.init` peaks at six times the model's size: 6.4 GiB for the 270M).
    Shapes come from the library's own model (`jax.eval_shape`, no memory). Matrices N(0, 0.02)
    (Gemma 3's `initializer_range`), RMSNorm scales 0.1 N (so `1 + scale` is exercised; the post
    norms shifted by POST_NORM_SHIFT), the embedding 0.01 N times `sharpen` as the tiny models'
    (logits of about 1.5 standard deviation).
    Each leaf has its own generator seeded by (seed, leaf index): reproducible bytes."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ._registry import gemma_model_class

    model = gemma_model_class(arch)(dtype=jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(seed), tokens=jnp.zeros((1, 4), jnp.int32)))["params"]
    flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
    out = []
    for i, (path, leaf) in enumerate(flat):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        rng = np.random.default_rng([seed, i])
        std = 0.1 if name.endswith("scale") else 0.01 * sharpen if name == "embedder/input_embedding" else 0.02
        w = rng.standard_normal(leaf.shape, dtype=np.float32)
        w *= np.float32(std)
        if name.endswith(("post_attention_norm/scale", "post_ffw_norm/scale")):
            w += np.float32(POST_NORM_SHIFT)
        out.append(w)
    return jax.tree_util.tree_unflatten(tree, out)


def init_gemma3n_params(arch: Gemma3nArch, *, seed: int) -> dict:
    """The gemma library's Gemma 3n init, then seeded noise at realistic scales on every tensor
    (its init leaves norm scales and AltUp coefficients at constants, which would hide a mapping
    error): norm scales and `correct_output_scale` 1 + 0.3 N, AltUp coefficients 0.2-0.3 N,
    embeddings N(0, 1) and 0.5 N, matrices 0.15 N. The output rows of the vision/audio ids are small
    (0.01 N: logits near 0, never the greedy choice), because engines embed those ids differently
    when fed back (gemma from this table, Hugging Face and vLLM from the towers' embedders). Their
    per-layer rows copy row 0, as Hugging Face reads them, so both formats hold the same function."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ._registry import gemma_model_class

    model = gemma_model_class(arch)(dtype=jnp.float32)
    params = model.init(jax.random.key(seed), tokens=jnp.full((1, 8), 5, jnp.int32))["params"]
    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    std = {"input_embedding": 1.0, "per_layer_input_embedding": 0.5, "prediction_coefs": 0.2, "correction_coefs": 0.3}
    out = []
    for path, x in flat:
        leaf = str(getattr(path[-1], "key", path[-1]))
        noise = rng.standard_normal(x.shape)
        w = 1.0 + 0.3 * noise if leaf in ("scale", "correct_output_scale") else std.get(leaf, 0.15) * noise
        if leaf == "per_layer_input_embedding":
            w[arch.text_vocab_size:] = w[:1]
        if leaf == "input_embedding":
            w[arch.text_vocab_size:] *= 0.01
        out.append(w.astype(np.float32))
    return jax.tree_util.tree_unflatten(tree, out)


def build(name: str, out: Path | None = None) -> Path:
    """Build tiny model `name` into `out` (default: the cache folder); returns the folder."""
    check_buildable(name)
    r = RECIPES[name]
    final = Path(out) if out is not None else default_dir(name)
    tmp = _ckpt.atomic_dir(final)
    try:
        shape = f" (the shape of gm.nn.{r.gemma_class}, random weights)" if r.gemma_class else ""
        card = ModelCard(name=name, arch=r.arch, source=f"paritybench tiny recipe v{RECIPE_VERSION}{shape}, seed {r.seed}")
        if isinstance(r.arch, Gemma3nArch):
            spm, v = _tok.gemma3n_tokenizer(_tok.train_tiny(r.vocab_pieces))
            assert v == r.arch.text_vocab_size, (v, r.arch.text_vocab_size)
            params = init_gemma3n_params(r.arch, seed=r.seed)
            _ckpt.write_model_dir(tmp, card, params, spm)
            towers = _gemma3n_towers(tmp / _ckpt.TOKENIZER, tmp / "towers")
            _convert3n.write_hf_dir(tmp / "hf", params, r.arch, towers)
            shutil.rmtree(towers)
        else:
            spm = _tok.train_tiny(r.vocab_pieces, full=r.full_vocab)
            init = init_real_shape_params if r.gemma_class else init_params
            params = init(r.arch, seed=r.seed, sharpen=r.sharpen)
            _ckpt.write_model_dir(tmp, card, params, spm)
            _convert.write_hf_dir(tmp / "hf", params, r.arch, tmp / _ckpt.TOKENIZER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".complete").write_text(recipe_key(name) + "\n")
    _ckpt.commit_dir(tmp, final)
    return final


# ------------------------------------------------------------------------------ tiny-gemma3n's towers

GEMMA3N_BUILDER = SCRIPTS / "tiny_gemma3n_build.py"
GEMMA3N_BUILD_TIMEOUT_S = 900.0
_BUILDER_PACKAGES = ("torch", "transformers", "timm", "sentencepiece", "safetensors")


def _env_versions(env: Path) -> list[str]:
    """The builder's packages in the vLLM environment, as their dist-info folder names (cheap: no
    interpreter started); part of the cache key, since the bytes written depend on them."""
    return sorted(p.name for sp in env.glob("lib/python*/site-packages") for p in sp.glob("*.dist-info")
                  if p.name.split("-")[0].lower() in _BUILDER_PACKAGES)


def _gemma3n_towers(spm: Path, out: Path) -> Path:
    """Random vision and audio towers (and processor, tokenizer files) for the Gemma 3n tokenizer
    `spm`, written into `out` by the builder script in the vLLM environment."""
    import subprocess

    from .._envs import vllm_env_dir
    from .._errors import ModelError

    env = vllm_env_dir()
    python = env / "bin" / "python"
    if not python.exists():
        raise ModelError(f"building {GEMMA3N} needs the vLLM environment (torch, transformers, timm) for its vision "
                         f"and audio towers and there is none at {env}: run `make env` or set PARITYBENCH_VLLM_ENV")
    cmd = [str(python), str(GEMMA3N_BUILDER), str(out), str(spm)]
    run_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=run_env, stdin=subprocess.DEVNULL,
                           timeout=GEMMA3N_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"building {GEMMA3N}'s towers took over {GEMMA3N_BUILD_TIMEOUT_S:.0f} s ({' '.join(cmd)}); "
                         "is the machine overloaded?") from None
    if p.returncode != 0 or not (out / "config.json").is_file():
        lines = [ln.strip() for ln in p.stderr.replace("\r", "\n").splitlines() if ln.strip()]
        raise ModelError(f"building {GEMMA3N}'s towers failed (exit code {p.returncode}) running "
                         f"{GEMMA3N_BUILDER.name} with {python}: " + (" | ".join(lines[-3:])[-600:] or "no error output"))
    return out
