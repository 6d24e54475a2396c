"""The `paritybench` command line.

Exit codes: 0 success, 1 a check failed, 2 usage or environment error (one line on stderr).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from .results import BatchRun, ServingRun

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Parity, memory and speed of vLLM vs JAX gemma.")
models_app = typer.Typer(no_args_is_help=True, help="Known models and the embedded tiny models.")
app.add_typer(models_app, name="models")


def _stdout() -> Console:
    """The console on stdout: the terminal's width, or in a log file or pipe (no terminal) wide
    enough that no table wraps mid-word (rich would assume 80 columns)."""
    return Console(width=None if sys.stdout.isatty() else 1000)


console = _stdout()


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
    name: str = typer.Argument(..., help="a model built locally (tiny-gemma3, tiny-gemma3-vision, tiny-gemma3n, "
                               "random-gemma-3-270m, random-gemma-3-1b), or with --random-weights a registry model"),
    random_weights: bool = typer.Option(False, "--random-weights", help="NAME is a registry model "
                                        "(gemma-3-270m-it, gemma-3-1b-it): build its architecture with random weights"),
    out: Path | None = typer.Option(None, "--out", help="folder to write (default: the cache folder)"),
) -> None:
    """Build a model from its recipe (gemma checkpoint + Hugging Face folder in hf/), seeded and
    byte-reproducible; prints its folder. Compare it by that folder or by its name."""
    from backends import models

    if random_weights:
        name = models.random_twin(name).name
    path = models.build_tiny(name, out) if out else models.ensure_tiny(name)
    print(path)


@app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="gemma-format model folder, Hugging Face folder, (--to gguf) a registry "
                               "name, or (--from gguf) a GGUF file"),
    dst: Path = typer.Argument(..., help="folder to write (--to gguf: the .gguf file)"),
    to: str = typer.Option(None, "--to", help="hf or gemma: convert a folder into the other format; gguf: write a "
                           "Gemma 3 text model (folder or registry name) as a GGUF file llama.cpp loads"),
    gguf_type: str = typer.Option("F32", "--gguf-type", help="--to gguf: F32, F16, BF16 or Q8_0 (written here), or "
                                  "a llama.cpp quantization type (Q4_K_M, Q6_K, ...: llama.cpp's own quantizer, "
                                  "from the F32 file)"),
    from_: str = typer.Option(None, "--from", help="gguf: import a Gemma 3 text GGUF (llama.cpp's format, any type "
                              "the gguf package dequantizes) as a float32 gemma-format folder with its Hugging Face "
                              "twin in DST/hf"),
    sha256: str = typer.Option(None, "--sha256", help="--from gguf: the file's expected SHA-256"),
    towers: Path = typer.Option(None, "--towers", help="Gemma 3n to hf: a Hugging Face Gemma 3n folder whose "
                                "vision and audio towers to take"),
    force: bool = typer.Option(False, "--force", help="replace DST if it exists"),
) -> None:
    """Convert weights between the gemma library and Hugging Face (Gemma 3 text and vision; Gemma 3n text,
    with the towers taken from --towers), or import a Gemma 3 GGUF file (--from gguf)."""
    from backends import InputError, models

    if (to is None) == (from_ is None):
        raise InputError("give --to hf|gemma (convert a folder) or --from gguf (import a GGUF file)")
    if to is not None and to not in ("hf", "gemma", "gguf"):
        raise InputError(f"--to {to!r}: choose hf, gemma or gguf")
    if to == "gguf":
        _write_gguf(str(src), dst, gguf_type, force)
        return
    if from_ is not None and from_ != "gguf":
        raise InputError(f"--from {from_!r}: only gguf imports (Gemma 3 text GGUF files)")
    if not src.exists():
        raise InputError(f"source not found: {src}")
    if from_ and not src.is_file():
        raise InputError(f"{src} is a folder; --from gguf takes a .gguf file")
    occupied = dst.is_file() or (dst.is_dir() and any(dst.iterdir()))
    if occupied and not force:
        raise InputError(f"{dst} already exists; choose another folder or pass --force")
    tmp = models.atomic_dir(dst)
    try:
        if from_:
            done = models.gguf_to_model_dir(src, tmp, name=dst.name, expect_sha256=sha256)
        elif to == "hf":
            done = models.gemma_dir_to_hf(src, tmp, towers=towers)
        else:
            done = models.hf_dir_to_gemma(src, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    models.commit_dir(tmp, dst)
    for note in done.notes:
        print(f"note: {note}", file=sys.stderr)
    print(dst)


def _write_gguf(src: str, dst: Path, gguf_type: str, force: bool) -> None:
    """`convert --to gguf`: the model's weights as a GGUF file of `gguf_type` at `dst` (a K-quant
    through llama.cpp's quantizer, from the F32 file)."""
    from backends import InputError, models

    if dst.exists() and not force:
        raise InputError(f"{dst} already exists; choose another file or pass --force")
    if dst.suffix != ".gguf":
        raise InputError(f"{dst}: name the file .gguf (llama.cpp loads files by that name)")
    if gguf_type in models.GGUF_TYPES:
        made = models.gguf_for(src, gguf_type=gguf_type)
    else:
        from backends.llamacpp import quantized

        made = quantized(models.gguf_for(src, gguf_type="F32"), gguf_type)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(made, dst)
    print(dst)


