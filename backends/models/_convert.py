"""Weight conversion between the gemma library's params and Hugging Face Gemma 3 checkpoints.

gemma -> HF writes a complete directory that transformers and vLLM load: model.safetensors,
config.json (from the same `GemmaArch`), generation_config.json, tokenizer files with the Gemma
chat template, and processor_config.json for vision models. HF -> gemma writes a gemma-format
model directory (see `backends.checkpoint`). Both directions are pure reshapes and transposes,
so a round trip is bit-exact.

Name mapping (text; `P` = `model.` for Gemma3ForCausalLM, `model.language_model.` for
Gemma3ForConditionalGeneration):

    embedder/input_embedding          (V, D)        P embed_tokens.weight (lm_head tied)
    layer_i/attn/q_einsum/w           (N, D, H)     P layers.i.self_attn.q_proj.weight (N*H, D)
    layer_i/attn/kv_einsum/w          (2, K, D, H)  ...k_proj / v_proj (K*H, D)
    layer_i/attn/attn_vec_einsum/w    (N, H, D)     ...o_proj (D, N*H)
    layer_i/attn/_query_norm|_key_norm/scale        ...q_norm / k_norm
    layer_i/mlp/gating_einsum         (2, F, D)     ...mlp.gate_proj / up_proj (F, D)
    layer_i/mlp/linear                (F, D)        ...mlp.down_proj (D, F)
    layer_i/{pre,post}_{attention,ffw}_norm/scale   ...input_layernorm, post_attention_layernorm,
                                                    pre/post_feedforward_layernorm
    final_norm/scale                                P norm.weight
Both libraries compute RMSNorm as x * (1 + w), so norm weights copy as they are.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputError, ModelError
from . import _checkpoint as _ckpt
from . import _convert3n
from . import _tokenizer as _tok
from ._arch import BOS, END_OF_TURN, EOS, PAD, Gemma3nArch, GemmaArch, ModelCard, arch_from_hf_config

VT = "model.vision_tower.vision_model."
PROJ = "model.multi_modal_projector."
SIGLIP = "vision_encoder/siglip_encoder/"

_NORMS = {
    "pre_attention_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def _text_prefix(arch: GemmaArch) -> str:
    return "model.language_model." if arch.vision is not None else "model."


# ------------------------------------------------------------------------------ gemma -> HF


def params_to_hf(params: dict, arch: GemmaArch) -> dict[str, np.ndarray]:
    """gemma nested params -> HF state dict (numpy, same dtype; lm_head omitted: tied)."""
    flat = _ckpt.flat_tree(params)
    P = _text_prefix(arch)
    N, K, H, D = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.embed_dim
    sd: dict[str, np.ndarray] = {}
    for name, w in flat.items():
        if name.startswith("vision_encoder/") or name.startswith("embedder/mm_"):
            sd.update(_siglip_to_hf(name, w, arch))
            continue
        if name == "embedder/input_embedding":
            if arch.hf_vocab_size != w.shape[0]:  # image token appended after the vocabulary
                w = np.concatenate([w, np.zeros((arch.hf_vocab_size - w.shape[0], w.shape[1]), w.dtype)])
            sd[f"{P}embed_tokens.weight"] = w
            continue
        if name == "final_norm/scale":
            sd[f"{P}norm.weight"] = w
            continue
        layer, rest = name.split("/", 1)
        if not layer.startswith("layer_"):
            raise ModelError(f"unexpected gemma parameter {name!r}; is this a Gemma 3 checkpoint?")
        b = f"{P}layers.{int(layer[6:])}."
        if rest == "attn/q_einsum/w":
            sd[b + "self_attn.q_proj.weight"] = w.transpose(0, 2, 1).reshape(N * H, D)
        elif rest == "attn/kv_einsum/w":
            sd[b + "self_attn.k_proj.weight"] = w[0].transpose(0, 2, 1).reshape(K * H, D)
            sd[b + "self_attn.v_proj.weight"] = w[1].transpose(0, 2, 1).reshape(K * H, D)
        elif rest == "attn/qkv_einsum/w":
            for j, n in enumerate("qkv"):
                sd[b + f"self_attn.{n}_proj.weight"] = w[j].transpose(0, 2, 1).reshape(N * H, D)
        elif rest == "attn/attn_vec_einsum/w":
            sd[b + "self_attn.o_proj.weight"] = w.transpose(2, 0, 1).reshape(D, N * H)
        elif rest == "attn/_query_norm/scale":
            sd[b + "self_attn.q_norm.weight"] = w
        elif rest == "attn/_key_norm/scale":
            sd[b + "self_attn.k_norm.weight"] = w
        elif rest == "mlp/gating_einsum":
            sd[b + "mlp.gate_proj.weight"] = w[0]
            sd[b + "mlp.up_proj.weight"] = w[1]
        elif rest == "mlp/linear":
            sd[b + "mlp.down_proj.weight"] = w.T
        elif rest.endswith("/scale") and rest[:-6] in _NORMS:
            sd[b + _NORMS[rest[:-6]] + ".weight"] = w
        else:
            raise ModelError(f"unexpected gemma parameter {name!r}; is this a Gemma 3 checkpoint?")
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


def _siglip_to_hf(name: str, w: np.ndarray, arch: GemmaArch) -> dict[str, np.ndarray]:
    assert arch.vision is not None
    width = arch.vision.width
    if name == "embedder/mm_input_projection/w":
        return {PROJ + "mm_input_projection_weight": w}
    if name == "embedder/mm_soft_embedding_norm/scale":
        return {PROJ + "mm_soft_emb_norm.weight": w}
    if not name.startswith(SIGLIP):
        raise ModelError(f"unexpected vision parameter {name!r}")
    r = name[len(SIGLIP):]
    if r == "pos_embedding":
        return {VT + "embeddings.position_embedding.weight": w.reshape(-1, width)}
    if r == "embedding/kernel":  # (p, p, C, W) -> (W, C, p, p)
        return {VT + "embeddings.patch_embedding.weight": w.transpose(3, 2, 0, 1)}
    if r == "embedding/bias":
        return {VT + "embeddings.patch_embedding.bias": w}
    if r.startswith("Transformer/encoder_norm/"):
        return {VT + "post_layernorm." + ("weight" if r.endswith("scale") else "bias"): w}
    if r.startswith("Transformer/encoderblock_"):
        i, sub = r[len("Transformer/encoderblock_"):].split("/", 1)
        b = f"{VT}encoder.layers.{int(i)}."
        leaf = sub.rsplit("/", 1)[1]
        if sub.startswith("LayerNorm_"):
            ln = "layer_norm1" if sub.startswith("LayerNorm_0") else "layer_norm2"
            return {b + f"{ln}." + ("weight" if leaf == "scale" else "bias"): w}
        if sub.startswith("MlpBlock_0/Dense_"):
            fc = "fc1" if "Dense_0" in sub else "fc2"
            return {b + f"mlp.{fc}." + ("weight" if leaf == "kernel" else "bias"): w.T if leaf == "kernel" else w}
        if sub.startswith("MultiHeadDotProductAttention_0/"):
            part = sub.split("/")[1]
            proj = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}[part]
            if leaf == "kernel":  # q/k/v: (W, heads, hd) -> (heads*hd, W); out: (heads, hd, W) -> (W, heads*hd)
                flat2 = w.reshape(w.shape[0], -1) if part != "out" else w.reshape(-1, w.shape[-1])
                return {b + f"self_attn.{proj}.weight": flat2.T}
            return {b + f"self_attn.{proj}.bias": w.reshape(-1)}
    raise ModelError(f"unexpected vision parameter {name!r}")


# ------------------------------------------------------------------------------ HF -> gemma


def hf_to_params(sd: dict[str, np.ndarray], arch: GemmaArch, *, like: dict | None = None) -> dict:
    """HF state dict -> gemma nested params. `like` (abstract params) gives vision shapes."""
    P = _text_prefix(arch)
    N, K, H, D = arch.num_heads, arch.num_kv_heads, arch.head_dim, arch.embed_dim
    flat: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in sd:
            raise ModelError(f"Hugging Face checkpoint lacks tensor {key!r}; is it a Gemma 3 checkpoint of this config?")
        used.add(key)
        return sd[key]

    emb = take(f"{P}embed_tokens.weight")
    flat["embedder/input_embedding"] = emb[: arch.vocab_size]
    flat["final_norm/scale"] = take(f"{P}norm.weight")
    for i in range(arch.num_layers):
        b, g = f"{P}layers.{i}.", f"layer_{i}/"
        q = take(b + "self_attn.q_proj.weight").reshape(N, H, D).transpose(0, 2, 1)
        k = take(b + "self_attn.k_proj.weight").reshape(K, H, D).transpose(0, 2, 1)
        v = take(b + "self_attn.v_proj.weight").reshape(K, H, D).transpose(0, 2, 1)
        if N == K:
            flat[g + "attn/qkv_einsum/w"] = np.stack([q, k, v])
        else:
            flat[g + "attn/q_einsum/w"] = q
            flat[g + "attn/kv_einsum/w"] = np.stack([k, v])
        flat[g + "attn/attn_vec_einsum/w"] = take(b + "self_attn.o_proj.weight").reshape(D, N, H).transpose(1, 2, 0)
        flat[g + "attn/_query_norm/scale"] = take(b + "self_attn.q_norm.weight")
        flat[g + "attn/_key_norm/scale"] = take(b + "self_attn.k_norm.weight")
        flat[g + "mlp/gating_einsum"] = np.stack([take(b + "mlp.gate_proj.weight"), take(b + "mlp.up_proj.weight")])
        flat[g + "mlp/linear"] = take(b + "mlp.down_proj.weight").T
        for gn, hn in _NORMS.items():
            flat[g + gn + "/scale"] = take(b + hn + ".weight")
    if arch.vision is not None:
        if like is None:
            raise ValueError("vision conversion needs the abstract gemma params (like=)")
        for name, spec in _ckpt.flat_tree(like, leaf=lambda v: tuple(v.shape)).items():
            if name.startswith("vision_encoder/") or name.startswith("embedder/mm_"):
                # Invert by mapping a zero tensor of the gemma shape to find the HF key, then undo.
                probe = np.arange(int(np.prod(spec))).reshape(spec)
                ((hf_key, hf_probe),) = _siglip_to_hf(name, probe, arch).items()
                hw = take(hf_key)
                order = hf_probe.reshape(-1)
                out = np.empty(int(np.prod(spec)), dtype=hw.dtype)
                out[order] = hw.reshape(-1)
                flat[name] = out.reshape(spec)
    extra = sorted(k for k in sd if k not in used and k != "lm_head.weight")
    if extra:
        raise ModelError(f"Hugging Face checkpoint has tensors the gemma model does not: {extra[:3]}...")
    return _ckpt.nested_tree(flat)


# ------------------------------------------------------------------------------ directories


def write_hf_dir(out: Path, params: dict, arch: GemmaArch, tokenizer_model: Path, *, chat: bool = True) -> Path:
    """Write a complete Hugging Face directory for `params` (see module docstring); `chat=False`: no
    chat template (a base model)."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = params_to_hf(params, arch)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})  # bf16 via ml_dtypes
    _write_json(out / "config.json", {**arch.to_hf_config(), "transformers_version": _transformers_version()})
    _write_json(out / "generation_config.json", {
        "bos_token_id": BOS, "eos_token_id": [EOS, END_OF_TURN], "pad_token_id": PAD,
        "transformers_version": _transformers_version(),
    })
    _tok.write_hf_tokenizer(Path(tokenizer_model), out, arch, chat=chat)
    if arch.vision is not None:
        v = arch.vision
        _write_json(out / "processor_config.json", {
            "processor_class": "Gemma3Processor",
            "image_seq_length": v.mm_tokens_per_image,
            "image_processor": {
                "image_processor_type": "Gemma3ImageProcessor",
                "do_convert_rgb": True, "do_normalize": True, "do_pan_and_scan": False,
                "do_rescale": True, "do_resize": True, "resample": 2,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                "rescale_factor": 1 / 255, "size": {"height": v.image_size, "width": v.image_size},
            },
        })
    return out


