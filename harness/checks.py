"""Parity's checks on one prompt, as a pipeline: each check takes the pair, the prompt's case (both
sides' greedy outputs, their cross-scores, their pixels) and what the checks before it found, and
returns a `Finding` (or None: nothing to say). The prompt's result is the fold of the findings
(`findings.fold`): the worst verdict, every cause and reason in check order, each check's data.

    result = checks.check_prompt(pair, case)            # every check in CHECKS
    result = checks.check_prompt(pair, case, (prompt_ids, greedy))

A new check is one function here, added to `CHECKS`; the causes it names are declared in
`harness.causes`; its explainer, when it needs one, goes in `harness.diagnosis`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

from backends import Backend, ImagePixelsResult, ParitybenchError, Request

from . import diagnosis
from .agreement import agreement, first_diff, image_pixel_diff, non_finite, prefix
from .findings import Cause, Divergence, Finding, PromptParity, Side, Token, Tolerance, fold, worst
from .localize import localize as localize_layers

LocalizeWhat = Literal["off", "failing", "all"]


@dataclasses.dataclass(frozen=True)
class Pair:
    """What holds for every prompt of a pair: the sides, the bound, their settings diff, and
    whether (and how finely) to localise layer by layer."""

    a: Backend
    b: Backend
    tol: Tolerance
    diffs: tuple[diagnosis.SettingDiff, ...] = ()
    localize: LocalizeWhat = "off"
    localize_threshold: float = 1e-4
    dtypes: tuple[str | None, str | None] = (None, None)


@dataclasses.dataclass(frozen=True)
class PromptCase:
    """One prompt both sides ran: their greedy generations, each side's teacher-forced score of the
    other's output (`a_on_b`: a scoring b's; a score, None for an empty output, or the error), and
    the pixels each feeds its vision tower (a result, None, or the error)."""

    pid: str
    request: Request
    ga: Any
    gb: Any
    a_on_b: Any = None
    b_on_a: Any = None
    pixels: tuple[Any, Any] = (None, None)


Check = Callable[[Pair, PromptCase, Sequence[Finding]], Finding | None]


def _earlier(found: Sequence[Finding], check: str) -> Finding | None:
    return next((f for f in found if f.check == check), None)


def _gap_beyond_bound(found: Sequence[Finding]) -> float | None:
    """The teacher-forced gap when the prompt ids were equal and it exceeded the bound, else None."""
    tf = _earlier(found, "teacher-forced")
    if tf is None or not any(c.name == "logprobs" for c in tf.causes):
        return None
    return tf.record["agreement"].max_abs_dlogprob


def prompt_ids(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding:
    """Both sides' prompt ids; where they differ, the first differing position and its cause."""
    equal = case.ga.prompt_ids == case.gb.prompt_ids
    if equal:
        return Finding(check="prompt-ids", record={"prompt_ids_equal": True})
    diff, cause = diagnosis.explain_prompt_diff(pair.a, pair.b, case.ga.prompt_ids, case.gb.prompt_ids)
    known = cause.kind == "preprocessing"
    return Finding(check="prompt-ids", verdict="warn" if known else "fail", causes=(cause,),
                   reasons=(f"prompt ids differ ({cause.name}): {cause.detail}",),
                   record={"prompt_ids_equal": False, "prompt_diff": diff})