@app.command("quantize")
def quantize(
    src: str = typer.Argument(..., help="a float Hugging Face folder (or a registry name, or a gemma-format folder)"),
    dst: Path = typer.Argument(..., help="folder to write"),
    scheme: str = typer.Option("w8a8", "--scheme", help="w8a8 (int8 weights per channel, int8 activations per "
                               "token) or w4a16 (int4 weights in groups)"),
    group_size: int = typer.Option(32, "--group-size", help="w4a16: weights per scale"),
) -> None:
    """Write a quantized copy of a model that vLLM serves (compressed-tensors format), to compare it
    with the float model as a side of its own."""
    from backends import InputError, models

    hf = models.resolve(src, want="hf").hf_dir
    if hf is None:
        raise InputError(f"{src}: no local Hugging Face folder to quantize (a hub id is not downloaded here)")
    n = models.quantize_hf_dir(hf, dst, scheme, group_size)  # type: ignore[arg-type]
    print(f"{dst} ({n} weights quantized, {scheme})")


_SHARED = dict(
    config=typer.Option(None, "--config", help="YAML settings (paritybench's, or an Argentic config.yaml's llm: section)"),
    model=typer.Option(None, "--model", help="registry name, folder or HF id (both sides) [tiny-gemma3-vision]"),
    suite=typer.Option(None, "--suite", help="suite YAML [evals/default.yaml]"),
    vllm_url=typer.Option(None, "--vllm-url", help="attach to a running vLLM (API key from VLLM_API_KEY)"),
    out=typer.Option(None, "--out", help="report folder [out/compare]"),
    force=typer.Option(False, "--force", help="overwrite a non-empty report folder"),
    max_tokens=typer.Option(None, "--max-tokens", help="greedy tokens per prompt [24]"),
    seed=typer.Option(None, "--seed"),
    no_bench=typer.Option(False, "--no-bench", help="parity / answers only"),
    num_prompts=typer.Option(None, "--num-prompts", help="benchmark prompts [16]"),
    output_len=typer.Option(None, "--output-len", help="benchmark output tokens per request [32]"),
    concurrency=typer.Option(None, "--concurrency", help="vLLM concurrency levels [1,4,8]"),
    batch_sizes=typer.Option(None, "--batch-sizes", help="JAX batch sizes [1,4,8]"),
)


def _config(config, backends_, **flags):
    from . import config as _cfg

    base = _cfg.load(config) if config else _cfg.CompareConfig()
    for key in ("concurrency", "batch_sizes"):
        if flags.get(f"bench_{key}") is not None:
            flags[f"bench_{key}"] = [int(x) for x in _floats(flags[f"bench_{key}"], f"--{key.replace('_', '-')}")]
    return _cfg.with_overrides(base, backends=backends_, **flags)


