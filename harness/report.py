"""Reports of a comparison's results: report.md, a self-contained report.html (plots embedded),
terminal tables, and the differences between two runs (say before and after a vLLM upgrade).
Everything here reads the typed records of `harness.results`."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

import backends
from backends import InputError, models

from . import causes
from .config import CompareConfig
from .findings import PromptParity
from .results import AnswerRow, BatchRun, ComparisonResults, ServingRun, level_kind, upgrade

GUIDE_ROWS = ("Setup", "Model loading", "Memory efficiency", "Throughput", "API", "Multi-GPU", "Quantization",
              "Parity")


# ----------------------------------------------------------------------------- loading


def load(path: str | Path) -> ComparisonResults:
    """The results in a results.json file or a run folder holding one (older layouts upgraded)."""
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
    try:
        return ComparisonResults.model_validate(upgrade(data))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InputError(f"{p}: field {where}: {first['msg']} (not a results file this paritybench reads)") from None


# ----------------------------------------------------------------------------- numbers


def _gib(x: float | None) -> str:
    """Bytes as GiB, or MiB below 1 GiB."""
    if x is None:
        return "n/a"
    return f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def _runs(results: ComparisonResults, backend: str) -> list[ServingRun | BatchRun]:
    section = results.bench.get(backend)
    return list(section.runs) if section else []


def best_throughput(results: ComparisonResults, backend: str) -> tuple[float, str, int | None] | None:
    """(output tokens/s, level kind, level) of the fastest level of `backend`."""
    runs = _runs(results, backend)
    if not runs:
        return None
    best = max(runs, key=lambda r: r.output_throughput)
    return (best.output_throughput, *level_kind(best))


def peak_memory(results: ComparisonResults, backend: str) -> dict[str, float | None]:
    """Per memory field, the largest value seen at load or in any measured level."""
    runs = _runs(results, backend)
    setup = results.setup.get(backend)
    at_load = setup.memory if setup is not None else None
    out: dict[str, float | None] = {}
    for f in ("rss_bytes", "device_bytes_in_use", "device_peak_bytes", "kv_cache_usage", "live_array_bytes"):
        vals = [r.memory.peak(f) for r in runs] + [getattr(at_load, f) if at_load is not None else None]
        known = [v for v in vals if v is not None]
        out[f] = max(known) if known else None
    return out


def parity_counts(results: ComparisonResults) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in results.parity.prompts if results.parity else []:
        counts[p.verdict] = counts.get(p.verdict, 0) + 1
    return counts


# ----------------------------------------------------------------------------- the guide's table


def side_title(name: str, short: bool = False) -> str:
    """A side's title in tables and plots: a side named after its engine gets the engine's own title
    (`display_title`, "vLLM", "JAX (gemma library)"); a named side keeps its name."""
    if name not in backends.engines():
        return name
    try:
        return backends.engine_class(name).display_title(short)
    except ImportError:  # a plug-in engine that is not installed here
        return name


def _versus(results: ComparisonResults) -> str:
    return " vs ".join(side_title(n, short=True) for n in results.sides())


def _against_reference(results: ComparisonResults, name: str) -> str:
    """'measured vs REF: VERDICT, max |Δlogprob| X, N output tok/s (R x)' for a non-reference side."""
    ref = results.config.get("reference")
    rep = (results.pairs or {}).get(f"{ref}-{name}")
    if not ref or rep is None:
        return ""
    gap = max((p.agreement.max_abs_dlogprob for p in rep.prompts if p.agreement), default=None)
    text = f"measured vs {ref}: {rep.verdict}" + (" (report only)" if rep.report_only else "")
    if gap is not None:
        text += f", max |Δlogprob| {gap:.2g}"
    mine, theirs = best_throughput(results, name), best_throughput(results, ref)
    if mine and theirs:
        text += f", {mine[0]:.0f} output tok/s ({mine[0] / theirs[0]:.2f}x)"
    return text


def guide_table(results: ComparisonResults) -> tuple[list[str], list[tuple[str, ...]]]:
    """The provider guide's table (one column per side), filled with what each engine says of
    itself (`guide_facts`) and what this run measured: set-up and load seconds, peak memory, best
    throughput and where, parity."""
    names = results.sides()
    cells: dict[str, dict[str, str]] = {row: {} for row in GUIDE_ROWS}
    for name in names:
        s = results.setup.get(name)
        facts = s.guide if s is not None else {}
        for row in GUIDE_ROWS:
            cells[row][name] = facts.get(row, "n/a") if s is not None else "not run"
        if s is None:
            continue
        cells["Setup"][name] += f"; set up in {_s(s.setup_s)}"
        cells["Model loading"][name] += f"; load {_s(s.load_s)}"
        m = peak_memory(results, name)
        kv = m.get("kv_cache_usage")
        mem = [f"peak KV-cache use {kv * 100:.2g}%"] if kv is not None else []
        mem.append(f"RSS peak {_gib(m['rss_bytes'])}")
        if m.get("live_array_bytes"):
            mem.append(f"live arrays {_gib(m['live_array_bytes'])}")
        if m.get("device_bytes_in_use"):
            mem.append(f"device {_gib(m['device_bytes_in_use'])}")
        if m.get("device_peak_bytes"):
            mem.append(f"device peak {_gib(m['device_peak_bytes'])}")
        cells["Memory efficiency"][name] += "; " + ", ".join(mem)
        best = best_throughput(results, name)
        cells["Throughput"][name] = (f"{best[0]:.0f} output tok/s (best, at {best[1]} {best[2]})" if best
                                     else "not measured")
        ref = results.config.get("reference")
        pair = (results.pairs or {}).get(f"{ref}-{name}")
        if pair is not None:  # each side's own comparison with the reference
            counts: dict[str, int] = {}
            for p in pair.prompts:
                counts[p.verdict] = counts.get(p.verdict, 0) + 1
            cells["Parity"][name] = (f"vs {ref}: {pair.verdict}" + (" (report only)" if pair.report_only else "")
                                     + ": " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
        elif name == ref:
            cells["Parity"][name] = "the reference"
        elif results.parity:
            c = parity_counts(results)
            cells["Parity"][name] = f"{results.verdict}: " + ", ".join(f"{n} {v}" for v, n in sorted(c.items()))
        measured = _against_reference(results, name)
        if measured:  # what this configuration changes, measured against the reference side
            for row in ("Multi-GPU", "Quantization"):
                cells[row][name] += f"; {measured}"
    header = [""] + [side_title(n) for n in names]
    return header, [(row, *(cells[row][n] for n in names)) for row in GUIDE_ROWS]


# ----------------------------------------------------------------------------- plots


def _most_samples(runs: list[ServingRun | BatchRun]) -> ServingRun | BatchRun:
    """The run whose latency histogram has the most values (a batch engine's smallest batch;
    among equals, the highest level)."""
    def n(r: ServingRun | BatchRun) -> int:
        return len(r.latencies) if isinstance(r, ServingRun) else len(r.batch_latencies_s)

    return max(reversed(runs), key=n)


_COLORS = ["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:red"]


def plots(results: ComparisonResults) -> dict[str, bytes]:
    """PNG images by name; a plot without data is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out[name] = buf.getvalue()

    sides = [(n, runs) for n in results.sides() if (runs := _runs(results, n))]
    if sides:
        save(_latency_plot(plt, sides), "latency")
        save(_throughput_plot(plt, sides), "throughput")
        save(_memory_plot(plt, sides), "memory")
    if (fig := _dlogprob_plot(plt, results)) is not None:
        save(fig, "dlogprob")
    if (fig := _layers_plot(plt, results)) is not None:
        save(fig, "layers")
    return out