def hf_dir_tensors(src: Path | str) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face folder's *.safetensors, as stored (bfloat16 as ml_dtypes')."""
    from safetensors.numpy import load_file

    files = sorted(Path(src).glob("*.safetensors"))
    if not files:
        raise InputError(f"{src} has no *.safetensors weights")
    sd: dict[str, np.ndarray] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return sd


def hf_state_dict(params: dict, arch: GemmaArch) -> dict[str, np.ndarray]:
    """gemma params (Gemma 3 or 3n) under their Hugging Face names, as the converter writes them."""
    if isinstance(arch, Gemma3nArch):
        return _convert3n.params_to_hf(params, arch)[0]
    return params_to_hf(params, arch)


def read_hf_dir(src: Path) -> tuple[GemmaArch, dict[str, np.ndarray]]:
    src = Path(src)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{src} has no config.json: not a Hugging Face model folder")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{cfg_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    arch = arch_from_hf_config(cfg, source=str(cfg_path))
    sd = hf_dir_tensors(src)
    tok = src / "tokenizer.model"
    if arch.vision is not None and arch.image_token_id is not None and tok.is_file():
        if _tok.piece_id(tok, _tok.IMAGE_SOFT_TOKEN) != arch.image_token_id:
            raise ModelError(f"{tok}: image token {arch.image_token_id} of config.json is not <image_soft_token>")
    return arch, sd


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A converted folder, and what the conversion left out or changed (one line each)."""

    path: Path
    notes: list[str] = dataclasses.field(default_factory=list)