def _side(text: str) -> dict:
    """`--side NAME=ENGINE[,model=M][,bound=B][,OPTION=VALUE...]` as a side's settings (values read
    as YAML scalars: numbers, true/false, strings)."""
    import yaml

    head, *rest = text.split(",")
    name, eq, engine = head.partition("=")
    if not eq or not name or not engine:
        raise typer.BadParameter(f"--side {text!r}: write NAME=ENGINE[,OPTION=VALUE...], e.g. fp8kv=vllm,kv_cache_dtype=fp8")
    spec: dict = {"name": name.strip(), "engine": engine.strip(), "options": {}}
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"--side {text!r}: {item!r} is not OPTION=VALUE")
        parsed = yaml.safe_load(value)
        if key.strip() in ("model", "bound"):
            spec[key.strip()] = parsed
        else:
            spec["options"][key.strip()] = parsed
    return spec


def _run(cfg, force: bool, resume: Path | None = None) -> None:
    from . import comparison as _compare
    from . import report as _report

    if resume is not None:
        results = _compare.resume(resume, console=console)
        folder = resume
    else:
        results = _compare.compare(cfg, force=force, console=console)
        folder = Path(cfg.out)
    out = _stdout()
    out.print(_report.summary_table(results))
    if results.parity:
        out.print(_report.parity_table(results))
        if _report.localization_rows(results):
            out.print(_report.localization_table(results))
    if results.arbitration:
        out.print(_report.arbitration_table(results))
    if _report.sides_rows(results):
        out.print(_report.sides_table(results))
    if results.quality:
        out.print(_report.quality_table(results))
    out.print(f"report: {folder / 'report.html'} (also report.md, results.json, results.jsonl)")
    code = _compare.exit_code(results)
    if code:
        out.print(f"[red]parity {results.verdict}[/]: see the table above and the report")
    raise typer.Exit(code)


@app.command("compare")
def compare(
    config: Path | None = _SHARED["config"], model: str | None = _SHARED["model"],
    suite: Path | None = _SHARED["suite"],
    backends_: str | None = typer.Option(None, "--backends", help="the sides, in order [vllm,jax]; three or more compare every pair (e.g. vllm,jax,hf)"),
    jax_model: str | None = typer.Option(None, "--jax-model", help="another model on the JAX side"),
    vllm_model: str | None = typer.Option(None, "--vllm-model", help="another model on the vLLM side"),
    vllm_url: str | None = _SHARED["vllm_url"], out: Path | None = _SHARED["out"],
    force: bool = _SHARED["force"], max_tokens: int | None = _SHARED["max_tokens"],
    tolerance: str | None = typer.Option(None, "--tolerance", help="auto, float32 or bfloat16 [auto]"),
    seed: int | None = _SHARED["seed"], no_bench: bool = _SHARED["no_bench"],
    num_prompts: int | None = _SHARED["num_prompts"], output_len: int | None = _SHARED["output_len"],
    concurrency: str | None = _SHARED["concurrency"], batch_sizes: str | None = _SHARED["batch_sizes"],
    resume: Path | None = typer.Option(None, "--resume", help="continue the interrupted run in this folder "
                                          "(its settings; finished prompts and levels are kept)"),
    side: list[str] = typer.Option([], "--side", help="a named side NAME=ENGINE[,model=M][,bound=B|report]"
                                   "[,OPTION=VALUE...], e.g. fp8kv=vllm,kv_cache_dtype=fp8 (repeat for each)"),
    reference: str | None = typer.Option(None, "--reference", help="the side every other side is compared with"),
    localize: str | None = typer.Option(None, "--localize", help="compare the sides layer by layer: failing (the "
                                        "prompts whose log-probs fail), all, or off [failing, where both sides can]; "
                                        "given, a managed vLLM server starts with its layer-capture extension"),
    quality: bool = typer.Option(False, "--quality", help="also each side's perplexity (evals/quality) and "
                                 "log-likelihood accuracy (evals/quality/knowledge.yaml) against the reference side"),
) -> None:
    """Both backends on one suite: parity, throughput, memory; writes a report. Exit 0 pass, 1 fail, 2 usage."""
    if resume is not None:
        _run(None, False, resume)
        return
    sides = [x.strip() for x in backends_.split(",")] if backends_ else None
    if sides is not None and len(sides) < 2:
        raise typer.BadParameter(f"--backends {backends_!r}: name two or more sides, e.g. vllm,jax or vllm,jax,hf "
                                 "(one side: paritybench run)")
    named = [_side(x) for x in side] or None
    cfg = _config(config, sides, sides=named, reference=reference, model=model, suite=str(suite) if suite else None, jax_model=jax_model,
                  vllm_model=vllm_model, vllm_url=vllm_url, out=str(out) if out else None, max_tokens=max_tokens,
                  tolerance=tolerance, seed=seed, bench_enabled=False if no_bench else None,
                  bench_num_prompts=num_prompts, bench_output_len=output_len, bench_concurrency=concurrency,
                  bench_batch_sizes=batch_sizes, localize=localize,
                  layer_capture=True if localize and localize != "off" else None,
                  quality={"enabled": True} if quality else None)
    if len(cfg.backends) < 2:
        raise typer.BadParameter(f"compare needs two or more backends, the settings name {cfg.backends}; "
                                 "one side: paritybench run")
    _run(cfg, force)


