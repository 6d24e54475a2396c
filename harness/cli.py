"""The `paritybench` command line.

Exit codes: 0 success, 1 a check failed, 2 usage or environment error (one line on stderr).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Parity, memory and speed of vLLM vs JAX gemma.")
models_app = typer.Typer(no_args_is_help=True, help="Known models and the embedded tiny models.")
app.add_typer(models_app, name="models")
console = Console(width=None if sys.stdout.isatty() else 140)


@models_app.command("list")
def models_list() -> None:
    """The model registry: modalities per backend and where weights come from."""
    from backends import REGISTRY

    t = Table()
    for c in ("name", "JAX", "vLLM", "HF id (vLLM)", "gemma class", "Kaggle handle"):
        t.add_column(c)
    for s in REGISTRY.values():
        t.add_row(s.name, ",".join(sorted(s.jax_modalities)), ",".join(sorted(s.vllm_modalities)),
                  s.hf_id or "(built locally)", s.gemma_class or "(local)", s.kaggle_handle or "-")
    console.print(t)


@models_app.command("build")
def models_build(
    name: str = typer.Argument(..., help="tiny-gemma3 or tiny-gemma3-vision"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder to write (default: the cache folder)"),
) -> None:
    """Build an embedded tiny model (gemma checkpoint + Hugging Face folder); prints its folder."""
    from backends import tiny

    path = tiny.build(name, out) if out else tiny.ensure(name)
    print(path)


@app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="gemma-format model folder, or Hugging Face folder"),
    dst: Path = typer.Argument(..., help="folder to write"),
    to: str = typer.Option(..., "--to", help="hf or gemma"),
    force: bool = typer.Option(False, "--force", help="replace DST if it exists"),
) -> None:
    """Convert weights between the gemma library and Hugging Face (Gemma 3 text and vision)."""
    from backends import InputError, checkpoint, convert as conv

    if to not in ("hf", "gemma"):
        raise InputError(f"--to {to!r}: choose hf or gemma")
    if not src.exists():
        raise InputError(f"source folder not found: {src}")
    occupied = dst.is_file() or (dst.is_dir() and any(dst.iterdir()))
    if occupied and not force:
        raise InputError(f"{dst} already exists; choose another folder or pass --force")
    tmp = checkpoint.atomic_dir(dst)
    try:
        (conv.gemma_dir_to_hf if to == "hf" else conv.hf_dir_to_gemma)(src, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    checkpoint.commit_dir(tmp, dst)
    print(dst)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("out/demo"), "--out", help="report folder"),
    model: str = typer.Option("tiny-gemma3", "--model"),
    suite: Optional[Path] = typer.Option(None, "--suite", help="suite YAML (default evals/smoke.yaml)"),
    max_tokens: int = typer.Option(24, "--max-tokens"),
) -> None:
    """The main job on the embedded tiny model (JAX side): generate, check, report."""
    from . import demo as _demo

    result = _demo.run(out, model=model, suite=suite, max_tokens=max_tokens, console=console)
    ok = all(p["argmax_equals_greedy"] and p["repeatable"] for p in result["prompts"])
    raise typer.Exit(0 if ok else 1)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from backends import ParitybenchError

    try:
        app(standalone_mode=False)
    except ParitybenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.BadParameter, typer.Abort) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