def _latency_plot(plt: Any, sides: list[tuple[str, list[ServingRun | BatchRun]]]) -> Any:
    fig, axes = plt.subplots(1, len(sides), figsize=(5 * len(sides), 3.4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], sides):
        r = _most_samples(runs)
        kind, level = level_kind(r)
        if isinstance(r, ServingRun):
            e2el = [x * 1000 for x in r.latencies if x]
            ttft = [x * 1000 for x in r.ttfts if x]
            for values, label in ((e2el, "E2EL"), (ttft, "TTFT")):  # each over its own range: far apart
                ax.hist(values, bins=15, label=label, alpha=0.8)
            ax.set_title(f"{side_title(name)} latency per request ({kind} {level})")
            ax.legend()
        else:
            ax.hist([x * 1000 for x in r.batch_latencies_s], bins=20, color="tab:green")
            ax.set_title(f"{side_title(name)} latency per batch ({kind} {level})")
        ax.set_xlabel("ms")
    return fig


def _throughput_plot(plt: Any, sides: list[tuple[str, list[ServingRun | BatchRun]]]) -> Any:
    fig, axes = plt.subplots(1, len(sides), figsize=(5 * len(sides), 3.4), squeeze=False)
    for ax, (name, runs), color in zip(axes[0], sides, _COLORS):
        levels = [level_kind(r)[1] for r in runs]
        ax.plot(levels, [r.output_throughput for r in runs], "o-", color=color)
        ax.set_xticks(levels)
        ax.set_xlabel(level_kind(runs[0])[0])
        ax.set_title(f"{side_title(name)} output tokens/s")
    return fig


def _memory_plot(plt: Any, sides: list[tuple[str, list[ServingRun | BatchRun]]]) -> Any:
    fig, ax = plt.subplots(figsize=(10, 3.4))
    for (name, runs), color in zip(sides, _COLORS):
        longest = max(runs, key=lambda r: r.duration)  # the most memory samples
        tl, (kind, level) = longest.memory.timeline, level_kind(longest)
        if tl.get("rss_bytes"):
            ax.plot(tl["t_s"], [(v or 0) / 2**20 for v in tl["rss_bytes"]], "o-",
                    label=f"{side_title(name)} RSS ({kind} {level})", color=color)
        if any(tl.get("device_bytes_in_use") or []):
            ax.plot(tl["t_s"], [(v or 0) / 2**20 for v in tl["device_bytes_in_use"]], "s--",
                    label=f"{side_title(name)} device ({kind} {level})", color=color)
    ax.set_xlabel("seconds into each side's longest measured run")
    ax.set_ylabel("MiB")
    ax.set_title("Memory over time")
    ax.legend()
    return fig