def greedy(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding:
    """Greedy exact match (ids and text) and the first divergence, with vLLM's top-N rule there."""
    a, b, ga, gb, tol = pair.a, pair.b, case.ga, case.gb, pair.tol
    record: dict[str, Any] = {"greedy_equal": ga.token_ids == gb.token_ids, "text_equal": ga.text == gb.text}
    if record["greedy_equal"]:
        return Finding(check="greedy", record=record)
    i = first_diff(ga.token_ids, gb.token_ids)
    ta = ga.token_ids[i] if i < len(ga.token_ids) else None
    tb = gb.token_ids[i] if i < len(gb.token_ids) else None
    div = Divergence(index=i, top_n=tol.top_n,
                     a=Token(id=ta, text=a.detokenize([ta])) if ta is not None else None,
                     b=Token(id=tb, text=b.detokenize([tb])) if tb is not None else None)
    if ta is not None and tb is not None and ga.top_logprobs and gb.top_logprobs:
        div.a_in_b_top_n = ta in [t for t, _ in gb.top_logprobs[i][: tol.top_n]]
        div.b_in_a_top_n = tb in [t for t, _ in ga.top_logprobs[i][: tol.top_n]]
    record["divergence"] = div
    near_tie = bool(div.a_in_b_top_n and div.b_in_a_top_n)
    what = (f"greedy outputs part at token {i}: {a.name} {div.a.text if div.a else '(end)'!r} vs "
            f"{b.name} {div.b.text if div.b else '(end)'!r}")
    if tol.exact_greedy or not near_tie:
        return Finding(check="greedy", verdict="fail", record=record,
                       reasons=(what + (f" (each in the other's top-{tol.top_n})" if near_tie else ""),))
    tie = Cause(name="near-tie", explains=True, detail=f"at token {i} each side's token is in the other's top-{tol.top_n}",
                evidence={"index": i})
    return Finding(check="greedy", verdict="warn", causes=(tie,), record=record,
                   reasons=(what + f"; a near-tie: each token is in the other's top-{tol.top_n} ({tol.name} rule)",))


def finite(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """inf or NaN in a side's log-probs (while generating, or scoring the other's output): a
    failure, named (`overflow` or `non-finite`) and placed at the first layer and token where the
    side's hidden states stop being finite."""
    bad = []
    for side, gen, score, dtype in ((pair.a, case.ga, case.a_on_b, pair.dtypes[0]),
                                    (pair.b, case.gb, case.b_on_a, pair.dtypes[1])):
        where = [f"{what} from position {p}" for what, lp in (("generating", gen.logprobs),
                                                               ("scoring", getattr(score, "logprobs", None)))
                 if (p := non_finite(lp)) is not None]
        if where:
            bad.append(diagnosis.explain_non_finite(side, case.request, list(gen.token_ids), dtype, "; ".join(where)))
    if not bad:
        return None
    return Finding(check="non-finite", verdict="fail", causes=tuple(bad),
                   reasons=tuple(c.reason for c in bad))


def pixels(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """The pixels each side feeds its vision tower: max |difference| (when both can say)."""
    if not case.request.images:
        return None
    if err := next((e for e in case.pixels if isinstance(e, ParitybenchError)), None):
        # the comparison stands without it
        return Finding(check="pixels", reasons=(f"image preprocessing check unavailable: {err}",))
    return Finding(check="pixels", record={"image_pixel_max_abs": image_pixel_diff(*case.pixels)})


def teacher_forced(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding:
    """Each side's score of the other's output over identical context (or, when neither could
    score, the generation log-probs over the shared greedy prefix), against the bound."""
    a, b, ga, gb, tol = pair.a, pair.b, case.ga, case.gb, pair.tol
    pairs: dict[str, tuple[Any, Any]] = {}
    reasons: list[str] = []
    if case.b_on_a is not None and not isinstance(case.b_on_a, Exception):
        pairs[f"{a.name} output"] = (ga, case.b_on_a)
    if case.a_on_b is not None and not isinstance(case.a_on_b, Exception):
        pairs[f"{b.name} output"] = (case.a_on_b, gb)
    for scorer, other, err in ((a, b, case.a_on_b), (b, a, case.b_on_a)):
        if isinstance(err, Exception):
            reasons.append(f"{scorer.name} cannot score {other.name}'s output: {err}")
    if not pairs:  # fall back on the generation log-probs over the shared prefix (same context)
        n = first_diff(ga.token_ids, gb.token_ids)
        pairs["shared prefix"] = (prefix(ga, n), prefix(gb, n))
        reasons.append(f"compared on the shared greedy prefix ({n} tokens)")
    ag = agreement(pairs)
    ids = _earlier(found, "prompt-ids")
    if (ids is not None and not ids.record["prompt_ids_equal"]) or ag.max_abs_dlogprob <= tol.logprob_pass:
        return Finding(check="teacher-forced", reasons=tuple(reasons), record={"agreement": ag})
    beyond = Cause(name="logprobs", explains=False,
                   detail=f"teacher-forced max |dlogprob| {ag.max_abs_dlogprob:.3g} > {tol.logprob_pass:g}")
    reasons.append(f"teacher-forced max |dlogprob| {ag.max_abs_dlogprob:.3g} exceeds the {tol.name} "
                   f"bound {tol.logprob_pass:g} (mean {ag.mean_abs_dlogprob:.3g})")
    return Finding(check="teacher-forced", verdict="warn" if ag.max_abs_dlogprob <= tol.logprob_warn else "fail",
                   causes=(beyond,), reasons=tuple(reasons), record={"agreement": ag})


def decoding(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """Each side against itself, no second engine needed: its log-probs while generating against its
    own teacher-forced scores of the same tokens, and each greedy token against the top of those
    scores. A KV-cache, position or KV-sharing bug in decoding shows here and nowhere else. Over the
    shared greedy prefix the cross-scores already hold each side's own scores; past it, the side
    scores its own output."""
    inconsistent = []
    n = first_diff(case.ga.token_ids, case.gb.token_ids)
    for side, gen, cross in ((pair.a, case.ga, case.a_on_b), (pair.b, case.gb, case.b_on_a)):
        if not gen.logprobs or isinstance(cross, Exception) or cross is None:
            continue
        own = cross
        if n < len(gen.token_ids):
            try:
                [own] = side.score([case.request], [gen.token_ids], top_logprobs=len((gen.top_logprobs or [[]])[0]))
            except ParitybenchError:
                own = cross  # the shared prefix is what there is
        found_here = diagnosis.decode_consistency(side, gen, own, pair.tol)
        if found_here is not None:
            inconsistent.append(found_here)
    if not inconsistent:
        return None
    worst_gap = max(c.evidence["max_abs_dlogprob"] for c in inconsistent)
    fails = worst_gap > pair.tol.logprob_warn or any(c.evidence["greedy_not_top"] for c in inconsistent)
    return Finding(check="decoding", verdict="fail" if fails else "warn", causes=tuple(inconsistent),
                   reasons=tuple(c.reason for c in inconsistent))


def settings(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """A gap beyond the bound, explained by the settings the sides differ in (re-scored to confirm)."""
    gap = _gap_beyond_bound(found)
    if gap is None or not pair.diffs:
        return None
    return diagnosis.explain_settings(pair.a, pair.b, case.request, case.ga, case.gb, pair.tol, gap, pair.diffs)


def images(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """A gap beyond the bound on an image prompt: attention inside images, then the resized pixels."""
    gap = _gap_beyond_bound(found)
    if gap is None or not case.request.images:
        return None
    px = _earlier(found, "pixels")
    measured = px is not None and "image_pixel_max_abs" in px.record
    by_side: dict[str, ImagePixelsResult | None] = (
        {pair.a.name: case.pixels[0], pair.b.name: case.pixels[1]} if measured else {})
    image_case = diagnosis.ImageCase(pair.a, pair.b, case.request, case.ga, case.gb, gap,
                                     px.record["image_pixel_max_abs"] if px is not None and measured else None, by_side)
    return diagnosis.explain_images(image_case, pair.tol, [c for f in found for c in f.causes])


def precision(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """The sides compute in different precisions: named on every prompt, never a silent pass."""
    return diagnosis.reduced_precision(pair.a, pair.b, pair.tol, pair.diffs, {c.name for f in found for c in f.causes})


def configuration(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """The sides' configurations differ where this prompt did not show it: named, a warning."""
    return diagnosis.standing_configuration(pair.a, pair.b, pair.tol, pair.diffs,
                                            {c.name for f in found for c in f.causes})


def summary(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """A prompt nothing was said of: greedy identical and within the bound, in words."""
    if any(f.reasons for f in found):
        return None
    tf = _earlier(found, "teacher-forced")
    gap = tf.record["agreement"].max_abs_dlogprob if tf is not None else 0.0
    return Finding(check="summary", reasons=(f"greedy identical; teacher-forced max |dlogprob| {gap:.2g} "
                                             f"<= {pair.tol.logprob_pass:g}",))


def localization(pair: Pair, case: PromptCase, found: Sequence[Finding]) -> Finding | None:
    """Where the sides part for this prompt (its prompt and a's greedy tokens), layer by layer: for
    every prompt ("all") or those whose log-probs fail ("failing"), on the same prompt ids."""
    ids = _earlier(found, "prompt-ids")
    failing = _gap_beyond_bound(found) is not None
    if pair.localize == "off" or (ids is not None and not ids.record["prompt_ids_equal"]):
        return None
    if pair.localize == "failing" and not failing:
        return None
    kind = "image" if case.request.images else "audio"
    loc = localize_layers(pair.a, pair.b, case.request, list(case.ga.token_ids), dtypes=pair.dtypes, media_kind=kind,
                          threshold=pair.localize_threshold)
    so_far = worst(*(f.verdict for f in found if f.verdict is not None))
    shown = loc.status == "localised" or so_far != "pass"
    scale = () if loc.embedding_scale is None else (
        diagnosis.explain_embedding_scale(pair.a, pair.b, loc.embedding_scale),)
    return Finding(check="localization", record={"localization": loc}, causes=scale,
                   reasons=((f"layers: {loc.detail}",) if shown else ()) + tuple(c.reason for c in scale))


CHECKS: tuple[Check, ...] = (prompt_ids, greedy, finite, pixels, teacher_forced, decoding, settings, images,
                             precision, configuration, summary, localization)


def check_prompt(pair: Pair, case: PromptCase, checks: Sequence[Check] = CHECKS) -> PromptParity:
    """Every check on one prompt, in order, each seeing what the ones before it found; their fold."""
    found: list[Finding] = []
    for check in checks:
        finding = check(pair, case, tuple(found))
        if finding is not None:
            found.append(finding)
    ga, gb = case.ga, case.gb
    base = PromptParity(id=case.pid, modalities=sorted(case.request.modalities), verdict="pass",
                        a=Side(prompt_ids=ga.prompt_ids, token_ids=ga.token_ids, text=ga.text,
                               finish_reason=ga.finish_reason),
                        b=Side(prompt_ids=gb.prompt_ids, token_ids=gb.token_ids, text=gb.text,
                               finish_reason=gb.finish_reason))
    return fold(base, found)