def gemma_dir_to_hf(src: Path, dst: Path, *, towers: Path | None = None) -> Conversion:
    """Write `src` (a gemma-format folder) as a Hugging Face folder. Gemma 3n needs `towers`: a
    Hugging Face Gemma 3n folder whose vision and audio towers (and processor files) to take."""
    card = _ckpt.read_card(src)
    params = _ckpt.load_params(Path(src) / _ckpt.PARAMS)
    if isinstance(card.arch, Gemma3nArch):
        return Conversion(Path(dst), _convert3n.write_hf_dir(dst, params, card.arch, towers))
    return Conversion(write_hf_dir(dst, params, card.arch, Path(src) / _ckpt.TOKENIZER, chat=card.chat))


def hf_dir_to_gemma(src: Path, dst: Path, *, name: str | None = None) -> Conversion:
    """Write `src` (a Hugging Face folder) as a gemma-format folder."""
    import jax

    src = Path(src)
    arch, sd = read_hf_dir(src)
    tok = src / "tokenizer.model"
    if not tok.is_file():
        raise InputError(f"{src} has no tokenizer.model (the SentencePiece model the gemma library needs)")
    if isinstance(arch, Gemma3nArch):
        params, arch, notes = _convert3n.hf_to_params(sd, arch)
        card = ModelCard(name=name or src.name, arch=arch, source=f"converted from Hugging Face folder {src}")
        return Conversion(_ckpt.write_model_dir(Path(dst), card, params, tok), notes)
    like = None
    if arch.vision is not None:
        from ._registry import gemma_model_class

        model = gemma_model_class(arch)()
        like = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens=np.zeros((1, 4), np.int32)))["params"]
    params = hf_to_params(sd, arch, like=like)
    card = ModelCard(name=name or src.name, arch=arch, source=f"converted from Hugging Face folder {src}")
    return Conversion(_ckpt.write_model_dir(Path(dst), card, params, tok))