def _dlogprob_plot(plt: Any, results: ComparisonResults) -> Any | None:
    prompts = results.parity.prompts if results.parity else []
    seqs = [(p.id, name, v) for p in prompts for name, v in (p.agreement.per_token if p.agreement else {}).items()
            if v]
    if not seqs or results.parity is None:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for pid, name, v in seqs:
        ax.plot(range(len(v)), [max(x, 1e-9) for x in v], ".-", label=f"{pid} ({name})")
    _log_axes(ax, (results.parity.tolerance.logprob_pass, "pass bound"), "token position in the generated sequence",
              "|Δ log-prob|", "Per-token |Δ log-prob| between the backends (teacher-forced)")
    return fig


def _layers_plot(plt: Any, results: ComparisonResults) -> Any | None:
    located = [p for p in (results.parity.prompts if results.parity else []) if p.localization and p.localization.rows]
    if not located:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for p in located[:10]:
        loc = p.localization
        assert loc is not None
        x = [r.index for r in loc.rows]
        line, = ax.plot(x, [max(r.rel_max, 1e-9) for r in loc.rows], "o-", label=f"{p.id}")
        local = [(r.index, max(r.local_rel_max, 1e-9)) for r in loc.rows if r.local_rel_max is not None]
        if local:
            ax.plot(*zip(*local), "x--", color=line.get_color(), label=f"{p.id} (local pass)")
    _log_axes(ax, (located[0].localization.threshold, "threshold"),  # type: ignore[union-attr]
              "depth (-1 embedding, 0..N-1 layers, N final norm)", "max |a - b| / max |a|",
              "Where the sides part: the residual stream after each layer")
    return fig


def _log_axes(ax: Any, bound: tuple[float, str], xlabel: str, ylabel: str, title: str) -> None:
    """A log-scale plot of differences with its bound as a dotted line."""
    ax.axhline(bound[0], color="gray", ls=":", label=bound[1])
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)


# ----------------------------------------------------------------------------- parity rows


def divergence_text(p: PromptParity) -> str:
    d = p.divergence
    if d:
        show = lambda t: "(stopped)" if t is None else repr(t.text)  # noqa: E731
        return f"token {d.index}: {show(d.a)} vs {show(d.b)}"
    if p.prompt_diff:
        return f"prompt ids differ at position {p.prompt_diff.position}"
    return "none"


def output_text(p: PromptParity, width: int = 160) -> str:
    """What the sides wrote (greedy): once when the texts are equal, else each side's."""
    def short(t: str) -> str:
        r = repr(t)
        return r if len(r) <= width else r[:width - 4] + "...'"

    if not p.a or not p.b:
        return ""
    if p.a.text == p.b.text:
        return short(p.a.text)
    return f"{short(p.a.text)} | {short(p.b.text)}"


def parity_rows(results: ComparisonResults) -> list[dict[str, str]]:
    rows = []
    for p in results.parity.prompts if results.parity else []:
        ag = p.agreement
        rows.append({
            "id": p.id, "modalities": ",".join(p.modalities), "verdict": p.verdict,
            "max |Δlogprob|": f"{ag.max_abs_dlogprob:.2e}" if ag else "n/a",
            "greedy equal": {True: "yes", False: "no", None: "n/a"}[p.greedy_equal],
            "first divergence": divergence_text(p),
            "output (greedy)": output_text(p),
            "reasons": "; ".join(p.reasons),
        })
    return rows


def cause_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """The causes parity named, grouped by kind (`harness.causes`): for each, the prompts where it
    was confirmed and those where it was only a hint, what it means and how it is confirmed."""
    rep = results.parity
    seen: dict[str, dict[str, list[str]]] = {}
    for p in rep.prompts if rep else []:
        for c in p.causes:
            entry = seen.setdefault(c.name, {"confirmed": [], "not confirmed": []})
            entry["confirmed" if c.explains else "not confirmed"].append(p.id)
    order = list(causes.KINDS)
    rows = []
    for name in sorted(seen, key=lambda n: (order.index(causes.kind(n)), n)):
        info = causes.info(name)
        rows.append({"kind": info.kind, "cause": name, "confirmed on": ", ".join(seen[name]["confirmed"]) or "-",
                     "named, not confirmed, on": ", ".join(seen[name]["not confirmed"]) or "-",
                     "meaning": info.meaning, "confirmed by": info.confirmed_by})
    return rows


