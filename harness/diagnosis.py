"""Why two sides differ: every explainer parity's checks call.

- From the prompt ids: a missing BOS, a newline merge before an image, the same text tokenized
  differently, a different template (`explain_prompt_diff`).
- From the two sides' effective settings, before any heuristic: every engine says what it really
  computes (`Backend.model_settings`): the dtype it ran, the model configuration it built (query
  scaling, window and layer types, RoPE per layer type, soft-caps), the tokenizer file and end ids,
  and where Gemma engines part by design (the rows the softmax normalises over, Gemma 3n's
  KV-sharing targets and AltUp coefficient clipping). For a prompt whose log-probs differ, each
  setting the two sides disagree on is a candidate cause; a side that can re-score with another
  setting (`SettingsRescoring`) re-scores the other side's output with the other side's value, and
  the cause is confirmed when the gap drops (to a tenth or to float noise). With every differing
  setting aligned at once, a gap down to noise means the engines differ by design, not by a bug
  (`explain_settings`).
- For images: re-scoring with causal attention inside images, and fed the other side's resized
  pixels (`explain_images`).
- On plain text: the position profile separates an attention-span difference (sliding window)
  from a logit-scale difference (soft-cap) from weights that differ (`position_profile`).

Cause names and kinds are declared in `harness.causes`; the explainers return `Finding`s and
causes, and change nothing they are given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

import numpy as np

from backends import (
    Backend,
    CausalImageScoring,
    ImageAttentionScoring,
    ImagePart,
    ImagePixelsResult,
    LayerCapture,
    ModelError,
    ModelSettings,
    ParitybenchError,
    Request,
    SettingsRescoring,
    TokenScores,
    models,
)
from backends.models import BOS, START_OF_IMAGE

from . import causes
from .agreement import first_diff, max_gap, topk_stats
from .findings import Cause, Finding, PromptDiff, Token, Tolerance, WeightsComparison
from .localize import non_finite_row

# Text for the tokenizer check and the position profile: several scripts, digits, punctuation.
PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog while the river runs past the old mill, and "
    "nobody notices the time. Привет, мир! Grüße aus München: 1234 + 5678 = 6912. "
    "def f(x):\n    return x * 2\n"
)

@dataclasses.dataclass(frozen=True)
class SettingDiff:
    """One setting both sides know and disagree on."""

    field: str
    cause: str
    a: Any
    b: Any


def settings_diff(sa: ModelSettings, sb: ModelSettings) -> list[SettingDiff]:
    """The settings both sides know and disagree on (a KV cache that just follows each side's
    compute dtype is the dtype's difference, not one of its own), then every other key of the
    model configurations they consume (`backends.models.config_diff`), as `config:<key>`. A
    by-design setting whose values are not the sides' engine conventions (`models.conventional`)
    is a configuration difference, `config:<field>`."""
    ka, kb = sa.known(), sb.known()
    follows = all(k.get("kv_cache_dtype") == k.get("dtype") for k in (ka, kb))
    out = [SettingDiff(f, _setting_cause_name(f, sa, sb), ka[f], kb[f]) for f in causes.CAUSE_SETTINGS
           if f in ka and f in kb and ka[f] != kb[f] and not (f == "kv_cache_dtype" and follows)]
    if sa.config is not None and sb.config is not None:
        for key, va, vb in models.config_diff(sa.config, sb.config):
            named = models.SETTING_OF_KEY.get(key, ())
            if named and all(f in ka and f in kb for f in named):
                continue  # the setting of that name carries it
            out.append(SettingDiff(causes.CONFIG_PREFIX + key, causes.CONFIG_PREFIX + key, va, vb))
    return out


def _setting_cause_name(field: str, sa: ModelSettings, sb: ModelSettings) -> str:
    cause = causes.setting_cause(field).name
    if causes.kind(cause) != "by-design":
        return cause
    values = {sa.convention: getattr(sa, field), sb.convention: getattr(sb, field)}
    if models.conventional(field, sa.family or sb.family, {str(k): v for k, v in values.items()}):
        return cause
    return causes.CONFIG_PREFIX + field  # not the engines' conventions: the configurations differ


def show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, str) and len(value) == 64:  # a hash
        return value[:12]
    return f"{value:g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- prompt ids


def explain_prompt_diff(a: Backend, b: Backend, ia: list[int], ib: list[int]) -> tuple[PromptDiff, Cause]:
    p = first_diff(ia, ib)
    toks = lambda side, ids: [Token(id=i, text=side.detokenize([i])) for i in ids[p:p + 4]]  # noqa: E731
    same_text = a.detokenize(ia) == b.detokenize(ib)
    diff = PromptDiff(position=p, a=toks(a, ia), b=toks(b, ib), same_text=same_text)
    shown = f"position {p}: {a.name} {[t.text for t in diff.a]} vs {b.name} {[t.text for t in diff.b]}"
    doubled = [s for s, ids, other in ((a, ia, ib), (b, ib, ia)) if ids[:2] == [BOS, BOS] and other[:2] != [BOS, BOS]]
    if p <= 1 and doubled:
        return diff, Cause(name="doubled-bos", explains=True,
                           detail=f"{doubled[0].name} starts the prompt with <bos> twice (id {BOS}); {shown}",
                           evidence={"position": p, "side": doubled[0].name})
    if p == 0 and (ia[:1] == [BOS]) != (ib[:1] == [BOS]):
        missing = b.name if ia[:1] == [BOS] else a.name
        return diff, Cause(name="missing-bos", explains=True,
                           detail=f"{missing} does not start the prompt with <bos> (id {BOS}); {shown}",
                           evidence={"position": p})
    blocks = ia.count(START_OF_IMAGE), ib.count(START_OF_IMAGE)
    if blocks[0] != blocks[1] and min(blocks) > 0:
        more = a if blocks[0] > blocks[1] else b
        return diff, Cause(name="pan-and-scan", explains=True,
                           detail=(f"{more.name}'s prompt holds {max(blocks)} images where the other's holds "
                                   f"{min(blocks)} for the same request: {more.name} cuts images into crops (pan and "
                                   f"scan), each an image of its own; {shown}"),
                           evidence={"position": p, "images": {a.name: blocks[0], b.name: blocks[1]}})
    near_image = START_OF_IMAGE in ia[p:p + 4] or START_OF_IMAGE in ib[p:p + 4]
    newline_a, newline_b = a.detokenize(ia[p:p + 3]), b.detokenize(ib[p:p + 3])
    if near_image and "\n" in newline_a and "\n" in newline_b:
        return diff, Cause(
            name="newline-merge-before-image", explains=True,
            detail=("an image opens the turn: one side merges the turn's '\\n' with the '\\n\\n' before "
                    f"<start_of_image> into one token, the other keeps two; {shown}"),
            evidence={"position": p})
    if same_text:
        return diff, Cause(name="tokenization", explains=True,
                           detail=f"the same prompt text is tokenized differently; {shown}", evidence={"position": p})
    return diff, Cause(name="chat-template", explains=False,
                       detail=f"the prompts differ as text (chat template or media expansion); {shown}",
                       evidence={"position": p})


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class _Rescorer:
    """The side that re-scores the other side's output with some of the other side's settings."""

    side: Backend
    other: Backend
    other_gen: Any
    request: Request

    def gap(self, fields: list[str]) -> float | None:
        mine, theirs = self.side.model_settings(), self.other.model_settings()
        update = {f: getattr(theirs, f) for f in fields}
        try:
            [sc] = cast(SettingsRescoring, self.side).score_with_settings(
                mine.model_copy(update=update), [self.request], [self.other_gen.token_ids])
        except ParitybenchError:
            return None
        return max_gap(sc, self.other_gen)


_LIKELY = "; the likely cause, not confirmed: no side can re-score with the other's value"


def _setting_cause(a: Backend, b: Backend, d: SettingDiff, explains: bool = False, note: str = "",
                   **evidence: Any) -> Cause:
    meaning = causes.info(d.cause).meaning
    return Cause(name=d.cause, explains=explains, detail=f"{a.name} {d.field} {show(d.a)}, {b.name} {show(d.b)}: {meaning}{note}",
                 evidence={"field": d.field, a.name: show(d.a), b.name: show(d.b), **evidence})


def explain(a: Backend, b: Backend, request: Request, ga: Any, gb: Any, before: float, noise: float,
            diffs: Sequence[SettingDiff]) -> tuple[list[Cause], bool]:
    """Causes for the settings in `diffs`, each confirmed by a re-score where a side can; and
    whether aligning all of them closes the gap to `noise`. Returns (causes, closed). The
    differences by design (the engines' known conventions) are aligned first, in every re-score of
    another setting: a configuration difference is judged against the gap that remains once they
    are, not hidden behind them."""
    if not diffs:
        return [], False
    pick = [_Rescorer(s, o, go, request) for s, o, go in ((a, b, gb), (b, a, ga)) if isinstance(s, SettingsRescoring)]
    if not pick:
        return [_setting_cause(a, b, d, note=_LIKELY, likely=True) for d in diffs], False
    rescorer = pick[0]
    found: list[Cause] = []
    designed = [d.field for d in diffs if causes.kind(d.cause) == "by-design" and causes.rescorable(d.field)]
    baseline = rescorer.gap(designed) if designed else before
    for d in diffs:
        if not causes.rescorable(d.field):
            found.append(_setting_cause(a, b, d, note=_LIKELY, likely=True))
            continue
        also = [f for f in designed if f != d.field]
        start = before if d.field in designed or baseline is None else baseline
        after = rescorer.gap([*also, d.field])
        explains = after is not None and (after <= noise or after < start / 10)
        effect = ("re-score unavailable" if after is None else
                  f"with {rescorer.other.name}'s value on the {rescorer.side.name} side"
                  + (f" (and its {', '.join(also)}, by design)" if also else "")
                  + f" the gap goes from {start:.3g} to {after:.3g}" + ("" if explains else ": not this"))
        found.append(_setting_cause(a, b, d, explains, f"; {effect}", max_abs_dlogprob=start,
                                    max_abs_dlogprob_aligned=after, rescored_by=rescorer.side.name))
    closed = False
    fields = [d.field for d in diffs if causes.rescorable(d.field)]
    if fields and len(fields) == len(diffs):
        together = rescorer.gap(fields)
        closed = together is not None and together <= noise
    return found, closed


def explain_settings(a: Backend, b: Backend, request: Request, ga: Any, gb: Any, tol: Tolerance, before: float,
                     diffs: Sequence[SettingDiff]) -> Finding:
    """Causes from the sides' settings diff, confirmed by re-scoring; a gap closed to noise by
    aligning them is a difference by design (it settles the prompt's failures into warnings) when
    every differing setting is a by-design one."""
    found, closed = explain(a, b, request, ga, gb, before, tol.logprob_pass, diffs)
    reasons = [c.reason for c in found]
    fields = ", ".join(d.field for d in diffs)
    by_design = closed and all(causes.kind(d.cause) == "by-design" for d in diffs)
    if by_design:
        reasons.append(f"aligned on {fields}, the sides agree to {tol.name} noise: the engines differ by design "
                       "here (align them with the JAX engine's conventions=hf)")
    elif closed:
        reasons.append(f"aligned on {fields}, the sides agree to {tol.name} noise: the configurations differ, "
                       "the weights and the computation do not")
    return Finding(check="settings", causes=tuple(found), reasons=tuple(reasons), settles=by_design)


def reduced_precision(a: Backend, b: Backend, tol: Tolerance, diffs: Sequence[SettingDiff],
                      named: set[str]) -> Finding | None:
    """Settings that change the computation's precision (causes of kind precision), named on every
    prompt where the sides differ in them, also within the bound: never a silent pass. `named`:
    the causes the prompt already has."""
    found = []
    for d in diffs:
        if causes.kind(d.cause) != "precision" or d.cause in named:
            continue
        detail = (f"{a.name} computes in {d.a}, {b.name} in {d.b}: compared at the {tol.name} bound" if d.field == "dtype"
                  else f"{a.name} {d.field} {show(d.a)}, {b.name} {show(d.b)}: {causes.info(d.cause).meaning}; "
                       f"within the {tol.name} bound")
        found.append(Cause(name=d.cause, explains=True, evidence={"field": d.field, a.name: d.a, b.name: d.b},
                           detail=detail))
    if not found:
        return None
    return Finding(check="precision", verdict="warn", causes=tuple(found),
                   reasons=tuple(c.reason for c in found))


def standing_configuration(a: Backend, b: Backend, tol: Tolerance, diffs: Sequence[SettingDiff],
                           named: set[str]) -> Finding | None:
    """Configuration differences the prompt's gap did not bring up (it stayed within the bound),
    named all the same: the sides are not the same model, whatever this prompt shows (a warning)."""
    found = [Cause(name=d.cause, explains=False, evidence={"field": d.field, a.name: show(d.a), b.name: show(d.b)},
                   detail=(f"{a.name} {d.field} {show(d.a)}, {b.name} {show(d.b)}: {causes.info(d.cause).meaning}; "
                           f"within the {tol.name} bound on this prompt"))
             for d in diffs if causes.kind(d.cause) == "configuration" and d.cause not in named]
    if not found:
        return None
    return Finding(check="configuration", verdict="warn", causes=tuple(found),
                   reasons=tuple(c.reason for c in found))


# ----------------------------------------------------------------------------- embedding


def explain_embedding_scale(a: Backend, b: Backend, ratio: float) -> Cause:
    """The sides' embedding outputs differ by one factor (`ratio`: b's over a's): when it is the
    normaliser sqrt(width) rounded to a 16-bit float on one side, say which."""
    import ml_dtypes

    width = a.model_settings().embed_dim or b.model_settings().embed_dim
    named = ""
    if width:
        exact = float(np.sqrt(width))
        for dt in ("bfloat16", "float16"):
            rounded = float(np.asarray(exact, np.float32).astype(getattr(ml_dtypes, dt, np.float16)))
            for side, r in ((b, rounded / exact), (a, exact / rounded)):
                if abs(ratio - r) <= 1e-5 * r and rounded != exact:
                    named = (f": {side.name}'s normaliser is sqrt({width}) = {exact:.6g} rounded to {dt} "
                             f"({rounded:.6g})")
    return Cause(name="embedding-scale", explains=True,
                 detail=f"the sides' embedding outputs differ by one factor ({b.name} = {ratio:.6g} x {a.name}){named}",
                 evidence={"ratio": ratio, "width": width})


# ----------------------------------------------------------------------------- decoding


def decode_consistency(side: Backend, gen: Any, own: Any, tol: Tolerance) -> Cause | None:
    """A side's generation (`gen`: its ids, the log-probs it reported while decoding) against its own
    teacher-forced scores of the same ids (`own`, over as many of them as it covers): the largest
    |dlogprob|, and the greedy tokens that are not the top of its own scores (beyond a tie within
    the bound). None when both agree within `tol`."""
    k = min(len(gen.logprobs), len(own.logprobs))
    gaps = [abs(x - y) for x, y in zip(gen.logprobs[:k], own.logprobs[:k]) if np.isfinite(x - y)]
    gap = max(gaps, default=0.0)
    first = next((i for i, d in enumerate(gaps) if d > tol.logprob_pass), None)
    not_top = []
    for i, (t, top) in enumerate(zip(gen.token_ids[:k], (own.top_logprobs or [])[:k])):
        if top and top[0][0] != t and top[0][1] - own.logprobs[i] > tol.logprob_pass:
            not_top.append(i)
    if first is None and not not_top:
        return None
    where = []
    if first is not None:
        where.append(f"its log-probs while generating differ from its own teacher-forced scores of the same ids by up "
                     f"to {gap:.3g} (first beyond {tol.logprob_pass:g} at generated token {first})")
    if not_top:
        where.append(f"{len(not_top)} of its {k} greedy tokens are not the top of its own scores (first at generated "
                     f"token {not_top[0]})")
    return Cause(name="decode-inconsistency", explains=True,
                 detail=f"{side.name} disagrees with itself: " + "; ".join(where) + " (decoding computes what its "
                        "prefill does not: KV cache, positions or KV sharing)",
                 evidence={"side": side.name, "max_abs_dlogprob": gap, "first_token": first, "greedy_not_top": not_top,
                           "tokens": k})


# ----------------------------------------------------------------------------- non-finite values

def explain_non_finite(side: Backend, request: Request, continuation: Sequence[int], dtype: str | None,
                       where: str) -> Cause:
    """A side whose log-probs hold inf or NaN (`where`: which, in words): its hidden states layer by
    layer (when it can capture them) give the first non-finite row and token. It is an `overflow`
    when that row holds an infinity (IEEE arithmetic overflows to inf; NaN follows from inf - inf)
    or the largest finite value before it is beyond the square root of the dtype's largest (the
    RMSNorm's mean of squares overflows there), else `non-finite`."""
    head = f"{side.name} ({dtype or 'its dtype'}) returns inf or NaN log-probs ({where})"
    if not isinstance(side, LayerCapture):
        return Cause(name="non-finite", explains=True, detail=f"{head}; it cannot capture its layers to say where",
                     evidence={"side": side.name, "where": where})
    try:
        states = side.capture_layers(request, list(continuation))
    except ParitybenchError as e:
        return Cause(name="non-finite", explains=True, detail=f"{head}; layer capture failed: {e}",
                     evidence={"side": side.name, "where": where})
    h = states.hidden
    broken = non_finite_row(states)
    if broken is None:
        return Cause(name="non-finite", explains=True, detail=f"{head}; its hidden states are finite at every depth: "
                     "the logits or the softmax become non-finite", evidence={"side": side.name, "where": where})
    k, token = broken
    largest = float(np.abs(h[:k]).max()) if k else 0.0
    import ml_dtypes

    top = float(ml_dtypes.finfo(dtype if dtype in ("float16", "bfloat16") else "float32").max)
    overflow = bool(np.isinf(h[k]).any()) or largest > top ** 0.5
    row = "the embedding" if k == 0 else "the final norm" if k == h.shape[0] - 1 else f"layer {k - 1}"
    detail = (f"{head}; its hidden states first hold inf/NaN after {row}, at token {token} "
              f"({side.detokenize([states.ids[token]])!r}); the largest finite |value| before is {largest:.4g}"
              + (f" ({dtype}'s largest is {top:g}): values overflow" if overflow else ""))
    return Cause(name="overflow" if overflow else "non-finite", explains=True, detail=detail,
                 evidence={"side": side.name, "dtype": dtype, "first_layer": k - 1, "token": token,
                           "largest_finite_before": largest, "where": where})


# ----------------------------------------------------------------------------- weights


def explain_weights(a: Backend, b: Backend, w: WeightsComparison) -> Cause | None:
    """The `weights` cause from both sides' tensors compared one by one: confirmed when shared
    tensors differ; unconfirmed when only tensors one side has (an untied output head) differ;
    None when the weights are identical."""
    if w.identical:
        return None
    parts = []
    if w.differing_count:
        top = w.differing[0]
        size = ("shapes " + " vs ".join(map(str, top.shapes)) if top.shapes else
                f"max |difference| {top.max_abs:.3g}" + (f", {top.rel_max:.3g} of its largest value" if top.rel_max else ""))
        parts.append(f"{w.differing_count} of {w.tensors} tensors differ (compared in {w.compared_in}); the most: "
                     f"{top.name} ({size})")
    else:
        parts.append(f"the {w.tensors} tensors both sides have are identical (compared in {w.compared_in})")
    for side, only in ((a, w.only_a), (b, w.only_b)):
        if only:
            parts.append(f"{len(only)} only on {side.name} ({', '.join(only[:3])})")
    return Cause(name="weights", explains=bool(w.differing_count), detail="; ".join(parts),
                 evidence={"tensors": w.tensors, "differing": w.differing_count, "compared_in": w.compared_in,
                           "largest": [d.name for d in w.differing[:3]], f"only_{a.name}": w.only_a[:8],
                           f"only_{b.name}": w.only_b[:8]})


# ----------------------------------------------------------------------------- images


class _CausalScorer(Backend, CausalImageScoring, Protocol):
    """A side that can score with causal attention inside images."""


def with_images(request: Request, arrays: Sequence[np.ndarray]) -> Request:
    """`request` with its images replaced, in order, by `arrays` (HxWx3 uint8)."""
    it = iter(arrays)
    msgs = [m.model_copy(update={"content": [ImagePart(array=next(it)) if isinstance(p, ImagePart) else p
                                             for p in m.content]}) for m in request.messages]
    return request.model_copy(update={"messages": msgs})


@dataclasses.dataclass(frozen=True)
class ImageCase:
    """An image prompt whose log-probs differ: both sides, their greedy outputs, the gap, and the
    pixels each side feeds its vision tower (by side name; None: the side cannot say)."""

    a: Backend
    b: Backend
    request: Request
    ga: Any
    gb: Any
    before: float
    pixel_gap: float | None
    pixels: dict[str, ImagePixelsResult | None]


def explain_images(case: ImageCase, tol: Tolerance, earlier: Sequence[Cause]) -> Finding | None:
    """Cross-checks for an image prompt that differs: a side that can score with causal attention
    inside images (`CausalImageScoring`) re-scores the other side's output (1) that way, (2) also fed
    the other side's resized pixels. A cause is named with the gap before and after; it explains
    the difference when the gap falls below a tenth. `earlier`: the causes named before."""
    if not any(isinstance(s, CausalImageScoring) for s in (case.a, case.b)):
        return None
    tries, reasons = _each_way(case, "image cross-check", lambda scorer, other, gen: cast(
        _CausalScorer, scorer).score_causal_images([case.request], [gen.token_ids])
        if isinstance(scorer, CausalImageScoring) else None)
    if not tries:
        return Finding(check="images", reasons=tuple(reasons))
    after, causal, other = tries[0]
    causal_scorer = cast(_CausalScorer, causal)
    explains = after < case.before / 10
    attention = Cause(
        name="causal-image-attention", explains=explains,
        detail=(f"with causal attention inside images on the {causal_scorer.name} side the gap goes from {case.before:.3g} "
                f"to {after:.3g}" + (f": {other.name} attends causally inside images where {causal_scorer.name} attends both "
                                     "ways (vLLM's CPU attention backend has no bidirectional image attention)"
                                     if explains else ": attention inside images does not explain it")),
        evidence={"max_abs_dlogprob_bidirectional": case.before, "max_abs_dlogprob_causal": after,
                  "rescored_by": causal_scorer.name, "odd_side": other.name if explains else None})
    found = [attention]
    reasons.append(attention.reason)
    across = None if explains or len(case.request.images) < 2 else _explain_across_images(case)
    if across is not None:
        found.append(across)
        reasons.append(across.reason)
        if across.explains:  # a mask bug, not an engine's known limitation: it stays a failure
            return Finding(check="images", causes=tuple(found), reasons=tuple(reasons))
    closed = after <= tol.logprob_pass
    if not closed and case.pixel_gap:
        resize, more = _explain_resize(case, tol, after if explains else case.before, causal_scorer if explains else None)
        reasons += more
        if resize is not None:
            found.append(resize)
            reasons.append(resize.reason)
            closed = resize.explains
    settles = closed and any(c.explains for c in [*earlier, *found])
    return Finding(check="images", causes=tuple(found), reasons=tuple(reasons), settles=settles)


def _each_way(case: ImageCase, what: str, rescore: Callable[[Backend, Backend, Any], list[TokenScores] | None]
              ) -> tuple[list[tuple[float, Backend, Backend]], list[str]]:
    """Each side re-scoring the other side's output its own way (`rescore(scorer, other, other's
    generation)`: one score, or None where that side cannot): (gap to the other's log-probs, scorer,
    other), the smallest first; and why a re-score failed, per side."""
    tries, reasons = [], []
    for scorer, other, other_gen in ((case.a, case.b, case.gb), (case.b, case.a, case.ga)):
        try:
            scores = rescore(scorer, other, other_gen)
        except ParitybenchError as e:
            reasons.append(f"{what} on {scorer.name} unavailable: {e}")
            continue
        if scores is not None:
            tries.append((max_gap(scores[0], other_gen), scorer, other))
    return sorted(tries, key=lambda t: t[0]), reasons


def _explain_across_images(case: ImageCase) -> Cause | None:
    """A prompt with several images: a side that can score with every image of the prompt mutually
    visible (`ImageAttentionScoring`) re-scores the other side's output that way; the gap falling
    below a tenth shows the other side lets its images see each other."""
    tries, _ = _each_way(case, "mutual-image cross-check", lambda scorer, other, gen: scorer.score_with_image_attention(
        [case.request], [gen.token_ids], attention="across-images") if isinstance(scorer, ImageAttentionScoring) else None)
    if not tries:
        return None
    after, scorer, other = tries[0]
    explains = after < case.before / 10
    return Cause(name="image-attention-across-images", explains=explains,
                 detail=(f"with every image of the prompt mutually visible on the {scorer.name} side the gap goes from "
                         f"{case.before:.3g} to {after:.3g}" + (f": {other.name} lets each image's tokens attend to the "
                                                                f"other images (later ones too), where {scorer.name} "
                                                                "attends both ways within each image only"
                                                                if explains else ": not this")),
                 evidence={"max_abs_dlogprob_per_image": case.before, "max_abs_dlogprob_across_images": after,
                           "rescored_by": scorer.name, "odd_side": other.name if explains else None})


def _explain_resize(case: ImageCase, tol: Tolerance, gap: float,
                    causal_scorer: _CausalScorer | None) -> tuple[Cause | None, list[str]]:
    """The sides feed their vision towers different pixels: re-score one side fed the other side's
    resized image (with causal image attention on `causal_scorer` when that cause was confirmed);
    the best of the two directions names `image-resize-rounding`, explaining when the gap closes."""
    def fed_theirs(scorer: Backend, other: Backend, gen: Any) -> list[TokenScores] | None:
        theirs = case.pixels.get(other.name)
        if theirs is None or (causal_scorer is not None and scorer is not causal_scorer):
            return None
        fn = causal_scorer.score_causal_images if causal_scorer is not None else scorer.score
        return fn([with_images(case.request, theirs.resized)], [gen.token_ids])

    tries, reasons = _each_way(case, "pixel cross-check", fed_theirs)
    if not tries:
        return None, reasons
    final, scorer, other = tries[0]
    theirs = case.pixels[other.name]
    assert theirs is not None  # fed_theirs scored only with it
    resize = Cause(
        name="image-resize-rounding", explains=final <= tol.logprob_pass,
        detail=(f"{other.name}'s image preprocessing ({theirs.processor}) and {scorer.name}'s differ (max normalised "
                f"pixel difference {case.pixel_gap:.3g}: one rounds the resized image to uint8, the other "
                f"resizes in float); fed {other.name}'s resized image, {scorer.name}'s gap goes from {gap:.3g} to "
                f"{final:.3g}"),
        evidence={"max_abs_pixel": case.pixel_gap, "max_abs_dlogprob_causal": gap,
                  "max_abs_dlogprob_causal_other_pixels": final, "causal_image_attention": causal_scorer is not None,
                  "rescored_by": scorer.name})
    return resize, reasons


# ----------------------------------------------------------------------------- plain text


def position_profile(a: Backend, b: Backend, tol: Tolerance, top_k: int = 5) -> tuple[dict[str, Any], Cause]:
    """Score the same plain-text ids on both sides, position by position, and name the kind of
    difference: none, attention span (sliding window), logit scale (soft-cap), or weights. The
    pattern is a hint, not a confirmation: the cause is named with `explains` false (nothing was
    re-scored), and the report lists it as named, not confirmed."""
    ids = [BOS] + a.text_ids(PROBE_TEXT)
    sa, sb = a.score_ids(ids, top_logprobs=top_k), b.score_ids(ids, top_logprobs=top_k)
    d = np.abs(np.array(sa.logprobs) - np.array(sb.logprobs))
    bad = np.nonzero(d > tol.logprob_pass)[0]
    top_a, top_b = sa.top_logprobs, sb.top_logprobs
    if top_a is None or top_b is None:
        raise ModelError(f"{(a if top_a is None else b).name} returned no top log-probs (top_logprobs={top_k})")
    _, _, argmax, ranks = topk_stats(top_a, top_b)
    # spread of each side's top-k log-probs over the same ids: a soft-cap narrows every position
    ratios = []
    for ta, tb in zip(top_a, top_b):
        db = dict(tb)
        shared = [t for t, _ in ta if t in db]
        if len(shared) >= 2:
            xa = np.array([dict(ta)[t] for t in shared])
            xb = np.array([db[t] for t in shared])
            if np.std(xa) > 0:
                ratios.append(float(np.std(xb) / np.std(xa)))
    info = {"positions": len(d), "max_abs_dlogprob": float(d.max()), "per_position": d.round(8).tolist(),
            "first_differing_query_position": int(bad[0]) if len(bad) else None,
            "rank_agreement": float(np.mean(ranks)) if ranks else None, "spread_ratio_b_over_a": ratios}
    if not len(bad):
        return info, Cause(name="none-on-plain-text", explains=False,
                           detail="both sides agree on plain text to float noise; the difference is in the "
                                  "prompt path (template, media)", evidence={"max_abs_dlogprob": float(d.max())})
    first = int(bad[0])  # d[i] is the prediction made at query position i
    if first >= 2:
        return info, Cause(
            name="attention-span", explains=False,  # a pattern, not a confirmation: a hint
            detail=(f"log-probs agree to noise at query positions 0..{first - 1} and differ from position {first} on: "
                    f"one side attends to a different span of past tokens (a sliding window of {first} on one "
                    "side?) or encodes positions differently beyond it"),
            evidence={"first_differing_query_position": first, "max_abs_dlogprob": float(d.max())})
    if ranks and all(ranks) and ratios and (all(r < 1 for r in ratios) or all(r > 1 for r in ratios)):
        narrower = b.name if ratios[0] < 1 else a.name
        return info, Cause(
            name="logit-scale", explains=False,  # a pattern, not a confirmation: a hint
            detail=(f"every position ranks the top-{top_k} the same, but {narrower}'s log-prob gaps are narrower at "
                    f"every position (spread ratio {min(ratios):.3f}..{max(ratios):.3f}): a final-logit soft-cap, "
                    "logit scaling or temperature differs"),
            evidence={"spread_ratio_min": min(ratios), "spread_ratio_max": max(ratios)})
    return info, Cause(
        name="weights", explains=False,  # a pattern, not a confirmation: a hint
        detail=(f"log-probs differ from the first position on (max {float(d.max()):.3g}) and the top-{top_k} "
                f"order changes at {100 * (1 - float(np.mean(ranks))):.0f}% of positions: the weights or the computation "
                "differ (a perturbed or mis-mapped tensor, a norm convention, the dtype)"),
        evidence={"max_abs_dlogprob": float(d.max()), "rank_agreement": float(np.mean(ranks)) if ranks else None})