@app.command("localize")
def localize(
    config: Path | None = _SHARED["config"], model: str | None = _SHARED["model"],
    suite: Path | None = _SHARED["suite"],
    backends_: str | None = typer.Option(None, "--backends", help="the two sides, in order [vllm,jax]"),
    jax_model: str | None = typer.Option(None, "--jax-model", help="another model on the JAX side"),
    vllm_model: str | None = typer.Option(None, "--vllm-model", help="another model on the vLLM side"),
    out: Path | None = _SHARED["out"], force: bool = _SHARED["force"], max_tokens: int | None = _SHARED["max_tokens"],
) -> None:
    """Where the sides part, layer by layer, on every prompt of a suite (parity only, no benchmark);
    writes a report. Needs a vLLM server paritybench starts itself. Exit 0 pass, 1 fail, 2 usage."""
    sides = [x.strip() for x in backends_.split(",")] if backends_ else None
    cfg = _config(config, sides, model=model, suite=str(suite) if suite else None, jax_model=jax_model,
                  vllm_model=vllm_model, out=str(out) if out else None, max_tokens=max_tokens,
                  bench_enabled=False, localize="all", layer_capture=True)
    if len(cfg.backends) != 2:
        raise typer.BadParameter(f"localize compares two sides, the settings name {cfg.backends}")
    if cfg.out == "out/compare":
        cfg = cfg.model_copy(update={"out": "out/localize"})
    _run(cfg, force)


@app.command("run")
def run(
    backend: str = typer.Option(..., "--backend", help="engine: vllm, jax, hf (or a plug-in)"),
    config: Path | None = _SHARED["config"], model: str | None = _SHARED["model"],
    suite: Path | None = _SHARED["suite"], vllm_url: str | None = _SHARED["vllm_url"],
    out: Path | None = _SHARED["out"], force: bool = _SHARED["force"],
    max_tokens: int | None = _SHARED["max_tokens"],
    temperature: float | None = typer.Option(None, "--temperature", help="answers' temperature [0: greedy]"),
    seed: int | None = _SHARED["seed"], no_bench: bool = _SHARED["no_bench"],
    num_prompts: int | None = _SHARED["num_prompts"], output_len: int | None = _SHARED["output_len"],
    concurrency: str | None = _SHARED["concurrency"], batch_sizes: str | None = _SHARED["batch_sizes"],
) -> None:
    """One backend alone: answers to a suite, throughput and memory; writes a report."""
    cfg = _config(config, [backend], model=model, suite=str(suite) if suite else None, vllm_url=vllm_url,
                  out=str(out) if out else None, max_tokens=max_tokens, temperature=temperature,
                  seed=seed, bench_enabled=False if no_bench else None, bench_num_prompts=num_prompts,
                  bench_output_len=output_len, bench_concurrency=concurrency, bench_batch_sizes=batch_sizes)
    if cfg.out == "out/compare":
        cfg = cfg.model_copy(update={"out": f"out/run-{backend}"})
    _run(cfg, force)


suites_app = typer.Typer(no_args_is_help=True, help="Prompt suites (evals/*.yaml).")
app.add_typer(suites_app, name="suites")