def settings_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """Each side's effective settings where engines part by design (what each side really ran);
    empty when no side reports any."""
    rep = results.parity
    if rep is None:
        return []
    sides = {rep.a.get("backend", "a"): rep.a.get("settings") or {}, rep.b.get("backend", "b"): rep.b.get("settings") or {}}
    if not any(sides.values()):
        return []
    rows = []
    for key, title in ((f, st.title) for f, st in causes.SETTINGS.items()):
        if any(key in s for s in sides.values()):
            vals = {n: ("unknown" if key not in s else "none" if s[key] is None else
                        ",".join(map(str, s[key])) if isinstance(s[key], list) else str(s[key])[:16])
                    for n, s in sides.items()}
            differ = len({v for v in vals.values()}) > 1 and "unknown" not in vals.values()
            rows.append({"setting": title, **vals, "differs": "yes" if differ else ""})
    ca, cb = (s.get("config") for s in sides.values())
    if ca is not None and cb is not None:  # the other keys of the configurations they consume
        for key, va, vb in models.config_diff(ca, cb):
            if not models.SETTING_OF_KEY.get(key):
                rows.append({"setting": f"config {key}", **dict(zip(sides, (str(va)[:16], str(vb)[:16]))),
                             "differs": "yes"})
    return rows


def localization_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """One row per prompt that was localised (or could not be): where the sides part."""
    rows = []
    for p in results.parity.prompts if results.parity else []:
        loc = p.localization
        if loc is None:
            continue
        rows.append({"id": p.id, "status": loc.status,
                     "first layer": "" if loc.first_layer is None else str(loc.first_layer),
                     "guilty": ",".join(map(str, loc.guilty_layers)), "region": loc.region or "",
                     "capture s": ", ".join(f"{k} {v:.2f}" for k, v in loc.seconds.items()),
                     "detail": loc.detail})
    return rows


LAYER_TABLES = 5  # per-prompt layer tables in the report (all are in results.json)


def _localised(results: ComparisonResults) -> list[PromptParity]:
    prompts = results.parity.prompts if results.parity else []
    return [p for p in prompts if p.localization and p.localization.status == "localised"][:LAYER_TABLES]


def layer_rows(p: PromptParity) -> list[dict[str, str]]:
    """A localised prompt's rows: relative differences at each depth."""
    loc = p.localization
    f = lambda x: "" if x is None else f"{x:.2e}"  # noqa: E731
    return [{"row": r.name, "rel max": f(r.rel_max), "rel L2": f(r.rel_l2), "text": f(r.rel_max_text),
             "image/audio": f(r.rel_max_media), "local pass": f(r.local_rel_max)} for r in (loc.rows if loc else [])]


