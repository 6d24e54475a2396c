"""Embedded tiny Gemma 3 models, built locally from a fixed seed (no downloads).

`build("tiny-gemma3")` writes, into the cache folder (or `out`):

    paritybench-model.json, tokenizer.model, params/   gemma-format model (JAX backend)
    hf/                                                 the same weights as a Hugging Face folder
                                                        (vLLM backend, transformers)

Parameters come from the gemma library's own classes (`model.init` with seed 0). Its
initialisers leave every RMSNorm scale at 0 and every SigLIP LayerNorm/bias at 1/0; those get
seeded noise so the `1 + scale` convention and the affine terms are exercised by parity checks.
The embedding (and the image projection) is multiplied by `sharpen` so next-token
distributions are peaked rather than flat, as in trained models. Rebuilding gives identical bytes.

`ensure_gemma3n()` gives tiny-gemma3n, a Hugging Face folder only (vLLM; no JAX side), written by
`tiny_gemma3n_build.py` in the vLLM environment.
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
from . import _convert
from . import _tokenizer as _tok
from ._arch import GemmaArch, ModelCard, VisionArch

# Bump when the recipe changes, so caches built by older code are rebuilt.
RECIPE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TinyRecipe:
    arch: GemmaArch
    seed: int = 0
    vocab_pieces: int = 1024
    full_vocab: bool = False
    sharpen: float = 6.0


_TEXT = GemmaArch(
    vocab_size=1024, embed_dim=64, hidden_dim=128, num_heads=4, head_dim=32, num_kv_heads=2,
    layer_types=("sliding",) * 5 + ("full",), sliding_window=8, query_pre_attn_scalar=32,
    rope_global_scale=8.0, max_position_embeddings=4096, dtype="float32",
)
# head_dim 32: vLLM's CPU attention supports 32, 64, 80, ... (not 16). num_kv_heads != num_heads
# keeps the q_einsum + kv_einsum layout of the released 4B/12B/27B. Window 8 matters on short prompts.

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
}


def cache_root() -> Path:
    return Path(os.environ.get("PARITYBENCH_CACHE", Path.home() / ".cache" / "paritybench"))


def recipe_key(name: str) -> str:
    r = RECIPES[name]
    blob = json.dumps({"v": RECIPE_VERSION, "arch": r.arch.model_dump(mode="json"), "seed": r.seed,
                       "pieces": r.vocab_pieces, "full": r.full_vocab, "sharpen": r.sharpen,
                       "corpus": hashlib.sha256(_tok.CORPUS.read_bytes()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_dir(name: str) -> Path:
    return cache_root() / "models" / f"{name}-{recipe_key(name)}"


def check_buildable(name: str) -> None:
    if name == GEMMA3N:
        from .._errors import UnsupportedError
        from ._registry import TINY_GEMMA3N_VLLM_ONLY

        raise UnsupportedError(f"{name} has no gemma-format checkpoint: {TINY_GEMMA3N_VLLM_ONLY} "
                               "(its Hugging Face folder: backends.models.ensure_tiny_gemma3n())")
    if name not in RECIPES:
        from .._errors import InputError

        raise InputError(f"no tiny model {name!r}; tiny models: {', '.join(RECIPES)} "
                         "(real models: paritybench models list)")


def ensure(name: str) -> Path:
    """The tiny model's folder, built on first use."""
    check_buildable(name)
    d = default_dir(name)
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


def build(name: str, out: Path | None = None) -> Path:
    """Build tiny model `name` into `out` (default: the cache folder); returns the folder."""
    check_buildable(name)
    r = RECIPES[name]
    final = Path(out) if out is not None else default_dir(name)
    tmp = _ckpt.atomic_dir(final)
    spm = _tok.train_tiny(r.vocab_pieces, full=r.full_vocab)
    params = init_params(r.arch, seed=r.seed, sharpen=r.sharpen)
    card = ModelCard(name=name, arch=r.arch, source=f"paritybench tiny recipe v{RECIPE_VERSION}, seed {r.seed}")
    _ckpt.write_model_dir(tmp, card, params, spm)
    _convert.write_hf_dir(tmp / "hf", params, r.arch, tmp / _ckpt.TOKENIZER)
    (tmp / ".complete").write_text(recipe_key(name) + "\n")
    _ckpt.commit_dir(tmp, final)
    return final