@suites_app.command("check")
def suites_check(paths: list[Path] = typer.Argument(..., help="suite files")) -> None:
    """Validate suites without running them: schema, ids, scorers, media. Exit 1 if any problem."""
    from . import suites as _suites

    problems = _suites.check(paths)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        raise typer.Exit(1)
    for path in paths:
        s = _suites.read(path)
        mods = sorted({m for r in s.requests for m in r.modalities})
        print(f"{path}: suite {s.name}: {len(s.prompts)} prompts ({', '.join(mods)}), all valid")


@app.command("report")
def report(
    results: list[Path] = typer.Argument(..., help="one or two results.json files (or run folders)"),
    out: Path | None = typer.Option(None, "--out", help="where to write [the (second) run's folder]"),
) -> None:
    """Re-render one run's report, or show what changed between two runs (verdicts, metrics, versions)."""
    from . import report as _report

    if len(results) not in (1, 2):
        raise typer.BadParameter("give one results file to re-render, or two to compare")
    runs = [_report.load(p) for p in results]
    term = _stdout()
    if len(runs) == 1:
        folder = out or (results[0] if results[0].is_dir() else results[0].parent)
        page = _report.render(runs[0], folder)
        term.print(_report.summary_table(runs[0]))
        term.print(f"report: {page}")
        return
    folder = out or (results[1] if results[1].is_dir() else results[1].parent)
    d = _report.render_diff(runs[0], runs[1], folder, names=(str(results[0]), str(results[1])))
    term.print(f"overall verdict: {d['verdict']['before']} -> {d['verdict']['after']}")
    t = Table(title="changed verdicts")
    for col in ("id", "before", "after"):
        t.add_column(col)
    for v in d["verdicts"]:
        t.add_row(v["id"], v["before"], v["after"])
    term.print(t if d["verdicts"] else "changed verdicts: none")
    t = Table(title="metrics")
    for col in ("metric", "before", "after", "change"):
        t.add_column(col)
    for r in _report.diff_rows(d):
        t.add_row(*r.values())
    term.print(t)
    for p in d["packages"]:
        term.print(f"package {p['package']}: {p['before']} -> {p['after']}")
    term.print(f"differences: {folder / 'diff.html'} and {folder / 'diff.md'}")


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
    port: int | None = typer.Option(None, "--port", help="default: a free port"),
    dtype: str | None = typer.Option(None, "--dtype"),
    max_model_len: int | None = typer.Option(None, "--max-model-len"),
    gpu_memory_utilization: float | None = typer.Option(None, "--gpu-memory-utilization"),
    tensor_parallel_size: int | None = typer.Option(None, "--tensor-parallel-size"),
    kv_cache_dtype: str | None = typer.Option(None, "--kv-cache-dtype"),
    quantization: str | None = typer.Option(None, "--quantization"),
    speculative_config: str | None = typer.Option(None, "--speculative-config", help="JSON, as vLLM takes it"),
    enforce_eager: bool | None = typer.Option(None, "--enforce-eager/--no-enforce-eager",
                                                 help="default: eager on CPU"),
) -> None:
    """Run a managed vLLM server (any further flags go to `vllm serve`) until Ctrl-C or SIGTERM."""
    import signal
    import time

    # Ctrl-C / SIGINT stops the server even when started in the background (where a shell makes
    # Python inherit SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    from backends import models
    from backends.vllm import VllmServer

    opts = _vllm_options(port, dtype, max_model_len, gpu_memory_utilization, tensor_parallel_size, kv_cache_dtype,
                         quantization, speculative_config, enforce_eager, ctx.args)
    m = models.resolve(model, want="hf")
    defaults = {"dtype": m.dtype} if m.dtype else {}
    assert m.hf_source is not None  # resolve(want="hf") always names a folder or a hub id
    with VllmServer(m.hf_source, served_model_name=m.name, **{**defaults, **opts}) as server:
        console.print(f"vLLM serving {m.name} at [bold]{server.url}[/] (healthy after {server.startup_s:.1f} s; "
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
    backend: str = typer.Option("jax", "--backend", help="engine: vllm, jax, hf (or a plug-in)"),
    model: str = typer.Option("tiny-gemma3", "--model"),
    vllm_url: str | None = typer.Option(None, "--vllm-url", help="attach to a running vLLM (http://host:8000/v1); "
                                           "API key from VLLM_API_KEY"),
    max_tokens: int = typer.Option(24, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    seed: int | None = typer.Option(None, "--seed"),
    logprobs: int = typer.Option(0, "--logprobs", help="top alternatives per token (0-20)"),
) -> None:
    """One prompt through one backend: text, token ids, log-probs and timings (as JSON)."""
    import json

    import backends

    opts = {"url": vllm_url} if vllm_url else {}
    with backends.get(backend, model=model, **opts) as b:
        [g] = b.generate([b.capabilities.text_request(prompt)],
                         backends.SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                                                 logprobs=logprobs))
    print(json.dumps(g.model_dump(mode="json"), indent=1))


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what}: give numbers separated by commas, e.g. 1,4,16 (got {text!r})") from None