def sides_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """With a reference side: each side against it (parity, accuracy, speed, memory, parity cost)."""
    ref = results.config.get("reference")
    if not ref or not results.pairs:
        return []
    reports = results.pairs
    acc = results.scores.accuracy if results.scores else {}
    rows = []
    for name in results.sides():
        s = results.setup.get(name)
        rep = reports.get(f"{ref}-{name}")
        opts = dict(s.options) if s else {}
        if s and s.model and s.model != results.config.get("model"):
            opts = {"model": s.model, **opts}
        row = {"side": name + (" (reference)" if name == ref else ""), "engine": (s.engine or name) if s else "",
               "options": ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"}
        if rep is not None:
            ags = [p.agreement for p in rep.prompts if p.agreement]
            ran = [p for p in rep.prompts if p.greedy_equal is not None]
            f = lambda x: f"{x:.2e}" if x is not None else "n/a"  # noqa: E731
            row.update({
                "verdict": rep.verdict + (" (report only)" if rep.report_only else ""),
                "bound": "report only" if rep.report_only else f"{rep.tolerance.logprob_pass:g}",
                "max |Δlogprob|": f(max((a.max_abs_dlogprob for a in ags), default=None)),
                "mean |Δlogprob|": f(float(np.mean([a.mean_abs_dlogprob for a in ags])) if ags else None),
                "KL top-k max": f(max((a.kl_topk_max for a in ags), default=None)),
                "greedy equal": f"{100 * sum(bool(p.greedy_equal) for p in ran) / len(ran):.0f}%" if ran else "n/a",
                "top-k overlap": f"{np.mean([a.topk_overlap for a in ags]):.3f}" if ags else "n/a",
                "parity s": _s(rep.seconds)})
        else:
            row.update({k: "-" for k in ("verdict", "bound", "max |Δlogprob|", "mean |Δlogprob|", "KL top-k max",
                                         "greedy equal", "top-k overlap", "parity s")})
        a = acc.get(name)
        base = acc.get(ref)
        row["accuracy"] = "n/a" if a is None else f"{a:.2f}" + (
            f" ({a - base:+.2f})" if base is not None and name != ref else "")
        best = best_throughput(results, name)
        row["output tok/s"] = f"{best[0]:.0f}" if best else "n/a"
        row["peak RSS"] = _gib(peak_memory(results, name)["rss_bytes"])
        rows.append(row)
    return rows


def pair_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """With three or more sides: per prompt, each pair's verdict and max |Δlogprob|, and the
    arbitration line (who is the odd one out, and why)."""
    rows = []
    for arb in results.arbitration or []:
        row = {"id": arb.id}
        for key, rep in (results.pairs or {}).items():
            p = next((q for q in rep.prompts if q.id == arb.id), None)
            if p is None:
                row[key] = "n/a"
            else:
                row[key] = f"{p.verdict} ({p.agreement.max_abs_dlogprob:.1e})" if p.agreement else p.verdict
        row["arbitration"] = arb.line
        rows.append(row)
    return rows


def bench_rows(results: ComparisonResults) -> list[dict[str, str]]:
    rows = []
    for name, section in results.bench.items():
        for r in section.runs:
            kind, level = level_kind(r)
            roof = section.roofline.tok_s.get(level) if section.roofline and level is not None else None
            rows.append({
                "backend": name, "level": f"{kind} {level}",
                "output tok/s": f"{r.output_throughput:.1f}",
                "roofline tok/s": f"{roof:.0f}" if roof else "n/a",
                "of roofline": f"{r.output_throughput / roof:.0%}" if roof else "n/a",
                "median TTFT ms": f"{r.median_ttft_ms:.1f}" if isinstance(r, ServingRun) else "n/a",
                "median TPOT ms": f"{r.median_tpot_ms:.2f}" if isinstance(r, ServingRun) else "n/a",
                "failed": str(r.failed) if isinstance(r, ServingRun) else "0",
                "peak RSS": _gib(r.memory.peak_rss_bytes),
                "compilations after warm-up": (str(r.compilations_after_warmup)
                                               if isinstance(r, BatchRun) and r.compilations_counted else "n/a"),
            })
    return rows


def roofline_lines(results: ComparisonResults) -> list[str]:
    """What the roofline columns rest on: the machine's figures, each side's weights and prefill."""
    sections = {n: s.roofline for n, s in results.bench.items() if s.roofline is not None}
    if not sections:
        return []
    m = next(iter(sections.values())).machine
    lines = [f"Roofline: one decode step's FLOPs over this machine's measured matmul throughput "
             f"({m.matmul_flops / 1e9:.0f} GFLOP/s, float32) or its bytes over the measured read bandwidth "
             f"({m.read_bytes_s / 1e9:.1f} GB/s), whichever takes longer (docs/metrics.md)."]
    for name, r in sections.items():
        lines.append(f"{name}: {r.note}" if r.note else
                     f"{name}: {(r.weight_bytes or 0) / 2**30:.2f} GiB of weights read per step, mean context "
                     f"{r.context} tokens, prefill of one input {r.prefill_ms:.3g} ms at the roofline")
    return lines


CURVE_DROP = 0.9  # a level below 90% of the best tok/s at a lower level: the curve falls


def curve_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """Each side whose output tok/s falls as the batch or concurrency grows (beyond noise: below
    CURVE_DROP of the best at a lower level), with the engine's known cause when it has one."""
    rows = []
    for name, section in results.bench.items():
        runs = sorted(section.runs, key=lambda r: level_kind(r)[1] or 0)
        best = None
        for r in runs:
            kind, level = level_kind(r)
            if best is not None and r.output_throughput < CURVE_DROP * best.output_throughput:
                rows.append({
                    "backend": name,
                    "curve": f"output tok/s falls from {best.output_throughput:.1f} at {kind} {level_kind(best)[1]} to "
                             f"{r.output_throughput:.1f} at {kind} {level}",
                    "known cause": " ".join(section.notes) or "none known (measure again: the machine may be busy)",
                })
                break
            if best is None or r.output_throughput > best.output_throughput:
                best = r
    return rows


def capability_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """The capability matrix: per modality, per backend, supported or why not, and how many of the
    suite's prompts use it."""
    counts: dict[str, int] = {}
    for p in results.parity.prompts if results.parity else []:
        for m in p.modalities:
            counts[m] = counts.get(m, 0) + 1
    rows = []
    for m in ("text", "image", "audio"):
        row = {"modality": m}
        if counts:
            row["prompts"] = str(counts.get(m, 0))
        for name, c in results.capabilities.items():
            row[name] = c.get(m, "n/a")
        rows.append(row)
    return rows


QUALITY_TITLE = ("Quality: perplexity (a judged side at most 1 % above the reference's) and log-likelihood accuracy "
                 "(95 % interval)")


def quality_rows(results: ComparisonResults) -> list[dict[str, str]]:
    """One row per side: perplexity per corpus (and its ratio to the reference's), accuracy with
    its interval, acc_norm, the difference from the reference and the share of same choices."""
    rows = []
    for name, q in results.quality.items():
        row = {"side": name}
        for p in q.perplexity:
            ratio = q.perplexity_ratio.get(p.corpus)
            row[f"perplexity {p.corpus}"] = f"{p.perplexity:.3f}" + (f" ({ratio:.4f}x)" if ratio is not None else "")
        a = q.accuracy
        if a is not None:
            row["accuracy"] = f"{a.acc:.1%} [{a.low:.1%}, {a.high:.1%}] of {a.items} (chance {a.chance:.0%})"
            row["acc_norm"] = f"{a.acc_norm:.1%}"
            row["Δ accuracy"] = "reference" if q.reference is None else f"{(q.accuracy_delta or 0) * 100:+.1f} points"
            row["same choice"] = "" if q.same_choice is None else f"{q.same_choice:.1%}"
        row["verdict"] = q.verdict or "reference"
        if q.reasons:
            row["verdict"] += ": " + "; ".join(q.reasons)
        rows.append(row)
    return rows


def quality_table(results: ComparisonResults) -> Table:
    return _rows_table("quality", quality_rows(results))


def accuracy_rows(results: ComparisonResults) -> list[dict[str, str]]:
    sc = results.scores
    if sc is None:
        return []
    names = list(sc.accuracy)
    rows = []
    for r in sc.prompts:
        row = {"id": r.id, "scorer": r.scorer, "reference": str(r.reference)}
        for n in names:
            row[n] = {True: "right", False: "wrong", None: "n/a"}[r.result(n)]
        rows.append(row)
    if rows:
        total = {"id": f"accuracy ({sc.scored} prompts answered by every side)", "scorer": "", "reference": ""}
        for n in names:
            a = sc.accuracy.get(n)
            total[n] = "n/a" if a is None else f"{a:.0%}"
        rows.append(total)
        if sc.difference is not None:
            rows.append({"id": f"difference {names[0]} - {names[1]}", "scorer": "", "reference": "",
                         names[0]: f"{sc.difference * 100:+.0f} points", names[1]: ""})
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


def _answer_rows(answers: list[AnswerRow]) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in a.model_dump(exclude_none=True).items()} for a in answers]


