"""Gemma 3n text weights between the gemma library and a Hugging Face `Gemma3nForConditionalGeneration`.

gemma 3.3's Gemma 3n is a text model; Hugging Face's (and so vLLM's) also has a MobileNetV5
vision tower and an audio conformer. gemma -> HF writes a complete folder: the text model from
the gemma params, the towers (tensors, their config, processor and tokenizer files) from a given
Hugging Face Gemma 3n folder. HF -> gemma keeps the text model and says what it left out.

Name mapping (`T` = `model.language_model.`; Gemma 3n norms have no `1 + scale`: they copy):

    embedder/input_embedding (V, D)                T embed_tokens.weight (V', D), lm_head tied
    embedder/per_layer_input_embedding (V, L, P)   T embed_tokens_per_layer.weight (Vt, L*P)
    embedder/per_layer_input_projection/w (D,L,P)  T per_layer_model_projection.weight (L*P, D)
    embedder/per_layer_projection_norm/scale       T per_layer_projection_norm.weight
    altup_projection_i, altup_unembed_projection_i T altup_projections.i, altup_unembed_projections.i (transposed)
    final_norm/scale                               T norm.weight
    layer_i/attn/q_einsum/w (N, D, H)              T layers.i.self_attn.q_proj.weight (N*H, D)
    layer_i/attn/kv_einsum/w (2, K, D, H)          ...k_proj / v_proj (K*H, D); none in KV-shared layers
    layer_i/attn/attn_vec_einsum/w (N, H, D)       ...o_proj (D, N*H)
    layer_i/attn/query_norm, key_norm              ...q_norm, k_norm
    layer_i/mlp/gating_einsum (2, F, D)            ...mlp.gate_proj, up_proj
    layer_i/mlp/linear (F, D)                      ...mlp.down_proj (D, F)
    layer_i/{pre,post}_{attention,ffw}_norm        ...input_layernorm, post_attention_layernorm, ...
    layer_i/laurel/linear_left|right, post_laurel_norm          ...laurel.* (transposed), laurel.post_laurel_norm
    layer_i/altup/modality_router/w, router_norm_layer          ...altup.modality_router (transposed), router_norm
    layer_i/altup/prediction_coefs (4, 4, 4)       ...altup.prediction_coefs.weight (16, 4)
    layer_i/altup/correction_coefs (4, 4), correct_output_scale ...altup.correction_coefs (transposed), ...
    layer_i/per_layer_mapping/*                    ...per_layer_input_gate, per_layer_projection, post_per_layer_input_norm

Vocabulary: the gemma embedding has V rows, the HF one V' = text + 256 vision/audio ids. Google's
HF checkpoints append 256 copies of the pad row to gemma's 262144; gemma -> HF does the same when
V < V', and HF -> gemma drops rows that are exactly such copies (else keeps them), so the round
trip is exact. The per-layer embedding covers the text ids only on HF (ids beyond read row 0);
gemma's has V rows: HF -> gemma fills the rows beyond with row 0, which computes the same.
AltUp coefficients: gemma clips them to +-`altup_coef_clip` on every forward, transformers only
in training and vLLM never, so gemma -> HF writes them clipped (both kinds); HF -> gemma copies.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputError, ModelError
from ._arch import PAD, Gemma3nArch
from ._checkpoint import flat_tree, nested_tree

T = "model.language_model."
TOWER_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.embed_vision.", "model.embed_audio.")
# What a Hugging Face Gemma 3n folder holds besides weights and config.json: copied from the tower source.
_FOLDER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "chat_template.jinja", "chat_template.json", "processor_config.json", "preprocessor_config.json",
                 "generation_config.json")
_NORMS = {
    "pre_attention_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "post_laurel_norm": "laurel.post_laurel_norm",
    "per_layer_mapping/post_per_layer_input_norm": "post_per_layer_input_norm",
    "altup/router_norm_layer": "altup.router_norm",
}
# gemma name -> HF name of the plain transposed matrices inside a layer
_LINEARS = {
    "laurel/linear_left/w": "laurel.linear_left.weight",
    "laurel/linear_right/w": "laurel.linear_right.weight",
    "per_layer_mapping/per_layer_input_gate/w": "per_layer_input_gate.weight",
    "per_layer_mapping/per_layer_projection/w": "per_layer_projection.weight",
    "altup/modality_router/w": "altup.modality_router.weight",
}


class _Taker:
    """Tensors by name, remembering which were taken; a missing one is a ModelError (`missing`
    formats its name)."""

    def __init__(self, tensors: dict[str, np.ndarray], missing: str) -> None:
        self.tensors, self.missing, self.used = tensors, missing, set[str]()

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise ModelError(self.missing.format(name))
        self.used.add(name)
        return self.tensors[name]

    def left(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)


def _clip(w: np.ndarray, clip: float | None) -> np.ndarray:
    return w if clip is None else np.clip(w, -clip, clip).astype(w.dtype)


# ------------------------------------------------------------------------------ gemma -> HF


def params_to_hf(params: dict, arch: Gemma3nArch) -> tuple[dict[str, np.ndarray], list[str]]:
    """gemma Gemma 3n params -> HF text tensors (`model.language_model.*`), and notices."""
    arch.check()
    flat = flat_tree(params)
    take = _Taker(flat, "gemma params lack {!r}: not a Gemma 3n checkpoint of this architecture")
    notes: list[str] = []
    D, N, K, H = arch.embed_dim, arch.num_heads, arch.num_kv_heads, arch.head_dim
    L, P, Vt = arch.num_layers, arch.per_layer_input_dim, arch.text_vocab_size

    sd: dict[str, np.ndarray] = {}
    emb = take("embedder/input_embedding")
    if emb.shape[0] < arch.padded_vocab_size:  # Google's layout: copies of the pad row
        pad = np.repeat(emb[PAD:PAD + 1], arch.padded_vocab_size - emb.shape[0], axis=0)
        emb = np.concatenate([emb, pad])
    sd[T + "embed_tokens.weight"] = emb
    ple = take("embedder/per_layer_input_embedding")
    if ple.shape[0] > Vt and not np.array_equal(ple[Vt:], np.repeat(ple[:1], ple.shape[0] - Vt, axis=0)):
        notes.append(f"per-layer embedding rows {Vt}..{ple.shape[0] - 1} (vision/audio ids) dropped: Hugging Face "
                     "reads row 0 for those ids")
    sd[T + "embed_tokens_per_layer.weight"] = ple[:Vt].reshape(Vt, L * P)
    sd[T + "per_layer_model_projection.weight"] = take("embedder/per_layer_input_projection/w").reshape(D, L * P).T
    sd[T + "per_layer_projection_norm.weight"] = take("embedder/per_layer_projection_norm/scale")
    for i in range(arch.altup_num_inputs - 1):
        sd[T + f"altup_projections.{i}.weight"] = take(f"altup_projection_{i}/altup_projection_{i}").T
        sd[T + f"altup_unembed_projections.{i}.weight"] = take(
            f"altup_unembed_projection_{i}/altup_unembed_projection_{i}").T
    sd[T + "norm.weight"] = take("final_norm/scale")
    shared = set(i for i, t in enumerate(arch.kv_sharing("gemma")) if t != i)
    for i in range(L):
        g, h = f"layer_{i}/", f"{T}layers.{i}."
        sd[h + "self_attn.q_proj.weight"] = take(g + "attn/q_einsum/w").transpose(0, 2, 1).reshape(N * H, D)
        sd[h + "self_attn.q_norm.weight"] = take(g + "attn/query_norm/scale")
        if i not in shared:
            kv = take(g + "attn/kv_einsum/w")
            sd[h + "self_attn.k_proj.weight"] = kv[0].transpose(0, 2, 1).reshape(K * H, D)
            sd[h + "self_attn.v_proj.weight"] = kv[1].transpose(0, 2, 1).reshape(K * H, D)
            sd[h + "self_attn.k_norm.weight"] = take(g + "attn/key_norm/scale")
        sd[h + "self_attn.o_proj.weight"] = take(g + "attn/attn_vec_einsum/w").reshape(N * H, D).T
        gate = take(g + "mlp/gating_einsum")
        sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"] = gate[0], gate[1]
        sd[h + "mlp.down_proj.weight"] = take(g + "mlp/linear").T
        for gn, hn in _NORMS.items():
            sd[h + hn + ".weight"] = take(g + gn + "/scale")
        for gn, hn in _LINEARS.items():
            sd[h + hn] = take(g + gn).T
        sd[h + "altup.correct_output_scale"] = take(g + "altup/correct_output_scale")
        sd[h + "altup.correction_coefs.weight"] = _clip(take(g + "altup/correction_coefs").T, arch.altup_coef_clip)
        pc = take(g + "altup/prediction_coefs")  # (4, 4, 4) -> (16, 4)
        sd[h + "altup.prediction_coefs.weight"] = _clip(pc.reshape(pc.shape[0], -1).T, arch.altup_coef_clip)
    left = take.left()
    if left:
        raise ModelError(f"gemma params have tensors the Gemma 3n mapping does not know: {left[:3]}")
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}, notes


# ------------------------------------------------------------------------------ HF -> gemma


def hf_to_params(sd: dict[str, np.ndarray], arch: Gemma3nArch) -> tuple[dict, Gemma3nArch, list[str]]:
    """HF Gemma 3n tensors -> gemma params, the architecture with the gemma vocabulary it settled
    on, and notices (what was left out)."""
    D, N, K, H = arch.embed_dim, arch.num_heads, arch.num_kv_heads, arch.head_dim
    L, P, Vt = arch.num_layers, arch.per_layer_input_dim, arch.text_vocab_size
    take = _Taker(sd, "Hugging Face checkpoint lacks tensor {!r}; is it a Gemma 3n checkpoint of this config?")
    notes: list[str] = []

    flat: dict[str, np.ndarray] = {}
    emb = take(T + "embed_tokens.weight")
    if emb.shape[0] != arch.padded_vocab_size:
        raise ModelError(f"embed_tokens has {emb.shape[0]} rows but config.json says vocab_size "
                         f"{arch.padded_vocab_size}: the vocabulary does not match the config")
    extra = emb[Vt:]
    if len(extra) and np.array_equal(extra, np.repeat(emb[PAD:PAD + 1], len(extra), axis=0)):
        emb = emb[:Vt]  # copies of the pad row (Google's layout): the gemma model has the text rows
    arch = arch.model_copy(update={"vocab_size": emb.shape[0]})
    flat["embedder/input_embedding"] = emb
    ple = take(T + "embed_tokens_per_layer.weight")
    if ple.shape != (Vt, L * P):
        raise ModelError(f"embed_tokens_per_layer has shape {ple.shape}, expected ({Vt}, {L * P}) from config.json")
    ple = ple.reshape(Vt, L, P)
    if emb.shape[0] > Vt:
        ple = np.concatenate([ple, np.repeat(ple[:1], emb.shape[0] - Vt, axis=0)])
    flat["embedder/per_layer_input_embedding"] = ple
    flat["embedder/per_layer_input_projection/w"] = take(T + "per_layer_model_projection.weight").T.reshape(D, L, P)
    flat["embedder/per_layer_projection_norm/scale"] = take(T + "per_layer_projection_norm.weight")
    for i in range(arch.altup_num_inputs - 1):
        flat[f"altup_projection_{i}/altup_projection_{i}"] = take(T + f"altup_projections.{i}.weight").T
        flat[f"altup_unembed_projection_{i}/altup_unembed_projection_{i}"] = take(
            T + f"altup_unembed_projections.{i}.weight").T
    flat["final_norm/scale"] = take(T + "norm.weight")
    shared = [i for i, t in enumerate(arch.kv_sharing("gemma")) if t != i]
    for i in range(L):
        g, h = f"layer_{i}/", f"{T}layers.{i}."
        flat[g + "attn/q_einsum/w"] = take(h + "self_attn.q_proj.weight").reshape(N, H, D).transpose(0, 2, 1)
        flat[g + "attn/query_norm/scale"] = take(h + "self_attn.q_norm.weight")
        if i not in shared:
            k = take(h + "self_attn.k_proj.weight").reshape(K, H, D).transpose(0, 2, 1)
            v = take(h + "self_attn.v_proj.weight").reshape(K, H, D).transpose(0, 2, 1)
            flat[g + "attn/kv_einsum/w"] = np.stack([k, v])
            flat[g + "attn/key_norm/scale"] = take(h + "self_attn.k_norm.weight")
        flat[g + "attn/attn_vec_einsum/w"] = take(h + "self_attn.o_proj.weight").T.reshape(N, H, D)
        flat[g + "mlp/gating_einsum"] = np.stack([take(h + "mlp.gate_proj.weight"), take(h + "mlp.up_proj.weight")])
        flat[g + "mlp/linear"] = take(h + "mlp.down_proj.weight").T
        for gn, hn in _NORMS.items():
            flat[g + gn + "/scale"] = take(h + hn + ".weight")
        for gn, hn in _LINEARS.items():
            flat[g + gn] = take(h + hn).T
        flat[g + "altup/correct_output_scale"] = take(h + "altup.correct_output_scale")
        flat[g + "altup/correction_coefs"] = take(h + "altup.correction_coefs.weight").T
        pc = take(h + "altup.prediction_coefs.weight")  # (16, 4) -> (4, 4, 4)
        flat[g + "altup/prediction_coefs"] = pc.T.reshape(pc.shape[1], pc.shape[1], -1)
    kv_parts = (".self_attn.k_proj.", ".self_attn.v_proj.", ".self_attn.k_norm.")
    unused_kv = [k for k in take.left() if k.startswith(T) and any(p in k for p in kv_parts)]
    if unused_kv:
        notes.append(f"keys/values of the {len(shared)} KV-shared layers left out ({len(unused_kv)} tensors): those "
                     "layers read another layer's cache")
    towers = sorted(k for k in sd if k.startswith(TOWER_PREFIXES))
    if towers:
        notes.append(f"vision and audio towers left out ({len(towers)} tensors): gemma's Gemma 3n is text-only")
    left = [k for k in take.left() if k not in towers and k not in unused_kv and k != "lm_head.weight"]
    if left:
        raise ModelError(f"Hugging Face checkpoint has tensors the Gemma 3n mapping does not know: {left[:3]}")
    return nested_tree(flat), arch, notes


# ------------------------------------------------------------------------------ folders


def read_towers(towers: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """config.json and the vision/audio tensors of a Hugging Face Gemma 3n folder."""
    from safetensors.numpy import load_file

    towers = Path(towers)
    cfg_path = towers / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"tower source {towers} has no config.json: give a Hugging Face Gemma 3n folder "
                         "(for example a download of google/gemma-3n-E2B-it)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") != "gemma3n":
        raise InputError(f"tower source {cfg_path}: model_type {cfg.get('model_type')!r} is not gemma3n; give a "
                         "Gemma3nForConditionalGeneration folder")
    sd: dict[str, np.ndarray] = {}
    for f in sorted(towers.glob("*.safetensors")):
        sd.update({k: v for k, v in load_file(str(f)).items() if k.startswith(TOWER_PREFIXES)})
    if not sd:
        raise InputError(f"tower source {towers} has no vision or audio tower tensors")
    return cfg, sd


def hf_config(arch: Gemma3nArch, towers_cfg: dict[str, Any], towers: Path) -> dict[str, Any]:
    """The tower source's config.json with this text model, after checking that they fit."""
    vc, ac = towers_cfg.get("vision_config") or {}, towers_cfg.get("audio_config") or {}
    Vt, mm = arch.text_vocab_size, arch.padded_vocab_size - arch.text_vocab_size
    want = {"vision_config.vocab_offset": (vc.get("vocab_offset"), Vt),
            "audio_config.vocab_offset": (ac.get("vocab_offset"), Vt + vc.get("vocab_size", 128))}
    bad = {k: v for k, v in want.items() if v[0] is not None and v[0] != v[1]}
    if bad or vc.get("vocab_size", 0) + ac.get("vocab_size", 0) > mm:
        raise InputError(f"tower source {towers}: its vision/audio token layout ({', '.join(f'{k}={v[0]}' for k, v in bad.items()) or 'vocab sizes'}) "
                         f"does not fit the text model's vocabulary ({Vt} text ids, {arch.padded_vocab_size} rows); "
                         "give towers made for this tokenizer")
    text = arch.to_hf_text_config()
    return {**towers_cfg, "architectures": ["Gemma3nForConditionalGeneration"], "text_config": text,
            "dtype": arch.dtype}