@app.command("bench")
def bench(
    backend: str = typer.Option(..., "--backend", help="engine: vllm, jax, hf (or a plug-in)"),
    model: str = typer.Option("tiny-gemma3", "--model"),
    vllm_url: str | None = typer.Option(None, "--vllm-url", help="attach to a running vLLM (API key from VLLM_API_KEY)"),
    suite: Path | None = typer.Option(None, "--suite", help="prompts from a suite YAML instead of synthetic ones"),
    num_prompts: int = typer.Option(32, "--num-prompts", help="synthetic prompts (or suite prompts repeated up to this)"),
    input_len: int = typer.Option(64, "--input-len", help="synthetic prompt length, tokens"),
    output_len: int = typer.Option(32, "--output-len", help="output tokens per request"),
    range_ratio: float = typer.Option(0.0, "--range-ratio", help="lengths drawn from [L(1-r), L(1+r)]"),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--stop-at-eos", help="fixed output lengths"),
    concurrency: str = typer.Option("1,4,16", "--concurrency", help="streaming engines (vLLM): max concurrency levels"),
    request_rate: float = typer.Option(float("inf"), "--request-rate", help="vLLM: requests/s (inf: all at once)"),
    burstiness: float = typer.Option(1.0, "--burstiness", help="vLLM: gamma shape of arrivals (1 = Poisson)"),
    batch_sizes: str = typer.Option("1,4,16", "--batch-sizes", help="in-process engines (JAX, hf): batch sizes"),
    warmups: int = typer.Option(2, "--warmups", help="vLLM: warm-up requests before each level"),
    percentiles: str = typer.Option("50,90,99", "--percentiles", help="latency percentiles"),
    seed: int = typer.Option(0, "--seed"),
    memory_interval: float = typer.Option(1.0, "--memory-interval", help="seconds between memory samples"),
    out: Path = typer.Option(Path("out/bench.json"), "--out", help="results JSON"),
) -> None:
    """Throughput, latency and memory of one backend (vLLM fields as `vllm bench serve --save-result`)."""
    import json

    import backends

    from . import bench as _bench
    from . import report as _report
    from . import roofline, suites

    pct = _floats(percentiles, "--percentiles")
    backends.keep_library_log_in(out.parent)  # the libraries' own output beside the results
    opts: dict = {"url": vllm_url} if vllm_url else {}
    if "max_concurrency" in backends.option_names(backend):  # an engine that sends requests concurrently
        opts["max_concurrency"] = int(max(_floats(concurrency, "--concurrency")))
    with backends.get(backend, model=model, **opts) as b:
        serving = isinstance(b, backends.TimedStreaming)
        levels = _floats(concurrency if serving else batch_sizes, "--concurrency/--batch-sizes")
        if suite is not None:
            _, reqs = suites.load(suite)
            reqs = [reqs[i % len(reqs)] for i in range(max(num_prompts, len(reqs)))]
            wl = _bench.from_requests(str(suite), reqs, output_len, ignore_eos=ignore_eos, seed=seed)
        else:
            wl = _bench.synthetic(b, num_prompts=num_prompts, input_len=input_len, output_len=output_len,
                                  range_ratio=range_ratio, seed=seed, ignore_eos=ignore_eos)
        # the roofline at the workload's mean lengths (a suite's prompts: their token counts)
        mean_in = input_len if suite is None else round(sum(len(b.prompt_ids(r)) for r in wl.requests) / len(wl.requests))
        roof = roofline.for_levels(b.model_settings(), [int(x) for x in levels], mean_in,
                                   round(sum(wl.output_lens) / len(wl.output_lens)), roofline.measure_machine())
        settings = _bench.LevelSettings(request_rate=request_rate, burstiness=burstiness, warmups=warmups,
                                        percentiles=pct, memory_interval=memory_interval)
        kind = "concurrency" if serving else "batch size"
        runs = _bench.run_levels(
            b, wl, [int(x) for x in levels], settings,
            before_level=lambda level: console.print(f"[bold]{backend}[/] {kind} {level} ..."),
            on_level=lambda level, run, _: _print_level(run, roof.tok_s.get(level)))
        if roof.note:
            console.print(roof.note)
        result = {"backend": backend, "model": model, "workload": wl.describe(), "describe": b.describe(),
                  "runs": [r.model_dump(mode="json") for r in runs], "roofline": roof.model_dump(mode="json")}
    out.parent.mkdir(parents=True, exist_ok=True)
    _report.write_atomic(out, json.dumps(result, indent=1, default=str))
    console.print(f"results: {out}")