def _side_model(results: ComparisonResults, name: str) -> str | None:
    """The model one side ran (its set-up record), or was configured with (a run that stopped
    before that side was set up)."""
    setup = results.setup.get(name)
    if setup is not None and (setup.model or setup.describe.get("model")):
        return setup.model or setup.describe.get("model")
    try:
        return CompareConfig.model_validate(results.config).model_for(name)
    except (ValidationError, InputError, KeyError, ValueError):
        return results.config.get("model")


def _title(results: ComparisonResults) -> str:
    """The run's kind, each side's model and the sides."""
    names = results.sides()
    models = {n: _side_model(results, n) for n in names}
    shown = next(iter(models.values())) if len(set(models.values())) == 1 else ", ".join(
        f"{n}: {m}" for n, m in models.items())
    return f"paritybench {results.kind}: {shown} ({' vs '.join(names)})"


def _repro_lines(results: ComparisonResults) -> list[str]:
    r = results.reproducibility
    code = r.get("code") or {}
    hw = r.get("hardware") or {}
    pk = r.get("packages") or {}
    return [
        f"- code: commit {code.get('commit')}{' (uncommitted changes)' if code.get('dirty') else ''}",
        f"- hardware: {hw.get('cpu')}, {hw.get('cores')} cores, {hw.get('memory_gib')} GiB; GPUs: "
        f"{', '.join(hw.get('gpus') or []) or 'none'}; {hw.get('platform')}, Python {hw.get('python')}",
        "- harness environment: " + ", ".join(f"{k} {v}" for k, v in (pk.get("harness") or {}).items()),
        *(f"- {side_title(env, short=True)} environment: " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "n/a")
          for env, versions in pk.items() if env != "harness"),
        f"- sampling: {json.dumps(r.get('sampling'), sort_keys=True)}",
        f"- seed {r.get('seed')}; settings: `{json.dumps(results.config, sort_keys=True)}`",
        f"- started {results.started}, finished {results.finished}",
    ]


