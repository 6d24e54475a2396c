"""Causes named from the two sides' effective settings, before any heuristic.

Every engine says what it really computes (`Backend.model_settings`): the dtype it ran, the model
configuration it built (query scaling, window and layer types, RoPE per layer type, soft-caps),
the tokenizer file and end ids, and where Gemma engines part by design (the rows the softmax
normalises over, Gemma 3n's KV-sharing targets and AltUp coefficient clipping). For a prompt whose log-probs differ,
each setting the two sides disagree on is a candidate cause; a side that can re-score with
another setting (`SettingsRescoring`) re-scores the other side's output with the other side's
value, and the cause is confirmed when the gap drops (to a tenth or to float noise). With every
differing setting aligned at once, a gap down to noise means the engines differ by design, not
by a bug: the prompt is a warning, and the report says which convention each side used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from backends import Backend, ModelSettings, ParitybenchError, Request, SettingsRescoring
from backends.models import CONFIG_FIELDS

# setting -> the cause it names, and what the difference means
CAUSES: dict[str, tuple[str, str]] = {
    "final_logit_softcap": ("final-logit-softcap", "one side caps the final logits (c * tanh(x / c)), the other "
                                                   "does not or with another c"),
    "logit_rows": ("vocabulary-padding", "the sides normalise log-probs over different numbers of rows (Google's "
                                         "Hugging Face checkpoints append 256 pad-row copies to gemma's vocabulary)"),
    "kv_sharing": ("kv-sharing-rule", "KV-shared layers read a different layer's keys and values (transformers "
                                      "takes the last unshared layer of the same type, gemma and vLLM fixed offsets)"),
    "altup_coef_clip": ("altup-clip", "one side clips AltUp's coefficients at inference (gemma, every forward), "
                                      "the other does not (transformers only in training, vLLM never)"),
    "dtype": ("dtype-mismatch", "the sides compute in different dtypes (a managed vLLM server loads a float32 "
                                "checkpoint in bfloat16 unless told otherwise)"),
    "tokenizer_sha256": ("tokenizer-files", "the sides read different tokenizer.model files"),
    "chat_template_sha256": ("chat-template", "the sides apply different chat template files"),
    "kv_cache_dtype": ("kv-cache-dtype", "the sides store keys and values in different dtypes"),
    "quantization": ("quantization", "one side runs quantized weights"),
    "end_ids": ("generation-config", "the sides end generations on different token ids"),
    "rms_norm_eps": ("config:rms_norm_eps", "the sides normalise with different epsilons"),
    "tied_embeddings": ("config:tie_word_embeddings", "one side projects to logits with the input embedding, "
                                                      "the other with a separate output matrix"),
    "image_token_id": ("config:image_token_id", "the sides mark image soft tokens with different ids"),
    "mm_tokens_per_image": ("config:mm_tokens_per_image", "the sides expand each image to a different number "
                                                          "of soft tokens"),
    **{f: (f"config:{f}", "the sides build their models from different configurations") for f in CONFIG_FIELDS},
}
# settings no side can re-score with: named from the diff alone
# gemma's RMSNorm epsilon is a constant, its embeddings always tied, its image layout fixed by the checkpoint
NOT_RESCORABLE = {"tokenizer_sha256", "chat_template_sha256", "end_ids", "rms_norm_eps", "tied_embeddings",
                  "image_token_id", "mm_tokens_per_image", "kv_cache_dtype", "quantization"}
# where Gemma engines part by design (a confirmed difference is a warning); any other confirmed
# difference (configuration, files) is a real one and still fails
BY_DESIGN = {"final_logit_softcap", "logit_rows", "kv_sharing", "altup_coef_clip"}


@dataclasses.dataclass(frozen=True)
class SettingDiff:
    """One setting both sides know and disagree on."""

    field: str
    cause: str
    a: Any
    b: Any


def settings_diff(sa: ModelSettings, sb: ModelSettings) -> list[SettingDiff]:
    """The settings both sides know and disagree on (a KV cache that just follows each side's
    compute dtype is the dtype's difference, not one of its own)."""
    ka, kb = sa.known(), sb.known()
    follows = all(k.get("kv_cache_dtype") == k.get("dtype") for k in (ka, kb))
    return [SettingDiff(f, CAUSES[f][0], ka[f], kb[f]) for f in CAUSES
            if f in ka and f in kb and ka[f] != kb[f] and not (f == "kv_cache_dtype" and follows)]


def show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, str) and len(value) == 64:  # a hash
        return value[:12]
    return f"{value:g}" if isinstance(value, float) else str(value)


def max_gap(scores: Any, gen: Any) -> float:
    return max((abs(x - y) for x, y in zip(scores.logprobs, gen.logprobs)), default=0.0)


def explain(a: Backend, b: Backend, request: Request, ga: Any, gb: Any, before: float, noise: float,
            diffs: list[SettingDiff]) -> tuple[list[Any], bool]:
    """Causes for the settings in `diffs`, each confirmed by a re-score where a side can; and
    whether aligning all of them closes the gap to `noise`. Returns (causes, closed)."""
    from .parity import Cause

    if not diffs:
        return [], False

    def cause(d: SettingDiff, explains: bool = False, note: str = "", **evidence: Any) -> Cause:
        return Cause(name=d.cause, explains=explains,
                     detail=f"{a.name} {d.field} {show(d.a)}, {b.name} {show(d.b)}: {CAUSES[d.field][1]}{note}",
                     evidence={"field": d.field, a.name: show(d.a), b.name: show(d.b), **evidence})

    pick = [(s, o, go, so) for s, o, go, so in ((a, b, gb, b.model_settings()), (b, a, ga, a.model_settings()))
            if isinstance(s, SettingsRescoring)]
    if not pick:
        return [cause(d, note=" (no side can re-score to confirm)") for d in diffs], False
    side, other, other_gen, theirs = pick[0]
    scorer = cast(SettingsRescoring, side)
    mine = side.model_settings()

    def rescore(fields: list[str]) -> float | None:
        update = {f: getattr(theirs, f) for f in fields}
        try:
            [sc] = scorer.score_with_settings(mine.model_copy(update=update), [request], [other_gen.token_ids])
        except ParitybenchError:
            return None
        return max_gap(sc, other_gen)

    causes: list[Cause] = []
    for d in diffs:
        if d.field in NOT_RESCORABLE:
            causes.append(cause(d))
            continue
        after = rescore([d.field])
        explains = after is not None and (after <= noise or after < before / 10)
        effect = ("re-score unavailable" if after is None else
                  f"with {other.name}'s value on the {side.name} side the gap goes from {before:.3g} to {after:.3g}"
                  + ("" if explains else ": not this"))
        causes.append(cause(d, explains, f"; {effect}", max_abs_dlogprob=before, max_abs_dlogprob_aligned=after,
                            rescored_by=side.name))
    closed = False
    fields = [d.field for d in diffs if d.field not in NOT_RESCORABLE]
    if fields and len(fields) == len(diffs):
        together = rescore(fields)
        closed = together is not None and together <= noise
    return causes, closed
