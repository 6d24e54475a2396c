"""Check that every import of an environment that needs a native library really loads it.

    ENV/bin/python scripts/check_native.py harness|vllm [--repair LOG]

Run by the environment's own interpreter when scripts/ensure_env.sh or scripts/ensure_vllm_env.sh
builds it (and again whenever this file changes). Each check imports a package and touches its
native code; a package that must load a library of its own (soundfile's libsndfile) is also
checked for loading that copy, not one the system happens to have: a machine where another step
(Debian's chromium) brought libsndfile1 must build the same environment as a new one.

With --repair, each failing distribution is reinstalled once by pip at the same version (pip picks
the wheel for this platform where an index holds a pure-Python one beside it, which uv does not
always do), then everything is checked again in a new process. Exit status 0 when all loads; else 1
with one line per failure on stdout ("error: ..."): the package, the library, and what to run. What
the libraries themselves print goes to stderr.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Debian packages for the libraries a wheel may expect from the system.
DEBIAN = {"libsndfile": "libsndfile1", "libGL": "libgl1", "libgomp": "libgomp1", "libglib-2.0": "libglib2.0-0",
          "libgthread-2.0": "libglib2.0-0", "libsox": "libsox3", "libavcodec": "ffmpeg", "libstdc++": "libstdc++6"}


@dataclass(frozen=True)
class Check:
    module: str  # what is imported (the distribution is found from it)
    touch: Callable[[], object]  # runs native code of the module
    own_library: str | None = None  # a library the distribution must load from its own files


def _loaded(name: str) -> list[str]:
    """The files of shared libraries named `name`* this process has mapped."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if f"/{name}" in line and ".so" in line})


def _numpy() -> object:
    import numpy as np
    return float((np.ones((8, 8)) @ np.ones(8)).sum())


def _pil() -> object:
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 20, 30)).resize((8, 8), Image.Resampling.BICUBIC).save(out, "PNG")
    return Image.open(io.BytesIO(out.getvalue())).getpixel((0, 0))


def _sentencepiece() -> object:
    import sentencepiece._sentencepiece as native
    return native.__name__


def _tokenizers() -> object:
    import tokenizers
    return tokenizers.Tokenizer(tokenizers.models.BPE()).get_vocab_size()


def _safetensors() -> object:
    import numpy as np
    from safetensors.numpy import load, save
    return load(save({"x": np.zeros(2, np.float32)}))["x"].shape


def _torch() -> object:
    import torch
    return float((torch.ones(4, 4) @ torch.ones(4)).sum())


def _soundfile() -> object:
    import io

    import numpy as np
    import soundfile
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(160, np.float32), 16000, format="WAV")
    return soundfile.info(io.BytesIO(buf.getvalue())).frames


def _jax() -> object:
    import jax.numpy as jnp
    return float(jnp.ones(4).sum())


def _gemma() -> object:
    import gemma  # imports kauldron, TensorFlow and orbax
    return gemma.__name__


def _scipy() -> object:
    import numpy as np
    from scipy.signal import resample_poly
    return resample_poly(np.ones(32), 1, 2).shape


def _matplotlib() -> object:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(io.BytesIO(), format="png")
    return plt.close(fig)


def _transformers_audio() -> object:
    import transformers.audio_utils  # imports soundfile where it is installed (vLLM imports this at start)
    return transformers.audio_utils.__name__


def _torchvision() -> object:
    import torch
    import torchvision.transforms.v2.functional as F  # torchvision's op schemas are fixed at start-up (fixes.py)
    return F.resize(torch.zeros(3, 8, 8), [4, 4], antialias=True).shape


def _vllm() -> object:
    import torch
    from vllm.platforms import current_platform
    current_platform.import_kernels()  # the kernel library for this CPU (AVX2, AVX-512 or AMX build)
    return torch.ops._C.rms_norm  # one of its kernels: AttributeError where the library did not load


def _cv2() -> object:
    import cv2
    import numpy as np
    return cv2.resize(np.zeros((8, 8, 3), np.uint8), (4, 4)).shape


def _import(name: str) -> Callable[[], object]:
    return lambda: __import__(name)


