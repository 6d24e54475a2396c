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

from .findings import Agreement


def first_diff(x: Sequence[int], y: Sequence[int]) -> int:
    """The first position where two id lists differ (the shorter one's length when one is a prefix)."""
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return min(len(x), len(y))


def max_gap(scores: Any, gen: Any) -> float:
    """Max |dlogprob| between two score lists over the same tokens."""
    return max((abs(x - y) for x, y in zip(scores.logprobs, gen.logprobs)), default=0.0)


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



def image_pixel_diff(pa: ImagePixelsResult | None, pb: ImagePixelsResult | None) -> float | None:
    """Max |difference| between the normalised pixels two sides feed their vision towers (None
    when a side cannot say)."""
    if pa is None or pb is None:
        return None
    return max((float(np.max(np.abs(xa - xb))) for xa, xb in zip(pa.pixels, pb.pixels)), default=0.0)