def markdown(results: ComparisonResults, images: dict[str, bytes]) -> str:
    lines = [f"# {_title(results)}", ""]
    if results.error:
        lines += [f"**The run stopped early:** {results.error}", ""]
    lines += [f"## {_versus(results)}, measured", ""]
    header, rows = guide_table(results)
    lines += _md_table(rows, header)
    if sides_rows(results):
        lines += ["", f"## Every side against the reference ({results.config.get('reference')})", ""]
        lines += _md_table(sides_rows(results))
    if results.capabilities:
        lines += ["", "## Capabilities (per modality)", ""]
        lines += _md_table(capability_rows(results))
    if results.parity:
        tol = results.parity.tolerance
        lines += ["", f"## Parity: {results.verdict}", "",
                  f"Tolerance profile {tol.name}: pass if max |Δ log-prob| <= {tol.logprob_pass}, "
                  f"warn up to {tol.logprob_warn}; greedy, {results.config.get('max_tokens')} tokens."
                  + (f" {tol.reason}." if tol.reason else ""), ""]
        lines += _md_table(parity_rows(results))
        if cause_rows(results):
            lines += ["", "### Causes named, by kind", ""]
            lines += _md_table(cause_rows(results))
        if settings_rows(results):
            lines += ["", "### Effective settings of each side", ""]
            lines += _md_table(settings_rows(results))
        if localization_rows(results):
            lines += ["", "### Where the sides part (layer by layer)", ""]
            lines += _md_table(localization_rows(results))
            for p in _localised(results):
                if p.localization:
                    lines += ["", f"{p.id}: relative difference at each depth "
                                  f"(measured against {p.localization.reference})", ""]
                    lines += _md_table(layer_rows(p))
    if results.arbitration:
        lines += ["", "## Every pair of sides", ""]
        lines += _md_table(pair_rows(results))
    for name, answers in results.answers.items():
        lines += ["", f"## Answers ({name})", ""]
        lines += _md_table(_answer_rows(answers))
    if accuracy_rows(results):
        lines += ["", "## Accuracy (suite scorers; meaningful on real models)", ""]
        lines += _md_table(accuracy_rows(results))
    if results.quality:
        lines += ["", f"## {QUALITY_TITLE}", ""]
        lines += _md_table(quality_rows(results))
    if results.bench:
        lines += ["", "## Throughput, latency and memory", ""]
        lines += _md_table(bench_rows(results))
        lines += ["", *(f"- {x}" for x in roofline_lines(results))]
        if curve_rows(results):
            lines += ["", "### Throughput curves that fall", ""]
            lines += _md_table(curve_rows(results))
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


def html_page(results: ComparisonResults, images: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(_title(results))}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(_title(results))}</h1>"]
    if results.error:
        parts.append(f"<p class=fail><b>The run stopped early:</b> {html.escape(results.error)}</p>")
    parts.append(f"<h2>{html.escape(_versus(results))}, measured</h2>")
    header, rows = guide_table(results)
    parts.append(_html_table(rows, header, "guide"))
    if sides_rows(results):
        parts.append(f"<h2>Every side against the reference ({html.escape(str(results.config.get('reference')))})</h2>")
        parts.append(_html_table(sides_rows(results), table_id="sides"))
    if results.capabilities:
        parts.append("<h2>Capabilities (per modality)</h2>")
        parts.append(_html_table(capability_rows(results), table_id="capabilities"))
    if results.parity:
        tol = results.parity.tolerance
        verdict = html.escape(str(results.verdict))
        parts.append(f"<h2>Parity: <span class={verdict}>{verdict}"
                     f"</span></h2><p>Tolerance profile {html.escape(tol.name)}: pass if max |Δ log-prob| "
                     f"&le; {tol.logprob_pass}, warn up to {tol.logprob_warn}."
                     f"{' ' + html.escape(tol.reason) + '.' if tol.reason else ''}</p>")
        parts.append(_html_table(parity_rows(results), table_id="verdicts", verdict_col="verdict"))
        if cause_rows(results):
            parts.append("<h3>Causes named, by kind</h3>")
            parts.append(_html_table(cause_rows(results), table_id="causes"))
        if settings_rows(results):
            parts.append("<h3>Effective settings of each side</h3>")
            parts.append(_html_table(settings_rows(results), table_id="settings"))
        if localization_rows(results):
            parts.append("<h3>Where the sides part (layer by layer)</h3>")
            parts.append(_html_table(localization_rows(results), table_id="localization"))
            for p in _localised(results):
                if p.localization:
                    parts.append(f"<p>{html.escape(p.id)}: relative difference at each depth (measured against "
                                 f"{html.escape(str(p.localization.reference))})</p>")
                    parts.append(_html_table(layer_rows(p), table_id=f"layers-{p.id}"))
    if results.arbitration:
        parts.append("<h2>Every pair of sides</h2>")
        parts.append(_html_table(pair_rows(results), table_id="pairs"))
    for name, answers in results.answers.items():
        parts.append(f"<h2>Answers ({html.escape(name)})</h2>")
        parts.append(_html_table(_answer_rows(answers)))
    if accuracy_rows(results):
        parts.append("<h2>Accuracy (suite scorers; meaningful on real models)</h2>")
        parts.append(_html_table(accuracy_rows(results), table_id="accuracy"))
    if results.quality:
        parts.append(f"<h2>{html.escape(QUALITY_TITLE)}</h2>")
        parts.append(_html_table(quality_rows(results), table_id="quality"))
    if results.bench:
        parts.append("<h2>Throughput, latency and memory</h2>")
        parts.append(_html_table(bench_rows(results), table_id="bench"))
        parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in roofline_lines(results)) + "</ul>")
        if curve_rows(results):
            parts.append("<h3>Throughput curves that fall</h3>")
            parts.append(_html_table(curve_rows(results), table_id="curves"))
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


def render(results: ComparisonResults, out: str | Path) -> Path:
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


def summary_table(results: ComparisonResults) -> Table:
    t = Table(title=_title(results))
    header, rows = guide_table(results)
    for col in header:
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*row)
    return t


