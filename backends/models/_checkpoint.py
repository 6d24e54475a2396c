"""gemma-format model directories and deterministic Orbax checkpoints.

A gemma-format model directory, as `paritybench models build` and `paritybench convert --to gemma`
write it:

    paritybench-model.json   the architecture (`backends.arch.ModelCard`)
    tokenizer.model          SentencePiece model read by `gm.text.Gemma3Tokenizer`
    params/                  Orbax checkpoint of the gemma library's nested params
                             (`gm.ckpts.load_params` reads it)

Checkpoints are written without OCDBT (one zarr array per parameter, named by its path) and
with the two bits of run-specific metadata fixed (Orbax's timestamps and the commit marker's
absolute path), so writing the same params twice gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import ModelError
from .._quiet import load_noisy_libraries
from ._arch import Convention, ModelCard

CARD = "paritybench-model.json"
TOKENIZER = "tokenizer.model"
PARAMS = "params"


def save_params(params: Any, path: Path) -> None:
    load_noisy_libraries()  # Orbax's absl warnings go to the library log, not the console
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    ckpt = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=False))
    ckpt.save(path, params)
    ckpt.close()
    meta = path / "_CHECKPOINT_METADATA"
    if meta.exists():
        m = json.loads(meta.read_text())
        for k in list(m):
            if k.endswith("timestamp_nsecs"):
                m[k] = 0
        meta.write_text(json.dumps(m, sort_keys=True))
    marker = path / "commit_success.txt"
    if marker.exists():
        marker.write_text("Checkpoint commit was successful\n")


def load_params(path: Path | str) -> Any:
    """Load gemma params from an Orbax checkpoint (local folder, or gs:// with gcsfs)."""
    load_noisy_libraries()
    from gemma import gm

    s = str(path)
    if "://" not in s and not Path(s).is_dir():
        raise ModelError(f"checkpoint folder not found: {s}; build it (paritybench models build ...) or pass the right path")
    try:
        return gm.ckpts.load_params(s)
    except FileNotFoundError as e:
        raise ModelError(f"cannot read the Orbax checkpoint in {s}: {e}") from None
    except ValueError as e:
        raise ModelError(f"{s} is not a readable Orbax checkpoint of gemma params: {str(e).splitlines()[0]}") from None


def write_model_dir(out: Path, card: ModelCard, params: Any, tokenizer_model: Path | bytes) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # "chat" only where it is false (a base model), so the cards of every other model stay as they were
    (out / CARD).write_text(card.model_dump_json(indent=2, exclude={"chat"} if card.chat else None) + "\n")
    tok = out / TOKENIZER
    if isinstance(tokenizer_model, bytes):
        tok.write_bytes(tokenizer_model)
    elif Path(tokenizer_model).resolve() != tok.resolve():
        shutil.copyfile(tokenizer_model, tok)
    save_params(params, out / PARAMS)
    return out


def read_card(model_dir: Path) -> ModelCard:
    model_dir = Path(model_dir)
    p = model_dir / CARD
    if not model_dir.is_dir():
        raise ModelError(f"model folder not found: {model_dir}")
    if not p.is_file():
        raise ModelError(
            f"{model_dir} has no {CARD}: not a gemma-format model folder. For a Hugging Face folder run "
            f"`paritybench convert --to gemma {model_dir} DST` first"
        )
    try:
        return ModelCard.model_validate_json(p.read_text())
    except Exception as e:  # pydantic's message names the field
        raise ModelError(f"{p}: invalid model card: {str(e).splitlines()[0]} ({_first_error(e)})") from None


def _first_error(e: Exception) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        first = errs()[0]
        return f"field {'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
    return str(e)


def file_sha256(path: Path | str) -> str | None:
    """The SHA-256 of a local file (None when there is none): tokenizer files both sides should share."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def chat_template_sha256(hf_dir: Path) -> str | None:
    """The SHA-256 of a Hugging Face folder's chat template: chat_template.jinja, else the
    `chat_template` of tokenizer_config.json (None when it has none)."""
    if (hf_dir / "chat_template.jinja").is_file():
        return file_sha256(hf_dir / "chat_template.jinja")
    cfg = hf_dir / "tokenizer_config.json"
    template = json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else None
    return hashlib.sha256(template.encode()).hexdigest() if isinstance(template, str) else None


def hf_folder_settings(hf_dir: Path | str, convention: Convention, **known: Any) -> Any:
    """What an engine following `convention` computes for a Hugging Face folder (a
    `backends.ModelSettings`): its config.json, tokenizer.model and end ids, with `known` (what the
    engine adds: dtype, max model length). Only `convention` and `known` for a config that is not
    a Gemma one paritybench reads."""
    from .._types import ModelSettings
    from ._arch import arch_from_hf_config, engine_settings
    from ._hfconfig import consumed_config

    hf_dir = Path(hf_dir)
    known.update({k: v for k, v in (("tokenizer_sha256", file_sha256(hf_dir / "tokenizer.model")),
                                    ("chat_template_sha256", chat_template_sha256(hf_dir)),
                                    ("end_ids", hf_end_ids(hf_dir))) if v is not None})
    cfg = json.loads((hf_dir / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    known["rms_norm_eps"] = float(text.get("rms_norm_eps", 1e-6))
    known["tied_embeddings"] = bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
    known["config"] = consumed_config(cfg)
    try:
        arch = arch_from_hf_config(cfg)
    except (ModelError, ValueError):
        return ModelSettings(convention=convention, **known)
    return engine_settings(arch, convention, **known)


def hf_end_ids(folder: Path | str) -> tuple[int, ...] | None:
    """The ids that end a generation for a Hugging Face folder (generation_config.json, else config.json)."""
    for name in ("generation_config.json", "config.json"):
        f = Path(folder) / name
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except ValueError:
                continue
            eos = cfg.get("eos_token_id", (cfg.get("text_config") or {}).get("eos_token_id"))
            if eos is not None:
                return tuple(sorted({int(e) for e in (eos if isinstance(eos, list) else [eos])}))
    return None


def flat_tree(tree: dict, prefix: str = "", leaf: Any = None) -> dict[str, Any]:
    """{"a/b/c": leaf(value)} for nested dicts of parameters (leaf: numpy.asarray by default)."""
    import numpy as np

    leaf = leaf or np.asarray
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else k
        out.update(flat_tree(v, name, leaf) if isinstance(v, dict) else {name: leaf(v)})
    return out


def nested_tree(flat: dict[str, Any]) -> dict:
    """The nested dicts `flat_tree` flattened."""
    tree: dict = {}
    for name, v in flat.items():
        *parents, last = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return tree


def tree_digest(params: Any) -> str:
    """A hash of all parameter names, shapes, dtypes and bytes (to compare checkpoints)."""
    import hashlib

    import jax
    import numpy as np

    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.asarray(x)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def dir_fingerprint(path: Path) -> str:
    """A short key for a folder's contents (names, sizes, mtimes of every file): names cached
    conversions of user folders, which change when the folder does."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def atomic_dir(final: Path) -> Path:
    """A sibling staging folder of this process and thread; `commit_dir` renames it into place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def build_lock(final: Path) -> Iterator[None]:
    """Held while `final` is built into the cache: one builder at a time, across processes and
    across the threads of one process (each takes its own open file: flock excludes them too)."""
    lock = Path(final).with_name(Path(final).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def commit_dir(tmp: Path, final: Path) -> None:
    final = Path(final)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