def write_hf_dir(out: Path, params: dict, arch: Gemma3nArch, towers: Path | None) -> list[str]:
    """A complete Hugging Face Gemma 3n folder: text from `params`, towers from `towers`."""
    from safetensors.numpy import save_file

    if towers is None:
        raise InputError("a Gemma 3n Hugging Face folder needs vision and audio towers, which the gemma library does "
                         "not have: give a Hugging Face Gemma 3n folder as the tower source (paritybench convert "
                         "--to hf SRC OUT --towers HF_FOLDER)")
    towers = Path(towers)
    towers_cfg, tower_sd = read_towers(towers)
    cfg = hf_config(arch, towers_cfg, towers)
    text_sd, notes = params_to_hf(params, arch)
    proj = tower_sd.get("model.embed_vision.embedding_projection.weight")
    if proj is not None and proj.shape[0] != arch.embed_dim:
        raise InputError(f"tower source {towers}: its vision embedder projects to width {proj.shape[0]}, the text "
                         f"model is {arch.embed_dim} wide; give towers made for this text model")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = text_sd[T + "norm.weight"].dtype
    sd = {**{k: v.astype(dtype) if v.dtype != dtype and np.issubdtype(v.dtype, np.floating) else v
             for k, v in tower_sd.items()}, **text_sd}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for name in _FOLDER_FILES:
        if (towers / name).is_file():
            shutil.copyfile(towers / name, out / name)
    return notes


def read_hf_dir(src: Path) -> tuple[Gemma3nArch, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    cfg = json.loads((Path(src) / "config.json").read_text())
    arch = Gemma3nArch.from_hf_config(cfg, source=str(Path(src) / "config.json"))
    sd: dict[str, np.ndarray] = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    if not sd:
        raise InputError(f"{src} has no *.safetensors weights")
    return arch, sd