def parity_table(results: ComparisonResults) -> Table:
    t = Table(title=f"parity: {results.verdict}")
    rows = parity_rows(results)
    for col in ("id", "verdict", "max |Δlogprob|", "greedy equal", "first divergence"):
        t.add_column(col, overflow="fold")
    t.add_column("output (greedy)", overflow="ellipsis", no_wrap=True, max_width=48)
    style = {"pass": "green", "warn": "yellow", "fail": "red", "error": "red"}
    for r in rows:
        t.add_row(r["id"], f"[{style.get(r['verdict'], 'white')}]{r['verdict']}[/]", r["max |Δlogprob|"],
                  r["greedy equal"], r["first divergence"], escape(r["output (greedy)"]))
    return t


def localization_table(results: ComparisonResults) -> Table:
    t = Table(title="where the sides part (layer by layer)")
    for col in ("id", "status", "first layer", "guilty", "region", "why not"):
        t.add_column(col, overflow="fold")
    for r in localization_rows(results):  # the details are in the report
        why = r["detail"] if r["status"] in ("unsupported", "not-localisable", "error") else ""
        t.add_row(r["id"], r["status"], r["first layer"], r["guilty"], r["region"], why)
    return t


def sides_table(results: ComparisonResults) -> Table:
    t = Table(title=f"every side against the reference ({results.config.get('reference')})")
    cols = ("side", "verdict", "max |Δlogprob|", "greedy equal", "output tok/s", "peak RSS", "parity s")
    for col in cols:
        t.add_column(col, overflow="fold")
    for r in sides_rows(results):
        t.add_row(*(r.get(c, "") for c in cols))
    return t


def arbitration_table(results: ComparisonResults) -> Table:
    return _rows_table("every pair of sides", pair_rows(results))


def _rows_table(title: str, rows: list[dict[str, str]]) -> Table:
    """Rows of one shape as a console table: a column per key of the first row."""
    t = Table(title=title)
    for col in rows[0] if rows else ["id"]:
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(*r.values())
    return t


# ----------------------------------------------------------------------------- two runs


def _metrics(results: ComparisonResults) -> dict[str, float]:
    """Comparable numbers of a run, by a stable name."""
    m: dict[str, float] = {}
    for name, s in results.setup.items():
        if s.setup_s is not None:
            m[f"{name} set-up s"] = s.setup_s
    for name, section in results.bench.items():
        for r in section.runs:
            kind, lv = level_kind(r)
            level = f"{kind[0]}{lv}"
            m[f"{name} {level} output tok/s"] = r.output_throughput
            if isinstance(r, ServingRun):
                m[f"{name} {level} median TTFT ms"] = r.median_ttft_ms
                m[f"{name} {level} median TPOT ms"] = r.median_tpot_ms
            if r.memory.peak_rss_bytes is not None:
                m[f"{name} {level} peak RSS MiB"] = r.memory.peak_rss_bytes / 2**20
    for name, a in (results.scores.accuracy if results.scores else {}).items():
        if a is not None:
            m[f"{name} accuracy"] = a
    for p in results.parity.prompts if results.parity else []:
        if p.agreement:
            m[f"parity {p.id} max |Δlogprob|"] = p.agreement.max_abs_dlogprob
    return m


def diff(old: ComparisonResults, new: ComparisonResults) -> dict[str, Any]:
    """Changed verdicts (per prompt and overall) and metric deltas from `old` to `new`."""
    vo = {p.id: p.verdict for p in (old.parity.prompts if old.parity else [])}
    vn = {p.id: p.verdict for p in (new.parity.prompts if new.parity else [])}
    verdicts = [{"id": k, "before": vo.get(k, "absent"), "after": vn.get(k, "absent")}
                for k in sorted(set(vo) | set(vn)) if vo.get(k) != vn.get(k)]
    mo, mn = _metrics(old), _metrics(new)
    metrics = []
    for k in sorted(set(mo) | set(mn)):
        a, b = mo.get(k), mn.get(k)
        rel = (b - a) / a if a not in (None, 0) and a is not None and b is not None else None
        metrics.append({"metric": k, "before": a, "after": b, "change": rel})
    vers_o = old.reproducibility.get("packages") or {}
    vers_n = new.reproducibility.get("packages") or {}
    packages = [{"package": f"{env}/{k}", "before": (vers_o.get(env) or {}).get(k), "after": (vers_n.get(env) or {}).get(k)}
                for env in dict.fromkeys([*vers_o, *vers_n])  # the harness's environment, then each engine's
                for k in sorted(set(vers_o.get(env) or {}) | set(vers_n.get(env) or {}))
                if (vers_o.get(env) or {}).get(k) != (vers_n.get(env) or {}).get(k)]
    return {"verdict": {"before": old.verdict, "after": new.verdict}, "verdicts": verdicts,
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


def render_diff(old: ComparisonResults, new: ComparisonResults, out: str | Path, names: tuple[str, str] = ("before", "after")) -> dict:
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
