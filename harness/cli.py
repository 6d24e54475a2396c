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


def _vllm_options(port, dtype, max_model_len, gpu_memory_utilization, tensor_parallel_size, kv_cache_dtype,
                  quantization, speculative_config, enforce_eager, extra) -> dict:
    """`vllm serve` flags given on the command line (unset ones are left to vLLM's defaults)."""
    opts = dict(port=port, dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size, kv_cache_dtype=kv_cache_dtype, quantization=quantization,
                speculative_config=speculative_config, enforce_eager=enforce_eager)
    opts = {k: v for k, v in opts.items() if v is not None}
    if extra:
        opts["extra_args"] = list(extra)
    return opts


_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("serve", context_settings=_EXTRA)
def serve(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="registry name (tiny-gemma3, ...), Hugging Face folder or HF id"),
    port: Optional[int] = typer.Option(None, "--port", help="default: a free port"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len"),
    gpu_memory_utilization: Optional[float] = typer.Option(None, "--gpu-memory-utilization"),
    tensor_parallel_size: Optional[int] = typer.Option(None, "--tensor-parallel-size"),
    kv_cache_dtype: Optional[str] = typer.Option(None, "--kv-cache-dtype"),
    quantization: Optional[str] = typer.Option(None, "--quantization"),
    speculative_config: Optional[str] = typer.Option(None, "--speculative-config", help="JSON, as vLLM takes it"),
    enforce_eager: Optional[bool] = typer.Option(None, "--enforce-eager/--no-enforce-eager",
                                                 help="default: eager on CPU"),
) -> None:
    """Run a managed vLLM server (any further flags go to `vllm serve`) until Ctrl-C or SIGTERM."""
    import time

    from backends.vllm_backend import VllmBackend
    from backends.vllm_server import VllmServer

    opts = _vllm_options(port, dtype, max_model_len, gpu_memory_utilization, tensor_parallel_size, kv_cache_dtype,
                         quantization, speculative_config, enforce_eager, ctx.args)
    hf, name, defaults = VllmBackend.resolve(model)
    with VllmServer(hf, served_model_name=name, **{**defaults, **opts}) as server:
        console.print(f"vLLM serving {name} at [bold]{server.url}[/] (healthy after {server.startup_s:.1f} s; "
                      f"log {server.log_path}); Ctrl-C stops it")
        try:
            while server.alive():
                time.sleep(1.0)
            server.check_alive()
        except KeyboardInterrupt:
            console.print("stopping the server")


@app.command("generate")
def generate(
    prompt: str = typer.Argument(..., help="user message"),
    backend: str = typer.Option("jax", "--backend", help="jax or vllm"),
    model: str = typer.Option("tiny-gemma3", "--model"),
    vllm_url: Optional[str] = typer.Option(None, "--vllm-url", help="attach to a running vLLM (http://host:8000/v1); "
                                           "API key from VLLM_API_KEY"),
    max_tokens: int = typer.Option(24, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    logprobs: int = typer.Option(0, "--logprobs", help="top alternatives per token (0-20)"),
) -> None:
    """One prompt through one backend: text, token ids, log-probs and timings (as JSON)."""
    import json

    import backends

    opts = {"url": vllm_url} if vllm_url else {}
    if vllm_url and backend != "vllm":
        raise backends.InputError("--vllm-url needs --backend vllm")
    with backends.get(backend, model=model, **opts) as b:
        [g] = b.generate([backends.Request.from_text(prompt)],
                         backends.SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                                                 logprobs=logprobs))
    print(json.dumps(g.model_dump(mode="json"), indent=1))


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