def gguf_to_model_dir(src: Path, dst: Path, *, name: str | None = None, expect_sha256: str | None = None) -> Conversion:
    """Write a Gemma 3 text GGUF (`src`) as a float32 gemma-format folder `dst` (card, params,
    tokenizer.model rebuilt from the GGUF's vocabulary) holding its Hugging Face twin in `dst/hf`
    (safetensors, config.json, tokenizer files, generation config; the GGUF's chat template, none
    for a base model). The weights are dequantized once and written bit-identically to both."""
    from . import _gguf

    g = _gguf.read_gguf(src, expect_sha256=expect_sha256)
    if not g.tokenizer.add_bos:
        raise ModelError(f"{src}: tokenizer.ggml.add_bos_token is false, but Gemma 3 needs BOS first; "
                         "fix the file's metadata (gguf_set_metadata.py) and import it again")
    arch = arch_from_hf_config(g.config, source=str(src))
    params = hf_to_params(g.tensors, arch)
    notes = []
    if g.chat_template is not None and g.chat_template != _tok.CHAT_TEMPLATE:
        notes.append("the file's chat template is not Gemma 3's; Gemma 3's is written (the JAX side renders it)")
    quantized = sorted({t for t in g.tensor_types.values() if t not in ("F32",)})
    if quantized:
        notes.append(f"dequantized to float32 from {', '.join(quantized)}")
    card = ModelCard(name=name or Path(src).stem, arch=arch, chat=g.chat_template is not None,
                     source=f"imported from GGUF {Path(src).name} (sha256 {g.sha256})")
    dst = Path(dst)
    tok = _gguf.sentencepiece_model(g.tokenizer)
    _ckpt.write_model_dir(dst, card, params, tok)
    write_hf_dir(dst / "hf", params, arch, dst / _ckpt.TOKENIZER, chat=card.chat)
    return Conversion(dst, notes)


def model_dir_to_gguf(model_dir: Path | str, out: Path | str, *, dtype: str = "F32") -> Path:
    """Write a gemma-format Gemma 3 text folder as a GGUF file (`_gguf.write_gguf`: llama.cpp's
    conventions); `dtype`: F32, F16, BF16 or Q8_0 for the matrices."""
    from . import _gguf

    model_dir = Path(model_dir)
    card = _ckpt.read_card(model_dir)
    arch = card.arch
    if isinstance(arch, Gemma3nArch) or arch.vision is not None:
        raise ModelError(f"{model_dir}: only Gemma 3 text models are written as GGUF (this one is "
                         f"{'Gemma 3n' if isinstance(arch, Gemma3nArch) else 'a vision model'})")
    if dtype not in _gguf.FILE_TYPES:  # before the weights load
        raise InputError(f"GGUF type {dtype!r}: choose one of {', '.join(_gguf.FILE_TYPES)}")
    tensors = params_to_hf(_ckpt.load_params(model_dir / _ckpt.PARAMS), arch)
    return _gguf.write_gguf(out, name=card.name, arch=arch, tensors=tensors,
                            tokenizer=(model_dir / _ckpt.TOKENIZER).read_bytes(), dtype=dtype)


def _transformers_version() -> str:
    try:
        import transformers

        return transformers.__version__
    except Exception:  # pragma: no cover
        return "unknown"


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
