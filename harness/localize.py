"""Where two sides part: the residual stream compared layer by layer.

Both sides capture the stream at every depth for the same token ids (`LayerCapture`): the
embedding (images merged in), the stream after each decoder layer, the final norm's output. Per
row the relative max difference (max |a - b| / max |a|) and relative L2 difference, over all
tokens and per token region (text, image or audio soft tokens). The first row beyond the threshold
is where the difference appears (it then carries forward); a second, local pass on one side feeds
every layer the other side's input stream, so each layer is compared on identical inputs and only
the guilty layer(s) stand out.

Indices: -1 is the embedding, 0..N-1 the decoder layers, N the final norm.
Localisation needs float32 on both sides: in bfloat16 the per-layer noise (~1e-2 relative,
reference probe) hides differences of 1e-3.
"""

from __future__ import annotations

import time
from typing import cast

import numpy as np

from backends import Backend, LayerCapture, LayerStates, ParitybenchError, Request, UnsupportedError

from .findings import LOCALIZE_THRESHOLD as THRESHOLD
from .findings import LayerRow, Localization

__all__ = ["THRESHOLD", "LayerRow", "Localization", "layer_rows", "localize"]

def _row_name(k: int, n: int) -> str:
    return "embedding" if k == 0 else "final norm" if k == n + 1 else f"layer {k - 1}"


def _rel(x: np.ndarray, y: np.ndarray, top: float, where: np.ndarray | None = None) -> float | None:
    """max |x - y| / top (over the tokens `where`; None when there are none)."""
    if where is not None and not where.any():
        return None
    d = np.abs(x - y) if where is None else np.abs(x[where] - y[where])
    return float(d.max()) / top


def layer_rows(a: LayerStates, b: LayerStates, local: LayerStates | None = None) -> list[LayerRow]:
    """Per-row relative differences of b against a (and of the local pass against a); every
    difference of a row is divided by that row's max |a| (its L2 difference by its L2 norm)."""
    ha, hb = a.hidden.astype(np.float64), b.hidden.astype(np.float64)
    n = ha.shape[0] - 2
    media = np.asarray(a.media, bool)
    rows = []
    for k in range(ha.shape[0]):
        x, y = ha[k], hb[k]
        top = float(np.abs(x).max()) or 1.0
        rows.append(LayerRow(
            index=k - 1, name=_row_name(k, n), rel_max=_rel(x, y, top) or 0.0,
            rel_l2=float(np.linalg.norm(x - y)) / (float(np.linalg.norm(x)) or 1.0),
            rel_max_text=_rel(x, y, top, ~media), rel_max_media=_rel(x, y, top, media),
            local_rel_max=_rel(x, local.hidden[k].astype(np.float64), top) if local is not None and k > 0 else None))
    return rows


def non_finite_row(states: LayerStates) -> tuple[int, int] | None:
    """The first row (0: the embedding) and token where a side's captured stream holds inf or NaN."""
    bad = ~np.isfinite(states.hidden)
    if not bad.any():
        return None
    k = int(np.nonzero(bad.any(axis=(1, 2)))[0][0])
    return k, int(np.nonzero(bad[k].any(axis=-1))[0][0])


def _non_finite(sides: tuple[tuple[Backend, LayerStates], ...], seconds: dict[str, float],
                threshold: float) -> Localization | None:
    """Where the first side whose stream holds inf or NaN stops being finite (None: both finite)."""
    for side, states in sides:
        broken = non_finite_row(states)
        if broken is not None:
            k, token = broken
            return Localization(status="localised", reference=sides[0][0].name, first_layer=k - 1,
                                tokens=len(states.ids), seconds=seconds, threshold=threshold, detail=(
                                    f"{side.name}'s hidden states first hold inf or NaN at "
                                    f"{_row_name(k, states.hidden.shape[0] - 2)}, token {token}"))
    return None


def embedding_scale(ea: np.ndarray, eb: np.ndarray, tolerance: float = 1e-5) -> float | None:
    """b's embedding output over a's when one constant factor (other than 1) maps every element of
    one onto the other (to `tolerance`, relative to the largest value); else None."""
    x, y = ea.astype(np.float64).ravel(), eb.astype(np.float64).ravel()
    big = np.abs(x) > 1e-3 * float(np.abs(x).max() or 1.0)
    if not big.any():
        return None
    ratio = float(np.median(y[big] / x[big]))
    fits = float(np.abs(y - ratio * x).max()) <= tolerance * float(np.abs(y).max() or 1.0)
    return ratio if fits and abs(ratio - 1.0) > tolerance else None


