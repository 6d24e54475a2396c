"""The main job: one suite through each backend; parity, throughput and memory; results and report.

    from harness import compare, CompareConfig
    results = compare(CompareConfig(model="tiny-gemma3", out="out/x"))
    results.verdict             # pass | warn | fail | error (the worst pair of sides); a ComparisonResults

Every record is appended to OUT/results.jsonl (flushed) as soon as it is measured; at the end
OUT/results.json holds the whole run and OUT/report.md, OUT/report.html render it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import backends
from backends import InputError, MemorySnapshot, ParitybenchError, Request, SamplingParams, TimedStreaming, stop_point

from . import bench as _bench
from . import diagnosis, environment, parity, quality, report, roofline, suites
from .config import CompareConfig
from .results import AnswerRow, BenchSection, ComparisonResults, Run, ScoreRow, Scores, SideSetup, SuiteInfo

FAILING = ("fail", "error")

class Recorder:
    """Appends one JSON object per line to `path`, flushed and synced to disk at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def add(self, kind: str, data: dict[str, Any]) -> None:
        self._f.write(json.dumps({"type": kind, "time": _now(), **data}, default=str, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise InputError(f"output folder {out} is not empty; pass --force to overwrite it or choose another --out")
        for name in ("results.jsonl", "results.json", "report.md", "report.html", "libraries.log"):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _host_devices(config: CompareConfig) -> None:
    """A side sharded over a mesh of N devices needs N devices: on CPU, XLA shows N host devices
    only when told before jax starts (harmless on GPU/TPU, where it concerns the host platform)."""
    need = max((math.prod(m.values()) for n in config.backends
                if isinstance(m := config.engine_options(n).get("mesh"), dict)), default=1)
    flags = os.environ.get("XLA_FLAGS", "")
    if need > 1 and "jax" not in sys.modules and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={need}".strip()


def _open(name: str, config: CompareConfig) -> backends.Backend:
    return backends.get(config.side(name).engine, model=config.model_for(name), **config.engine_options(name))


@dataclasses.dataclass(frozen=True)
class Opened:
    """A side just set up: the backend, its set-up seconds and its memory right after."""

    side: backends.Backend
    setup_s: float
    memory: MemorySnapshot


def open_sides(config: CompareConfig, release: threading.Event,
               then: Callable[[str, backends.Backend], None] | None = None) -> dict[str, Opened]:
    """Every side set up at once, each in its own thread: a managed vLLM server starts (a process
    the harness waits on) while an in-process engine loads and compiles. Returns each side's
    `Opened` (its set-up seconds include its engine's imports) in the configured order. The
    engines' libraries are imported first, here, one after another (`backends.import_libraries`).

    A side's thread goes on with `then(name, side)` once the side is open (and its memory read):
    its first work starts while the other sides still set up; `open_sides` does not wait for it.
    Each thread then waits for `release` (set it once the sides are closed): a server started with
    the kernel's parent-death signal is tied to the thread that started it, and would be stopped
    when that thread ends. When a side fails, or a signal stops the run, the sides already open are
    closed and one still opening is closed as soon as it opens (the threads are daemons: leaving
    does not wait for them, and a managed server also stops at exit)."""
    names = list(config.backends)
    opened: dict[str, Opened] = {}
    failed: dict[str, BaseException] = {}
    lock = threading.Lock()
    abandoned = threading.Event()

    def work(name: str) -> None:
        t0 = time.perf_counter() - import_s[config.side(name).engine]  # a side's set-up includes its imports
        try:
            side = _open(name, config)
        except BaseException as e:  # handed to the main thread
            failed[name] = e
            return
        setup_s = time.perf_counter() - t0
        memory = side.memory()  # before any work
        with lock:
            keep = not abandoned.is_set()
            if keep:
                opened[name] = Opened(side, setup_s, memory)
        if not keep:
            side.close()
            return
        if then is not None:
            then(name, side)
        release.wait()

    # one engine's imports after another, here: gemma's replace `builtins.__import__` for the whole
    # process while they run, and an import in a set-up thread at that moment would get a placeholder
    import_s: dict[str, float] = {}
    for engine in dict.fromkeys(config.side(n).engine for n in names):
        t0 = time.perf_counter()
        backends.import_libraries(engine)
        import_s[engine] = time.perf_counter() - t0
    threads = [threading.Thread(target=work, args=(n,), name=f"paritybench-setup-{n}", daemon=True) for n in names]
    for t in threads:
        t.start()
    try:
        while not failed and len(opened) < len(names):
            time.sleep(0.1)  # a signal lands here, in the main thread
            stop_point()
        if failed:
            raise next(failed[n] for n in names if n in failed)
    except BaseException:
        with lock:
            abandoned.set()
            done = [o.side for o in opened.values()]
        for side in done:
            with contextlib.suppress(Exception):
                side.close()
        release.set()
        raise
    return {n: opened[n] for n in names}


def _pair_bound(config: CompareConfig, x: backends.Backend, y: backends.Backend, xn: str, yn: str,
                tol: parity.Tolerance | None) -> tuple[parity.Tolerance | None, bool]:
    """The tolerance of the pair (x, y) and whether its verdict only reports: a side's own `bound`
    (a number: its max |dlogprob|; "report": measured, never counted); a side that stores its KV
    cache or weights in reduced precision without a bound only reports."""
    bound = config.side(yn).bound if config.side(yn).bound is not None else config.side(xn).bound
    if isinstance(bound, float | int):
        return parity.Tolerance(name=f"bound {bound:g}", logprob_pass=float(bound), logprob_warn=float(bound),
                                exact_greedy=False, reason=f"the side's own bound (max |dlogprob| {bound:g})"), False
    if bound == "report":
        return tol, True
    reduced = [d for d in diagnosis.settings_diff(x.model_settings(), y.model_settings())
               if d.field in ("kv_cache_dtype", "quantization")]
    return tol, bool(reduced)


class Previous:
    """What an interrupted run in OUT already measured (its results.jsonl), for --resume."""

    def __init__(self, out: Path) -> None:
        path = out / "results.jsonl"
        if not path.is_file():
            raise InputError(f"nothing to resume in {out}: no results.jsonl (start the run without --resume)")
        self.records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the interruption: everything after it is redone
                break
        runs = [r for r in self.records if r.get("type") == "run"]
        if not runs:
            raise InputError(f"{path}: no run record; it is not a paritybench results file")
        self.started = runs[0]["time"]
        self.config = CompareConfig.model_validate({k: v for k, v in runs[0]["config"].items() if k != "vllm_api_key_set"})
        self.parity = {r["id"]: r for r in self.records if r.get("type") == "parity_prompt" and r.get("verdict") != "error"}
        self.bench = {(r["backend"], r["level"]): r for r in self.records if r.get("type") == "bench"}
        self.answers = {(r["backend"], r["id"]): r for r in self.records
                        if r.get("type") == "answer" and "error" not in r}


def resume(out: str | Path, *, console: Console | None = None) -> ComparisonResults:
    """Continue the interrupted run in `out`: same settings, finished prompts and levels kept."""
    prev = Previous(Path(out))
    return compare(prev.config.model_copy(update={"out": str(out)}), console=console, previous=prev)


@dataclasses.dataclass
class _Run:
    """One comparison while it runs: its inputs (checked before anything starts), its recorder and
    the results it fills, phase by phase (`compare`)."""

    config: CompareConfig
    console: Console
    out: Path
    suite: suites.Suite
    quality_inputs: tuple[dict[str, list[str]], list[quality.Item] | None] | None
    rec: Recorder
    results: ComparisonResults
    previous: Previous | None
    tol: parity.Tolerance | None = None
    todo: list[Request] = dataclasses.field(default_factory=list)  # parity's prompts
    ahead: dict[str, Future[parity.Greedy]] = dataclasses.field(default_factory=dict)

    @property
    def reused(self) -> dict[str, dict]:
        return self.previous.parity if self.previous else {}


def compare(config: CompareConfig, *, force: bool = False, console: Console | None = None,
            previous: Previous | None = None) -> ComparisonResults:
    """Run the comparison `config` describes; returns the results (also written under config.out).
    With `previous` (see `resume`), what it measured is reused and only the rest is run.

    The phases: inputs read and checked (`_start`), the sides set up at once with their parity
    generations started as each comes up (`_set_up`), parity of each pair (`_parity`) and the
    answers of prompts some side cannot run, or one side's answers (`_answer`), quality, the
    benchmark levels; results.json and the report are written whatever happens."""
    run = _start(config, console or Console(stderr=True), force, previous)
    try:
        with contextlib.ExitStack() as stack:
            sides = _set_up(run, stack)
            if len(sides) >= 2:
                _parity(run, sides)
            else:
                _answer(run, sides)
            stop_point()
            if run.quality_inputs is not None:
                _quality_all(sides, config, run.quality_inputs, run.results, run.rec, run.console)
            stop_point()
            if config.bench.enabled:
                _bench_all(sides, config, run.results, run.rec, run.console, previous.bench if previous else {})
            for name, side in sides.items():  # what each side is now (a server of a group left out, ...)
                with contextlib.suppress(ParitybenchError):
                    run.results.setup[name].describe = side.describe()
    except ParitybenchError as e:
        run.results.error = str(e)
        run.rec.add("error", {"error": str(e)})
        raise
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or SIGTERM (turned into SystemExit)
        run.results.error = f"interrupted ({'SIGINT' if isinstance(e, KeyboardInterrupt) else 'SIGTERM'})"
        run.rec.add("error", {"error": run.results.error})
        raise
    finally:
        _finish(run)
    return run.results


def _start(config: CompareConfig, console: Console, force: bool, previous: Previous | None) -> _Run:
    """The inputs read and checked (a bad suite file or quality file fails before anything starts;
    a bad prompt is its own error), the output folder, the recorder and the run's first record."""
    import evals

    _host_devices(config)
    out = Path(config.out)
    suite_path = Path(config.suite) if config.suite else evals.path("default")
    suite = suites.read(suite_path)
    if not suite.requests:
        raise InputError(f"no prompt of {suite_path} can run: {suite.errors[0]}")
    quality_inputs = _quality_inputs(config) if config.quality.enabled else None
    if previous is None:
        prepare_out(out, force)
    backends.keep_library_log_in(out)  # the libraries' own output (TensorFlow, absl, Orbax) beside the results
    rec = Recorder(out / "results.jsonl")
    parity_sampling = SamplingParams(max_tokens=config.max_tokens, logprobs=config.top_k_logprobs)
    results = ComparisonResults(
        kind="compare" if len(config.backends) >= 2 else "run", config=config.public(),
        suite=SuiteInfo(name=suite.name, path=str(suite_path), prompts=len(suite.prompts), errors=suite.errors),
        started=_now(),
        reproducibility=environment.reproducibility(
            config.public(), {"parity": parity_sampling.model_dump(mode="json"),
                              "answers": _answer_sampling(config).model_dump(mode="json")}),
    )
    if previous is not None:
        results.resumed = {
            "from_run_started": previous.started, "parity_prompts_reused": len(previous.parity),
            "bench_levels_reused": len(previous.bench),
            "note": "set-up, parity and bench sections of reused parts were measured in the earlier, separate run"}
        rec.add("resume", results.resumed)
    else:
        head = results.to_json()
        rec.add("run", {k: head[k] for k in ("schema_version", "kind", "config", "suite", "reproducibility")})
    run = _Run(config=config, console=console, out=out, suite=suite, quality_inputs=quality_inputs, rec=rec,
               results=results, previous=previous)
    run.tol = parity.PROFILES[config.tolerance] if config.tolerance != "auto" else None
    pairs = config.pairs()
    # parity's prompts: those an interrupted two-sided run did not finish, every prompt otherwise
    run.todo = [r for r in suite.requests if r.id not in run.reused] if len(pairs) == 1 else suite.requests
    run.ahead = {n: Future[parity.Greedy]() for n in config.backends} if pairs else {}
    return run


def _answer_sampling(config: CompareConfig) -> SamplingParams:
    return SamplingParams(max_tokens=config.max_tokens, temperature=config.temperature, seed=config.seed,
                          logprobs=config.top_k_logprobs)


def _set_up(run: _Run, stack: contextlib.ExitStack) -> dict[str, backends.Backend]:
    """Every side set up at once (`open_sides`), each starting its parity generations as soon as it
    is up; their set-up records. The sides close when `stack` unwinds."""
    config = run.config

    def greedy_ahead(name: str, side: backends.Backend) -> None:
        """A side's parity generations, started as soon as it is up (another may still be starting)."""
        try:
            run.ahead[name].set_result(parity.greedy(side, run.todo, parity.greedy_sampling(
                config.max_tokens, config.top_k_logprobs, run.tol)))
        except BaseException as e:  # handed to parity, which waits for it
            run.ahead[name].set_exception(e)

    release = threading.Event()
    stack.callback(release.set)  # after the sides below are closed (the stack unwinds in reverse)
    with run.console.status("setting up " + ", ".join(f"{n} ({config.model_for(n)})" for n in config.backends)):
        ready = open_sides(config, release, then=greedy_ahead if run.ahead else None)
    for opened in ready.values():
        stack.enter_context(opened.side)
    sides: dict[str, backends.Backend] = {}
    for name, opened in ready.items():
        spec, side = config.side(name), opened.side
        setup = SideSetup(backend=name, engine=spec.engine, model=config.model_for(name),
                          options=spec.options, setup_s=opened.setup_s, load_s=side.load_s,
                          warmup_s=side.warmup_s, describe=side.describe(), guide=side.guide_facts(),
                          bench_mode="serving" if isinstance(side, TimedStreaming) else "batch",
                          memory=opened.memory)
        sides[name] = side
        run.results.setup[name] = setup
        run.results.capabilities[name] = capability_row(side)
        run.rec.add("setup", setup.model_dump(mode="json"))
        run.console.print(f"{name}: ready in {setup.setup_s:.1f} s")
        stop_point()
    return sides


def _parity(run: _Run, sides: dict[str, backends.Backend]) -> None:
    """Parity of each pair (each prompt recorded as it is known), the run's verdict from the pairs
    that count, the arbitration of three or more sides, then the answers and scores."""
    config, results, pairs = run.config, run.results, run.config.pairs()
    reports = {f"{x}-{y}": _pair_parity(run, sides, x, y, run.reused if len(pairs) == 1 else {}) for x, y in pairs}
    for name, fut in run.ahead.items():
        if fut.done() and fut.exception() is None:
            results.setup[name].greedy_ahead_s = fut.result().seconds
    results.parity = reports[f"{pairs[0][0]}-{pairs[0][1]}"]
    counted = [r.verdict for r in reports.values() if not r.report_only]
    results.verdict = parity.worst(*counted) if counted else "pass"
    if len(pairs) > 1 or config.reference is not None:
        results.pairs = reports
        if config.reference is None:
            results.arbitration = parity.arbitrate(list(config.backends), reports)
    texts: dict[str, dict[str, str | None]] = {}
    for (x, y), rep in zip(pairs, reports.values()):
        for p in rep.prompts:
            row = texts.setdefault(p.id, {})
            row.setdefault(x, p.a.text if p.a else None)
            row.setdefault(y, p.b.text if p.b else None)
    _answer_lone(run, sides, reports, texts)
    results.scores = score_all(run.suite, texts, list(config.backends))


def _pair_parity(run: _Run, sides: dict[str, backends.Backend], x: str, y: str,
                 pair_reused: dict[str, dict]) -> parity.ParityReport:
    """Parity of the pair (x, y) on the run's prompts, in the suite's order (with the prompts an
    interrupted run finished, `pair_reused`), recorded."""
    key = f"{x}-{y}"
    pair_tol, report_only = _pair_bound(run.config, sides[x], sides[y], x, y, run.tol)

    def on_prompt(p: parity.PromptParity) -> None:
        run.rec.add("parity_prompt", {**p.model_dump(mode="json"), "pair": key})
        stop_point()

    t0 = time.perf_counter()
    with run.console.status(f"parity {x} vs {y} on {len(run.todo)} prompts (greedy, {run.config.max_tokens} "
                            "tokens, teacher-forced log-probs)"):
        rep = parity.compare(
            sides[x], sides[y], run.todo, max_tokens=run.config.max_tokens, top_k=run.config.top_k_logprobs,
            tolerance=pair_tol, localize=run.config.localize, localize_threshold=run.config.localize_threshold,
            on_prompt=on_prompt, ahead=(run.ahead[x], run.ahead[y]))
    rep = rep.model_copy(update={"seconds": time.perf_counter() - t0, "report_only": report_only})
    stop_point()
    rep = _in_suite_order(rep, run.suite, pair_reused)
    run.rec.add("parity", {"pair": key, "verdict": rep.verdict, "report_only": report_only,
                           "tolerance": rep.tolerance.model_dump(mode="json")})
    return rep


def _answer_lone(run: _Run, sides: dict[str, backends.Backend], reports: dict[str, parity.ParityReport],
                 texts: dict[str, dict[str, str | None]]) -> None:
    """A prompt some side cannot run is still answered (and scored) by the sides that can."""
    greedy = SamplingParams(max_tokens=run.config.max_tokens, logprobs=0)
    lone = {p.id for rep in reports.values() for p in rep.prompts if p.verdict == "unsupported"}
    for name, side in sides.items():
        mine = [sp for sp in run.suite.prompts if sp.id in lone and sp.request is not None
                and _can_run(side, sp.request)]
        if not mine:
            continue
        part = dataclasses.replace(run.suite, prompts=mine)
        done = {k: v for k, v in _answered(run.previous, name).items() if k in lone}
        with run.console.status(f"{name}: answering {len(mine)} prompts another side cannot run"):
            rows = _answers(side, part, greedy, done, functools.partial(_record_answer, run.rec, name))
        run.results.answers[name] = [AnswerRow.model_validate(r) for r in rows]
        for r in rows:
            texts.setdefault(r["id"], {})[name] = r.get("text")


def _answer(run: _Run, sides: dict[str, backends.Backend]) -> None:
    """One side: its answers to every prompt (sampled as configured), and their scores."""
    (name, side), = sides.items()
    done = _answered(run.previous, name)
    with run.console.status(f"{name}: answering {len(run.suite.requests) - len(done)} prompts"):
        rows = _answers(side, run.suite, _answer_sampling(run.config), done,
                        functools.partial(_record_answer, run.rec, name))
    run.results.answers[name] = [AnswerRow.model_validate(r) for r in rows]
    run.results.verdict = "error" if any("error" in r for r in rows) else "pass"
    run.results.scores = score_all(run.suite, {r["id"]: {name: r.get("text")} for r in rows}, [name])


def _finish(run: _Run) -> None:
    """results.json and the report, whatever happened (what was measured is kept)."""
    run.results.finished = _now()
    run.rec.close()
    report.write_atomic(run.out / "results.json",
                        json.dumps(run.results.to_json(), indent=1, default=str, ensure_ascii=False) + "\n")
    report.render(run.results, run.out)


def capability_row(side: backends.Backend) -> dict[str, str]:
    """Per modality: "supported", or why not (the capability matrix of the report)."""
    caps = side.capabilities
    return {m: "supported" if m in caps.modalities else caps.unsupported.get(m, "the model takes no such input")
            for m in ("text", "image", "audio")}


def _in_suite_order(rep: parity.ParityReport, suite: suites.Suite, reused: dict[str, dict]) -> parity.ParityReport:
    """All prompts in the suite's order: this run's, those reused from an earlier run, and the
    suite's broken prompts as `error` rows."""
    done = {p.id: p for p in rep.prompts}
    done.update({pid: parity.PromptParity.model_validate({k: v for k, v in r.items() if k not in ("type", "time")})
                 for pid, r in reused.items()})
    rows = [done.get(sp.id) or parity.PromptParity(id=sp.id, modalities=[], verdict="error", reasons=[sp.error or ""])
            for sp in suite.prompts]
    return rep.model_copy(update={"prompts": rows, "verdict": parity.worst(*[r.verdict for r in rows])})


def _answered(previous: Previous | None, name: str) -> dict[str, dict[str, Any]]:
    """The answers side `name` gave in an interrupted run (--resume), by prompt id."""
    return {k[1]: {x: y for x, y in v.items() if x not in ("type", "time", "backend")}
            for k, v in (previous.answers if previous else {}).items() if k[0] == name}


def _can_run(side: backends.Backend, request: Request) -> bool:
    try:
        side.capabilities.check(request, side.name)
    except backends.UnsupportedError:
        return False
    return True


def _record_answer(rec: Any, name: str, row: dict[str, Any]) -> None:
    rec.add("answer", {"backend": name, **row})


def _answers(side: backends.Backend, suite: suites.Suite, sampling: SamplingParams, done: dict[str, dict],
             on_row: Callable[[dict], None]) -> list[dict[str, Any]]:
    """One row per suite prompt: the answer, or why there is none (unsupported, error); rows in
    `done` (an earlier run's) are kept, new ones passed to `on_row` as they are made."""
    runnable, rows = [], dict(done)
    for sp in suite.prompts:
        if sp.id in rows:
            continue
        if sp.request is None:
            rows[sp.id] = {"id": sp.id, "error": sp.error}
            continue
        try:
            side.capabilities.check(sp.request, side.name)
            runnable.append(sp.request)
        except backends.UnsupportedError as e:
            rows[sp.id] = {"id": sp.id, "unsupported": str(e)}
    for r, g in zip(runnable, parity.generate_each(side, runnable, sampling)):
        assert r.id is not None  # a suite's requests carry their prompt's id
        if isinstance(g, Exception):
            rows[r.id] = {"id": r.id, "error": str(g)}
        else:
            rows[r.id] = {"id": r.id, "text": g.text, "prompt_tokens": len(g.prompt_ids),
                          "output_tokens": len(g.token_ids), "finish_reason": g.finish_reason, "e2e_s": g.timings.e2e_s}
    for sp in suite.prompts:
        if sp.id not in done:
            on_row(rows[sp.id])
    return [rows[sp.id] for sp in suite.prompts]


def score_all(suite: suites.Suite, texts: dict[str, dict[str, str | None]], names: list[str]) -> Scores:
    """Each scored prompt's result per backend, accuracy per backend (over the prompts both sides
    answered) and the difference of the first two."""
    from . import scoring

    rows: list[dict[str, Any]] = []
    for sp in suite.prompts:
        if not sp.scorer:
            continue
        got = texts.get(sp.id, {})
        row = {"id": sp.id, "scorer": sp.scorer, "reference": sp.reference}
        for n in names:
            answer = got.get(n)
            row[n] = None if answer is None else scoring.score(sp.scorer, sp.reference, answer, sp.tolerance)
        rows.append(row)
    both = [r for r in rows if all(r[n] is not None for n in names)]
    acc = {n: scoring.accuracy([r[n] for r in both]) for n in names}
    first, second = (acc[names[0]], acc[names[1]]) if len(names) == 2 else (None, None)
    diff = first - second if first is not None and second is not None else None
    return Scores(prompts=[ScoreRow.model_validate(r) for r in rows], scored=len(both), accuracy=acc, difference=diff)


def _quality_inputs(config: CompareConfig) -> tuple[dict[str, list[str]], list[quality.Item] | None]:
    """The perplexity corpora's documents and the multiple-choice items (read once, checked first)."""
    q = config.quality
    return ({Path(c).stem: quality.load_corpus(c) for c in q.corpora},
            quality.load_items(q.suite) if q.suite else None)


def _quality_all(sides: dict[str, backends.Backend], config: CompareConfig,
                 inputs: tuple[dict[str, list[str]], list[quality.Item] | None], results: ComparisonResults,
                 rec: Recorder, console: Console) -> None:
    """Every side's perplexity and accuracy on the same ids (the reference side's tokenizer), each
    side against the reference (the first side unless one is named); a judged side more than 1 %
    worse in perplexity fails the run."""
    docs, items = inputs
    names = list(sides)
    ref = config.reference or names[0]
    with console.status("quality: tokenizing the corpora and the multiple-choice items"):
        corpora = {name: quality.document_ids(sides[ref], d, config.quality.max_len) for name, d in docs.items()}
        enc = quality.encode_items(sides[ref], items) if items is not None else None
    measured = {}
    for name, side in sides.items():
        with console.status(f"{name}: perplexity and log-likelihood accuracy"):
            measured[name] = quality.measure(side, corpora, config.quality.suite, enc)
    for name in names:
        q = measured[name] if name == ref else quality.against(
            ref, measured[ref], measured[name], judged=config.side(name).bound is None)
        results.quality[name] = q
        rec.add("quality", {"backend": name, **q.model_dump(mode="json")})
    if any(q.verdict == "fail" for q in results.quality.values()) and results.verdict != "error":
        results.verdict = "fail"


def _bench_all(sides: dict[str, backends.Backend], config: CompareConfig, results: ComparisonResults, rec: Recorder,
               console: Console, reused: dict[tuple[str, int], dict]) -> None:
    """Every side's levels: engines that stream (`TimedStreaming`) at each concurrency, the others
    at each batch size."""
    s = config.bench
    settings = _bench.LevelSettings(request_rate=s.request_rate, warmups=s.warmups, memory_interval=s.memory_interval)
    peaks = roofline.measure_machine()  # about a second; the same figures for every side
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        for name, side in sides.items():
            serving = isinstance(side, TimedStreaming)
            levels = s.concurrency if serving else s.batch_sizes
            wl = _bench.synthetic(side, num_prompts=s.num_prompts, input_len=s.input_len, output_len=s.output_len,
                                  seed=config.seed)
            task = progress.add_task(f"{name} throughput ({'concurrency' if serving else 'batch size'})",
                                     total=len(levels))
            section = results.bench[name] = BenchSection(
                workload=wl.describe(), mode="serving" if serving else "batch", notes=side.throughput_notes(),
                roofline=roofline.for_levels(side.model_settings(), levels, s.input_len, s.output_len, peaks))

            def recorded(level: int, run: Run, was_reused: bool, section: BenchSection = section, task: Any = task) -> None:
                section.runs.append(run)
                if not was_reused:
                    rec.add("bench", run.model_dump(mode="json"))
                progress.advance(task)

            mine = {level: _reused_run(r) for (n, level), r in reused.items() if n == name}
            _bench.run_levels(side, wl, levels, settings, reused=mine, on_level=recorded)


def _reused_run(record: dict[str, Any]) -> Run:
    """A benchmark level recorded by an interrupted run (results.jsonl), typed again."""
    from pydantic import TypeAdapter

    from .results import upgrade_run

    return TypeAdapter(Run).validate_python(upgrade_run({k: v for k, v in record.items() if k not in ("type", "time")}))


def exit_code(results: ComparisonResults) -> int:
    """0 when parity passes (or warns), 1 when it fails or a prompt errs."""
    return 1 if results.verdict in FAILING else 0
