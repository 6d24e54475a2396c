"""One model resolver: a registry name, a gemma-format folder, a Hugging Face folder or a Hugging
Face id, turned into what each engine loads.

Every engine and the CLI resolve through `resolve`; a folder in the other format is converted
into the cache once (`converted`), keyed by the source folder's fingerprint.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

from .._errors import InputError, ModelError
from . import _checkpoint as _ckpt
from . import _convert, _real, _tiny
from ._registry import ModelSpec, get_spec, is_path, looks_like_hf_id

Format = Literal["gemma", "hf"]


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """What a model name or path stands for.

    name: the display (and served) name. spec: its registry entry, if any. gemma_dir: a
    gemma-format folder (card, params, tokenizer.model). hf_dir: a local Hugging Face folder.
    hf_id: a Hugging Face hub id (vLLM downloads it). dtype: the checkpoint's dtype when known.
    """

    name: str
    spec: ModelSpec | None = None
    gemma_dir: Path | None = None
    hf_dir: Path | None = None
    hf_id: str | None = None
    dtype: str | None = None

    @property
    def hf_source(self) -> str | None:
        """What a Hugging Face-based engine loads: the local folder, else the hub id."""
        return str(self.hf_dir) if self.hf_dir is not None else self.hf_id


def converted(src: Path, to: Format) -> Path:
    """`src` (a gemma-format or Hugging Face folder) in the other format, converted into the cache
    once; the cache key is the folder's name and content fingerprint."""
    src = Path(src)
    sub, marker = ("converted", _ckpt.CARD) if to == "gemma" else ("converted-hf", "config.json")
    dst = _tiny.cache_root() / sub / f"{src.name}-{_ckpt.dir_fingerprint(src)}"
    if not (dst / marker).is_file():
        tmp = _ckpt.atomic_dir(dst)
        if to == "gemma":
            _convert.hf_dir_to_gemma(src, tmp, name=src.name)
        else:
            _convert.gemma_dir_to_hf(src, tmp)
        _ckpt.commit_dir(tmp, dst)
    return dst


def _folder(path: Path, want: Format) -> ResolvedModel:
    if not path.exists():
        raise ModelError(f"model folder not found: {path}")
    is_gemma, is_hf = (path / _ckpt.CARD).is_file(), (path / "config.json").is_file()
    if not (is_gemma or is_hf):
        raise ModelError(f"{path} is neither a gemma-format model folder ({_ckpt.CARD}) nor a Hugging Face "
                         "folder (config.json)")
    if is_gemma:
        dtype = _ckpt.read_card(path).arch.dtype
        twin = path / "hf"  # a folder that carries its Hugging Face twin (tiny models, GGUF imports)
        hf = twin if (twin / "config.json").is_file() else converted(path, "hf") if want == "hf" else None
        return ResolvedModel(name=path.name, gemma_dir=path, hf_dir=hf, dtype=dtype)
    gemma = converted(path, "gemma") if want == "gemma" else None
    return ResolvedModel(name=path.name, gemma_dir=gemma, hf_dir=path, dtype=_hf_dtype(path / "config.json"))


def _hf_dtype(config: Path) -> str | None:
    """The checkpoint dtype a Hugging Face config.json states (so every engine runs at it: a managed
    vLLM server would otherwise downcast a float32 checkpoint to bfloat16)."""
    import json

    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    text = cfg.get("text_config") or {}
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    return dtype if dtype in ("float32", "bfloat16", "float16") else None


def resolve(model: str, *, want: Format) -> ResolvedModel:
    """`model` for an engine that loads the `want` format ("gemma": the gemma library; "hf":
    vLLM, transformers). Tiny registry models are built on first use; real registry models are
    returned with their spec (the engine fetches the weights its own way)."""
    model = str(model)
    if looks_like_hf_id(model):
        from ._registry import find_spec

        return ResolvedModel(name=model, spec=find_spec(model), hf_id=model)
    if is_path(model):
        return _folder(Path(model), want)
    spec = get_spec(model)
    if spec.tiny or spec.gguf_package:
        d = _real.ensure(spec) if spec.gguf_package else _tiny.ensure(spec.name)
        return ResolvedModel(name=spec.name, spec=spec, gemma_dir=d, hf_dir=d / "hf",
                             dtype=_ckpt.read_card(d).arch.dtype)
    if want == "hf" and not spec.hf_id:
        raise ModelError(f"model {spec.name} has no Hugging Face id; give a local folder instead")
    return ResolvedModel(name=spec.name, spec=spec, hf_id=spec.hf_id)


GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0")  # written here; K-quants come from llama.cpp's quantizer


def gguf_for(model: str, *, gguf_type: str = "F32") -> Path:
    """The GGUF file llama.cpp loads for `model`: a `.gguf` path as it is; `gguf_type="shipped"`: a
    registry model's GGUF as shipped (gemma-3-270m: Q4_K_M); otherwise the model's weights (a
    registry name, a gemma-format or Hugging Face folder) written as a GGUF of `gguf_type` into the
    cache once (`model_dir_to_gguf`; the cache key is the folder's name and content fingerprint)."""
    if str(model).endswith(".gguf"):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return path
    if gguf_type == "shipped":
        from ._registry import find_spec

        spec = find_spec(str(model))
        if spec is None or spec.gguf_package is None:
            raise InputError(f"gguf_type=shipped: {model} is not a registry model shipped as a GGUF file; "
                             f"choose one of {', '.join(GGUF_TYPES)}")
        return _real.gguf_file(spec)
    if gguf_type not in GGUF_TYPES:
        raise InputError(f"gguf_type={gguf_type!r}: choose one of {', '.join(GGUF_TYPES)} or shipped "
                         "(K-quants such as Q4_K_M: the llamacpp engine's quantize option)")
    src = resolve(str(model), want="gemma").gemma_dir
    if src is None:
        raise ModelError(f"{model}: no gemma-format weights to write as GGUF (a hub id is not on this machine)")
    dst = _tiny.cache_root() / "gguf-converted" / f"{src.name}-{_ckpt.dir_fingerprint(src)}-{gguf_type}.gguf"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{dst.name}.{os.getpid()}.part")
        try:
            _convert.model_dir_to_gguf(src, tmp, dtype=gguf_type)
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
    return dst