def _capture(side: Backend, request: Request, cont: list[int], reference: np.ndarray | None = None) -> LayerStates:
    return cast(LayerCapture, side).capture_layers(request, cont, reference=reference)


def localize(a: Backend, b: Backend, request: Request, continuation_ids: list[int], *,
             dtypes: tuple[str | None, str | None] = (None, None), threshold: float = THRESHOLD,
             media_kind: str = "image") -> Localization:
    """Compare the two sides' streams for the request's prompt + `continuation_ids`, row by row,
    and name the first row that parts and the guilty layer(s) (see the module doc)."""
    for side in (a, b):
        if not isinstance(side, LayerCapture):
            return Localization(status="unsupported", detail=f"{side.name}: this engine cannot capture its layers")
    low = [f"{s.name} ({d})" for s, d in zip((a, b), dtypes) if d and "16" in d]  # bfloat16, float16
    if low:
        return Localization(status="not-localisable", detail=(
            f"not localisable at this precision: {', '.join(low)} computes in 16 bits, whose per-layer noise "
            "(~1e-2 relative in bfloat16) hides the differences localisation looks for; compare in float32"))
    note = ""
    try:
        try:
            sa = _capture(a, request, continuation_ids)
            sb = _capture(b, request, continuation_ids)
        except UnsupportedError as e:
            if not continuation_ids or "continuation" not in str(e):
                raise
            continuation_ids = []  # a side cannot feed these ids after the prompt: the prompt alone
            note = " (prompt only: a side cannot feed the continuation ids after the prompt)"
            sa = _capture(a, request, continuation_ids)
            sb = _capture(b, request, continuation_ids)
    except UnsupportedError as e:
        return Localization(status="unsupported", detail=str(e))
    except ParitybenchError as e:
        return Localization(status="error", detail=f"layer capture failed: {e}")
    seconds = {a.name: sa.seconds, b.name: sb.seconds}
    if sa.ids != sb.ids or sa.hidden.shape != sb.hidden.shape:
        return Localization(status="error", seconds=seconds, detail=(
            f"the sides fed different sequences ({len(sa.ids)} vs {len(sb.ids)} ids, streams {sa.hidden.shape} vs "
            f"{sb.hidden.shape}): layers compare only on the same ids and architecture"))
    broken = _non_finite(((a, sa), (b, sb)), seconds, threshold)
    if broken is not None:
        return broken
    rows = layer_rows(sa, sb)
    base = Localization(status="agree", threshold=threshold, reference=a.name, tokens=len(sa.ids), rows=rows,
                        seconds=seconds, detail=f"every row within {threshold:g} (relative max){note}")
    first = next((r for r in rows if r.rel_max > threshold), None)
    if first is None:
        return base
    # the local pass: one side fed the other's stream layer by layer
    local, local_side = None, None
    for side, ref in ((b, sa), (a, sb)):
        try:
            t0 = time.perf_counter()
            local = _capture(side, request, continuation_ids, reference=ref.hidden)
            local_side = side.name
            seconds[f"{side.name} local"] = time.perf_counter() - t0
            break
        except ParitybenchError:
            continue
    if local is not None and local_side == a.name:  # measured against b's stream then
        rows = layer_rows(sb, sa, local)
        reference = b.name
    else:
        rows = layer_rows(sa, sb, local)
        reference = a.name
    first = next(r for r in rows if r.rel_max > threshold)
    scale = embedding_scale(sa.hidden[0], sb.hidden[0]) if first.index == -1 else None
    region = "+".join(name for name, v in (("text", first.rel_max_text), (media_kind, first.rel_max_media))
                      if v is not None and v > threshold) or "all"
    guilty = [r.index for r in rows
              if ((r.local_rel_max or 0.0) if r.index >= 0 else r.rel_max) > threshold]
    if local is None:
        guilty = []
        how = "no side could run the local pass, so the guilty layer is not isolated"
    else:
        how = (f"local pass ({local_side} fed {reference}'s stream): "
               + (", ".join(_row_name(i + 1, len(rows) - 2) for i in guilty) or "no single row stands out")
               + (" stands out" if len(guilty) == 1 else " stand out" if guilty else ""))
    return base.model_copy(update={
        "status": "localised", "reference": reference, "local_side": local_side, "first_layer": first.index,
        "guilty_layers": guilty, "region": region, "rows": rows, "embedding_scale": scale,
        "detail": f"the sides part first at {first.name} ({region} tokens, {first.rel_max:.2g} relative); {how}{note}"})
