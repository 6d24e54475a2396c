"""The JAX half of the main job: build the tiny model, generate a suite, check and report.

(The full two-backend comparison replaces this once the vLLM backend lands.)
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import backends
from backends import SamplingParams

from . import suites


def run(out: Path, *, model: str = "tiny-gemma3", suite: Path | None = None, max_tokens: int = 24,
        console: Console | None = None) -> dict:
    import evals

    console = console or Console()
    suite_name, requests = suites.load(suite or evals.path("smoke"))
    sampling = SamplingParams(max_tokens=max_tokens, logprobs=5, seed=0)
    t0 = time.perf_counter()
    with console.status(f"loading {model} on the JAX backend (builds tiny models on first use)"):
        b = backends.get("jax", model=model)
    setup_s = time.perf_counter() - t0
    with b:
        with console.status("first generate call (includes XLA compilation)"):
            first = b.generate(requests, sampling)
        with console.status("second generate call (steady state)"):
            gens = b.generate(requests, sampling)
        mem = b.memory()
    rows = []
    for r, g, g0 in zip(requests, gens, first):
        argmax = [t[0][0] for t in g.top_logprobs or []]
        rows.append({
            "id": r.id, "prompt_tokens": len(g.prompt_ids), "output_tokens": len(g.token_ids),
            "finish_reason": g.finish_reason, "text": g.text,
            "mean_logprob": sum(g.logprobs) / max(len(g.logprobs), 1),
            "argmax_equals_greedy": argmax == g.token_ids,
            "repeatable": g.token_ids == g0.token_ids,
        })
    first_s, steady_s = first[0].timings.e2e_s, gens[0].timings.e2e_s
    n_out = sum(len(g.token_ids) for g in gens)
    result = {
        "model": model, "suite": suite_name, "backend": "jax", "sampling": sampling.model_dump(mode="json"),
        "setup_and_load_s": setup_s, "load_s": b.load_s,
        "first_call_s": first_s, "first_call_compile_s": first[0].timings.compile_s,
        "steady_call_s": steady_s, "steady_output_tok_s": n_out / steady_s if steady_s else None,
        "memory": mem.model_dump(mode="json"), "prompts": rows,
        "environment": {"python": platform.python_version(), "machine": platform.machine(),
                        "versions": _versions()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(_markdown(result))
    table = Table(title=f"{model} on JAX ({suite_name} suite, greedy, {max_tokens} tokens)")
    for col in ("id", "prompt tok", "out tok", "finish", "mean logprob", "argmax=greedy", "repeatable", "text"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["id"], str(row["prompt_tokens"]), str(row["output_tokens"]), row["finish_reason"],
                      f"{row['mean_logprob']:.3f}", _tick(row["argmax_equals_greedy"]), _tick(row["repeatable"]),
                      repr(row["text"][:30]))
    console.print(table)
    console.print(f"setup+load {setup_s:.1f} s | first call {first_s:.2f} s (compile {result['first_call_compile_s']:.2f} s) | "
                  f"steady call {steady_s:.3f} s, {result['steady_output_tok_s']:.0f} output tok/s | "
                  f"RSS {mem.rss_bytes / 2**20:.0f} MiB")
    console.print(f"report: {out / 'report.md'} and {out / 'results.json'}")
    return result


def _tick(ok: bool) -> str:
    return "yes" if ok else "NO"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("gemma", "jax", "jaxlib", "flax", "orbax-checkpoint", "transformers", "paritybench"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _markdown(r: dict) -> str:
    lines = [
        f"# paritybench: {r['model']} on the JAX backend",
        "",
        f"Suite `{r['suite']}`, sampling `{json.dumps(r['sampling'])}`.",
        "",
        "| prompt | prompt tokens | output tokens | finish | mean log-prob | argmax = greedy | repeatable | text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in r["prompts"]:
        text = p["text"][:40].replace("|", "\\|").replace("\n", "\\n")
        lines.append(f"| {p['id']} | {p['prompt_tokens']} | {p['output_tokens']} | {p['finish_reason']} | "
                     f"{p['mean_logprob']:.3f} | {_tick(p['argmax_equals_greedy'])} | {_tick(p['repeatable'])} | `{text}` |")
    m = r["memory"]
    lines += [
        "",
        "| measure | value |", "|---|---|",
        f"| set-up + model load | {r['setup_and_load_s']:.1f} s |",
        f"| first generate call (compile) | {r['first_call_s']:.2f} s ({r['first_call_compile_s']:.2f} s compiling) |",
        f"| steady generate call | {r['steady_call_s']:.3f} s ({r['steady_output_tok_s']:.0f} output tok/s) |",
        f"| RSS / peak RSS | {m['rss_bytes'] / 2**20:.0f} / {m['peak_rss_bytes'] / 2**20:.0f} MiB |",
        f"| live JAX arrays | {m['live_array_bytes'] / 2**20:.1f} MiB |",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["environment"]["versions"].items()),
        "",
    ]
    return "\n".join(lines)