def _print_level(r: ServingRun | BatchRun, roof: float | None) -> None:
    from .results import ServingRun

    rss = (r.memory.peak_rss_bytes or 0) / 2**30
    if isinstance(r, ServingRun):
        console.print(f"  completed {r.completed} failed {r.failed}  output {r.output_throughput:.1f} tok/s  "
                      f"TTFT median {r.median_ttft_ms:.1f} ms  TPOT median {r.median_tpot_ms:.2f} ms  "
                      f"ITL median {r.median_itl_ms:.2f} ms  peak RSS {rss:.2f} GiB")
    else:
        console.print(f"  steady {r.output_throughput:.1f} tok/s  compile {r.compile_s:.1f} s  "
                      f"compilations after warm-up {r.compilations_after_warmup}  peak RSS {rss:.2f} GiB")
    if roof:
        console.print(f"  roofline {roof:.0f} tok/s: this level reaches {r.output_throughput / roof:.0%} of it")


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="show the libraries' start-up output "
                                          "(TensorFlow, grain) instead of keeping it in the library log")) -> None:
    if verbose:
        os.environ["PARITYBENCH_VERBOSE"] = "1"


def jax_compilation_cache() -> None:
    """Each run of a command compiles the same JAX programs again (the sampler per batch size and
    prompt-length bucket, the scoring forward pass per length bucket: about 40 s of the demo's
    comparison on 2 cores) unless JAX keeps them: its persistent compilation cache, in paritybench's
    cache folder. Results do not depend on it; compile times do (the JAX side's `describe()` names
    it, and a cached program counts as a compilation, as JAX reports it). Set
    JAX_COMPILATION_CACHE_DIR to use another folder, or to an empty value to compile everything."""
    from backends.models import cache_root

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_root() / "jax-compilation-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the small programs add up too
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def execute(argv: list[str]) -> int:
    """The command line `argv` (without the program's name) run in this process: its exit code, its
    errors as one line on stderr. `main` is this with the process's set-up (signals, caches)."""
    from backends import ParitybenchError

    try:
        code = app(argv, prog_name="paritybench", standalone_mode=False)  # click returns a command's typer.Exit code here
    except ParitybenchError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)  # a server's log tail stays in the results
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; what was measured so far is in the results files", file=sys.stderr)
        return 130
    except SystemExit as e:
        if e.code == 143:
            print("error: terminated; what was measured so far is in the results files", file=sys.stderr)
        raise
    except typer.Exit as e:
        return e.exit_code
    except (typer.BadParameter, typer.Abort) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            return 2
        raise
    if code == 130:  # typer turns KeyboardInterrupt into exit code 130
        print("error: interrupted; what was measured so far is in the results files", file=sys.stderr)
    return code if isinstance(code, int) else 0


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    jax_compilation_cache()
    from backends import install_signal_handlers

    install_signal_handlers()  # SIGINT / SIGTERM unwind: results kept, servers stopped
    sys.exit(execute(sys.argv[1:]))


if __name__ == "__main__":
    main()
