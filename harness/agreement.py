"""How close two sides are, in numbers: the metrics of teacher-forced agreement and of the
pixels each side feeds its vision tower (definitions with units: docs/metrics.md, docs/parity.md).
Pure functions over log-probs and arrays; the checks that call them are in `harness.checks`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from backends import ImagePixelsResult

from .findings import Agreement, TensorDiff, WeightsComparison


def first_diff(x: Sequence[int], y: Sequence[int]) -> int:
    """The first position where two id lists differ (the shorter one's length when one is a prefix)."""
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return min(len(x), len(y))


def max_gap(scores: Any, gen: Any) -> float:
    """Max |dlogprob| between two score lists over the same tokens (positions where either is
    inf or NaN are left out: the non-finite check names them)."""
    return max((abs(x - y) for x, y in zip(scores.logprobs, gen.logprobs) if math.isfinite(x - y)), default=0.0)


def non_finite(logprobs: Sequence[float] | None) -> int | None:
    """The first position whose log-prob is inf or NaN (None: all finite)."""
    return next((i for i, x in enumerate(logprobs or []) if not math.isfinite(x)), None)


def prefix(g: Any, n: int) -> SimpleNamespace:
    """The first n positions of a generation's log-probs."""
    return SimpleNamespace(logprobs=(g.logprobs or [])[:n], top_logprobs=(g.top_logprobs or [])[:n] or None)


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
    skipped = 0
    for name, (sa, sb) in pairs.items():
        both = [(x, y) for x, y in zip(sa.logprobs, sb.logprobs) if math.isfinite(x - y)]
        skipped += min(len(sa.logprobs), len(sb.logprobs)) - len(both)
        d = [abs(x - y) for x, y in both]
        per[name] = d
        all_d += d
        lp_a += [x for x, _ in both]
        lp_b += [y for _, y in both]
        if sa.top_logprobs and sb.top_logprobs:
            k, o, am, r = topk_stats(sa.top_logprobs, sb.top_logprobs)
            kls += k
            overlaps += o
            argmax += am
            ranks += r
    if not all_d:
        return Agreement(per_token=per, non_finite=skipped)
    ppl_a, ppl_b = math.exp(-np.mean(lp_a)), math.exp(-np.mean(lp_b))
    finite = [k for k in kls if math.isfinite(k)]
    return Agreement(
        positions=len(all_d), max_abs_dlogprob=float(max(all_d)), mean_abs_dlogprob=float(np.mean(all_d)),
        per_token=per, kl_topk_max=float(max(kls)) if kls else 0.0,
        kl_topk_mean=float(np.mean(finite)) if finite else 0.0,
        topk_overlap=float(np.mean(overlaps)) if overlaps else 1.0,
        argmax_agreement=float(np.mean(argmax)) if argmax else 1.0,
        rank_agreement=float(np.mean(ranks)) if ranks else 1.0,
        ppl_a=ppl_a, ppl_b=ppl_b, ppl_delta_rel=(ppl_b - ppl_a) / ppl_a, non_finite=skipped,
    )



def image_pixel_diff(pa: ImagePixelsResult | None, pb: ImagePixelsResult | None) -> float | None:
    """Max |difference| between the normalised pixels two sides feed their vision towers (None
    when a side cannot say)."""
    if pa is None or pb is None:
        return None
    return max((float(np.max(np.abs(xa - xb))) for xa, xb in zip(pa.pixels, pb.pixels)), default=0.0)


def _coarser(a: np.ndarray, b: np.ndarray) -> Any:
    """The dtype with fewer mantissa bits of two float arrays (bfloat16 < float16 < float32)."""
    import ml_dtypes

    order = [np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]
    ranks = [order.index(x.dtype) if x.dtype in order else len(order) - 1 for x in (a, b)]
    return order[min(ranks)]


def weights_diff(ta: dict[str, np.ndarray], tb: dict[str, np.ndarray], keep: int = 8) -> WeightsComparison:
    """Two sides' weights compared tensor by tensor (Hugging Face names), each pair rounded to the
    coarser of its two dtypes first: a float32 file and its bfloat16 cast are the same weights."""
    shared = sorted(set(ta) & set(tb))
    diffs: list[TensorDiff] = []
    coarsest = "float32"
    for name in shared:
        a, b = np.asarray(ta[name]), np.asarray(tb[name])
        if a.shape != b.shape:
            diffs.append(TensorDiff(name=name, max_abs=None, rel_max=None, shapes=(list(a.shape), list(b.shape))))
            continue
        dt = _coarser(a, b)
        coarsest = str(dt) if str(dt) != "float32" else coarsest
        with np.errstate(invalid="ignore", over="ignore"):
            fa, fb = (x.astype(dt).astype(np.float32) for x in (a, b))
            if np.array_equal(fa, fb, equal_nan=True):
                continue
            gap = float(np.nanmax(np.where(fa == fb, 0.0, np.abs(fa - fb))))
            top = float(np.max(np.abs(fa))) if fa.size else 0.0
        diffs.append(TensorDiff(name=name, max_abs=gap, rel_max=gap / top if top else None))
    only_a, only_b = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
    diffs.sort(key=lambda d: -(math.inf if d.rel_max is None else d.rel_max))
    return WeightsComparison(tensors=len(shared), identical=not diffs and not only_a and not only_b,
                             compared_in=coarsest, differing=diffs[:keep], differing_count=len(diffs),
                             only_a=only_a, only_b=only_b)