COMMON = [Check("numpy", _numpy), Check("PIL", _pil), Check("sentencepiece", _sentencepiece),
          Check("tokenizers", _tokenizers), Check("safetensors", _safetensors), Check("torch", _torch),
          Check("soundfile", _soundfile, own_library="libsndfile")]
CHECKS = {
    "harness": COMMON + [Check("jaxlib", _jax), Check("gemma", _gemma), Check("scipy", _scipy),
                         Check("matplotlib", _matplotlib), Check("aiohttp", _import("aiohttp._http_parser")),
                         Check("psutil", _import("psutil")), Check("transformers", _transformers_audio)],
    "vllm": COMMON + [Check("transformers", _transformers_audio), Check("torchvision", _torchvision),
                      Check("timm", _import("timm")), Check("cv2", _cv2), Check("zmq", _import("zmq")),
                      Check("msgspec", _import("msgspec")), Check("vllm", _vllm)],
}
# Installed only in some environments (soundfile: the vLLM one); checked where installed.
OPTIONAL = {"soundfile", "cv2"}


def distribution(module: str) -> tuple[str, str] | None:
    """(distribution name, version) that provides the top-level `module`, None if none is installed."""
    names = md.packages_distributions().get(module.split(".")[0], [])
    for name in names:
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def advice(library: str) -> str:
    stem = re.sub(r"\.so.*$", "", library)
    package = DEBIAN.get(stem)
    return f"apt-get install {package}" if package else f"install the system package that provides {library}"


def run_check(check: Check, failed_libraries: set[str]) -> tuple[str, str] | None:
    """None if `check` passes (or fails only on a library an earlier check already named, in
    `failed_libraries`), else (distribution==version, one-line problem with what to run)."""
    dist = distribution(check.module)
    if dist is None:
        if check.module in OPTIONAL:
            return None
        return check.module, f"{check.module} is not installed in {sys.prefix}: rebuild the environment"
    label = f"{dist[0]}=={dist[1]}"
    try:
        check.touch()
    except Exception as e:  # an import or a first call that fails, whatever it raises
        text = f"{type(e).__name__}: {e}".replace("\n", " ")
        lib = re.search(r"(lib[\w.+-]*?\.so(?:\.\d+)*)", text)
        if lib and lib.group(1) in failed_libraries:
            return None  # the same cause as an earlier failure (transformers importing soundfile)
        if lib:
            failed_libraries.add(lib.group(1))
            return label, (f"{label} cannot load {lib.group(1)} ({text[:160]}): {advice(lib.group(1))}, "
                           f"or reinstall it with `{sys.executable} -m pip install --force-reinstall --no-deps {label}`")
        return label, f"{label} does not work: {text[:300]}"
    if check.own_library:
        files = _loaded(check.own_library)
        prefix = os.path.realpath(sys.prefix)  # the environment may be reached through a link (.venv-vllm)
        own = [f for f in files if os.path.realpath(f).startswith(prefix + os.sep)]
        if not own:
            where = files[0] if files else "nothing"
            return label, (f"{label} loads {where}, not a {check.own_library} of its own (its wheel has none): "
                           f"reinstall it with `{sys.executable} -m pip install --force-reinstall --no-deps {label}`")
    return None


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else ""
    if kind not in CHECKS:
        print(f"usage: check_native.py {'|'.join(CHECKS)} [--repair LOG]", file=sys.stderr)
        return 2
    failed_libraries: set[str] = set()
    failures = [f for f in (run_check(c, failed_libraries) for c in CHECKS[kind]) if f]
    if failures and "--repair" in argv:
        log = argv[argv.index("--repair") + 1]
        with open(log, "a") as out:
            for label, problem in failures:
                out.write(f"check_native: {problem}\n$ pip install --force-reinstall --no-deps {label}\n")
                out.flush()
                subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile",
                                "--force-reinstall", "--no-deps", label], stdout=out, stderr=subprocess.STDOUT)
        return subprocess.run([sys.executable, __file__, kind]).returncode  # a new process: fresh imports
    for _, problem in failures:
        print(f"error: {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