# ------------------------------------------------------------------------------ tiny-gemma3n (vLLM only)

GEMMA3N = "tiny-gemma3n"
GEMMA3N_BUILDER = SCRIPTS / "tiny_gemma3n_build.py"
GEMMA3N_BUILD_TIMEOUT_S = 900.0
_BUILDER_PACKAGES = ("torch", "transformers", "timm", "sentencepiece", "safetensors")


def _env_versions(env: Path) -> list[str]:
    """The builder's packages in the vLLM environment, as their dist-info folder names (cheap: no
    interpreter started); part of the cache key, since the bytes written depend on them."""
    return sorted(p.name for sp in env.glob("lib/python*/site-packages") for p in sp.glob("*.dist-info")
                  if p.name.split("-")[0].lower() in _BUILDER_PACKAGES)


def gemma3n_key(spm: bytes, env: Path) -> str:
    """Cache key of tiny-gemma3n: the builder script, the tokenizer, the chat template it adapts
    and the versions of the packages that write the weights."""
    h = hashlib.sha256()
    for part in (GEMMA3N_BUILDER.read_bytes(), spm, _tok.CHAT_TEMPLATE.encode(), "\n".join(_env_versions(env)).encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def ensure_gemma3n() -> Path:
    """The Hugging Face folder of tiny-gemma3n, built on first use; vLLM serves it.

    tiny-gemma3n is a random-weight `Gemma3nForConditionalGeneration` (text, a timm MobileNetV5
    vision tower, a 2-layer audio conformer; 17M parameters, 65 MB) for testing image and audio
    prompts through vLLM. The gemma library (3.3) has no Gemma 3n vision or audio, so there is no
    gemma-format side: the weights are written by transformers, in the vLLM environment, by
    `tiny_gemma3n_build.py` (see there for the architecture and token layout). The tokenizer is
    tiny-gemma3's (`tokenizer.train_tiny`, trained here). Cached as

        <cache root>/models/tiny-gemma3n-<key>/   hf/ (returned), tokenizer.model (the input),
                                                  build.json (the builder's summary), .complete
    """
    import subprocess
    import time

    from .._envs import vllm_env_dir
    from .._errors import ModelError

    env = vllm_env_dir()
    python = env / "bin" / "python"
    if not python.exists():
        raise ModelError(f"building {GEMMA3N} needs the vLLM environment (torch, transformers, timm) and there is "
                         f"none at {env}: run `make env` (scripts/ensure_vllm_env.sh) or set PARITYBENCH_VLLM_ENV")
    spm = _tok.train_tiny(RECIPES["tiny-gemma3"].vocab_pieces)
    final = cache_root() / "models" / f"{GEMMA3N}-{gemma3n_key(spm, env)}"
    if (final / ".complete").is_file():
        return final / "hf"
    tmp = _ckpt.atomic_dir(final)
    (tmp / _ckpt.TOKENIZER).write_bytes(spm)
    cmd = [str(python), str(GEMMA3N_BUILDER), str(tmp / "hf"), str(tmp / _ckpt.TOKENIZER)]
    run_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=run_env, stdin=subprocess.DEVNULL,
                           timeout=GEMMA3N_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"building {GEMMA3N} took over {GEMMA3N_BUILD_TIMEOUT_S:.0f} s ({' '.join(cmd)}); "
                         "is the machine overloaded?") from None
    summary = p.stdout.strip().splitlines()[-1:] if p.returncode == 0 else []
    if p.returncode != 0 or not summary or not (tmp / "hf" / "config.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln.strip() for ln in p.stderr.replace("\r", "\n").splitlines() if ln.strip()]
        raise ModelError(f"building {GEMMA3N} failed (exit code {p.returncode}) running {GEMMA3N_BUILDER.name} with "
                         f"{python}: " + (" | ".join(lines[-3:])[-600:] or "no error output"))
    try:
        built = json.loads(summary[0])
    except ValueError:
        built = summary[0]
    info = {"build_s": round(time.perf_counter() - t0, 2), "builder": built,
            "packages": _env_versions(env)}
    (tmp / "build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (tmp / ".complete").write_text(final.name.rsplit("-", 1)[1] + "\n")
    _ckpt.commit_dir(tmp, final)
    return final / "hf"
