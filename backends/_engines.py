"""Engines as plug-ins: a name -> the class that implements `Backend` for it.

The engines paritybench ships are listed here; another package adds its own through the
`paritybench.engines` entry-point group (`name = "package.module:Class"`), and nothing in the
harness changes. Engines are imported only when asked for (each pulls in its own libraries).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from typing import Any

from ._base import BaseBackend
from ._errors import InputError
from ._protocol import Backend

BUILTIN = {
    "vllm": "backends.vllm:VllmBackend",  # a vLLM server through its OpenAI-compatible API
    "jax": "backends.jax:JaxBackend",  # Google DeepMind's gemma library, in process
    "hf": "backends.hf:HfBackend",  # Hugging Face transformers, in process
    "llamacpp": "backends.llamacpp:LlamacppBackend",  # llama.cpp's own server (llama-server), GGUF files
    "openai": "backends.openai:OpenAIBackend",  # any OpenAI-compatible server, its features probed at start
}
ENTRY_POINT_GROUP = "paritybench.engines"


def engines() -> dict[str, str]:
    """Every engine name -> "module:Class" (built-ins, then installed plug-ins)."""
    found = dict(BUILTIN)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def engine_class(name: str) -> type[BaseBackend]:
    """The class of engine `name` (engines subclass `BaseBackend`: its class-level declarations
    (titles, environment, guide) are what the harness reads of an engine it does not run)."""
    known = engines()
    if name not in known:
        raise InputError(f"unknown engine {name!r}; choose one of: {', '.join(known)}")
    module, _, attr = known[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def import_libraries(name: str) -> None:
    """Engine `name`'s libraries imported now, in this thread (`BaseBackend.import_libraries`):
    sides that open side by side in threads call this first, one engine after another."""
    hook = getattr(engine_class(name), "import_libraries", None)
    if hook is not None:
        hook()


def option_names(name: str) -> list[str]:
    """The options engine `name` takes (its constructor's keyword arguments, and for an engine that
    passes the rest on, what it passes them to: `extra_options()`)."""
    cls = engine_class(name)
    params = inspect.signature(cls).parameters  # the constructor's, without self
    names = [p for p in params if p != "model" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    extra = getattr(cls, "extra_options", None)
    return names + (list(extra()) if extra is not None else [])


def check_options(name: str, options: dict[str, Any]) -> None:
    """Refuse, in one line, an option engine `name` does not take, or options this machine cannot
    run with it (the engine's `check_machine`), before anything starts."""
    accepted = option_names(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(f"the {name} engine takes no option {unknown[0]!r}; its options: {', '.join(accepted)}")
    check_machine = getattr(engine_class(name), "check_machine", None)
    if check_machine is not None:  # what this machine cannot run with these options
        check_machine(options)


def get(name: str, *, model: str, **options: Any) -> Backend:
    """The engine `name` serving `model` (registry name, folder path or Hugging Face id). An option
    the engine does not take is refused in one line, before anything loads."""
    check_options(name, options)
    cls: Any = engine_class(name)  # each engine's constructor takes its own options
    return cls(model, **options)
