"""Every cause parity can name, declared once: its name, its kind, what it means, how it is confirmed.

    causes.info("causal-image-attention").kind   # "implementation"
    causes.of_kind("preprocessing")               # names of that kind

Parity's checks, the diagnosis, the three-way arbitration, the report and docs/parity.md all read
this table; a `Cause` whose name is not declared here cannot be made (`findings.Cause`), and a
test fails when code names one that is not (tests/test_causes.py).

The settings table beside it lists every effective setting engines report (`ModelSettings`) with
its title in reports and, where the sides may differ in it, the cause a difference names and
whether a side can re-score with the other side's value to confirm it.

Kinds:
- prompt: the sides were fed different prompts (a template, a missing BOS): a real difference.
- preprocessing: the sides prepare the same input differently (tokenizer merges, image resizing);
  confirmed, they compute the same function on what they are fed.
- by-design: Gemma engines part here by convention (soft-cap, vocabulary rows, KV sharing, AltUp
  clipping); confirmed by aligning it, a warning.
- configuration: the sides built the model from different configurations or files.
- precision: the sides compute or store in different precisions (dtype, KV cache, quantization).
- implementation: an engine computes something its own way (attention inside images).
- weights: the weights or the computation differ.
- heuristic: a pattern in the plain-text position profile that points at a kind of difference.
- observation: what was measured, not why (a gap beyond the bound, a near-tie).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from backends.models import CONFIG_FIELDS

Kind = Literal["prompt", "preprocessing", "by-design", "configuration", "precision", "implementation", "weights",
               "heuristic", "observation"]
KINDS: tuple[Kind, ...] = typing.get_args(Kind)


@dataclasses.dataclass(frozen=True)
class CauseInfo:
    name: str
    kind: Kind
    meaning: str  # what the difference is, in words (the report's detail starts from it)
    confirmed_by: str  # how parity confirms it accounts for a gap


@dataclasses.dataclass(frozen=True)
class Setting:
    """One effective setting (`ModelSettings` field): its title in reports, and the cause a
    difference between the sides names (None: shown, never a cause)."""

    field: str
    title: str
    cause: str | None = None
    rescorable: bool = True  # a side can re-score with the other side's value (`SettingsRescoring`)


_RESCORE = "re-scoring one side with the other side's value: the gap falls to a tenth or to float noise"
_DIFF = "the settings diff alone (no engine can re-score with another value)"
_DIFF_OR_RESCORE = ("re-scoring where the gemma library can express the other value, else the settings diff alone, "
                    "as the likely cause (unconfirmed)")
CONFIG_PREFIX = "config:"

_DECLARED = [
    CauseInfo("missing-bos", "prompt", "one side does not start the prompt with <bos>", "the prompt ids' first position"),
    CauseInfo("doubled-bos", "prompt", "one side starts the prompt with two <bos> (a template that writes <bos> and a "
              "tokenizer that adds another)", "the prompt ids' first two positions"),
    CauseInfo("pan-and-scan", "prompt", "one side cuts an image into crops (pan and scan), each an image of its own in "
              "the prompt, where the other feeds the whole image once", "the sides' prompt ids hold different numbers "
              "of <start_of_image> for the same images"),
    CauseInfo("chat-template", "prompt", "the sides apply different chat template files",
              "the prompt ids decoded, or the template files' hashes"),
    CauseInfo("tokenization", "preprocessing", "the same prompt text is tokenized differently",
              "both sides' prompt ids decode to the same text"),
    CauseInfo("newline-merge-before-image", "preprocessing",
              "one side merges the turn's '\\n' with the '\\n\\n' before <start_of_image> into one token",
              "the first differing prompt ids are newlines next to <start_of_image>"),
    CauseInfo("image-resize-rounding", "preprocessing",
              "the sides resize images differently (one rounds the resized image to uint8, the other resizes in float)",
              "re-scoring one side fed the other side's resized pixels closes the gap to float noise"),
    CauseInfo("causal-image-attention", "implementation",
              "one side attends causally inside images where the other attends both ways",
              "re-scoring with causal attention inside images drops the gap below a tenth"),
    CauseInfo("final-logit-softcap", "by-design", "one side caps the final logits (c * tanh(x / c)), the other does "
              "not or with another c", _RESCORE),
    CauseInfo("vocabulary-padding", "by-design", "the sides normalise log-probs over different numbers of rows "
              "(Google's Hugging Face checkpoints append 256 pad-row copies to gemma's vocabulary)", _RESCORE),
    CauseInfo("kv-sharing-rule", "by-design", "KV-shared layers read a different layer's keys and values "
              "(transformers takes the last unshared layer of the same type, gemma and vLLM fixed offsets)", _RESCORE),
    CauseInfo("altup-clip", "by-design", "one side clips AltUp's coefficients at inference (gemma, every forward), "
              "the other does not (transformers only in training, vLLM never)", _RESCORE),
    CauseInfo("dtype-mismatch", "precision", "the sides compute in different dtypes (a managed vLLM server loads a "
              "float32 checkpoint in bfloat16 unless told otherwise)", _RESCORE),
    CauseInfo("kv-cache-dtype", "precision", "the sides store keys and values in different dtypes", _DIFF),
    CauseInfo("quantization", "precision", "one side runs quantized weights", _DIFF),
    CauseInfo("overflow", "precision", "values grow past the largest finite number of a side's dtype (float16: 65504) "
              "and become inf, then NaN", "the side's hidden states, layer by layer: the first non-finite layer and "
              "token, with the largest finite magnitude before it beyond the dtype's range"),
    CauseInfo("tokenizer-files", "configuration", "the sides read different tokenizer.model files", _DIFF),
    CauseInfo("generation-config", "configuration", "the sides end generations on different token ids", _DIFF),
    CauseInfo("config:rms_norm_eps", "configuration", "the sides normalise with different epsilons", _DIFF),
    CauseInfo("config:tie_word_embeddings", "configuration", "one side projects to logits with the input embedding, "
              "the other with a separate output matrix", _DIFF),
    CauseInfo("config:image_token_id", "configuration", "the sides mark image soft tokens with different ids", _DIFF),
    CauseInfo("config:mm_tokens_per_image", "configuration", "the sides expand each image to a different number of "
              "soft tokens", _DIFF),
    *(CauseInfo(f"config:{f}", "configuration", "the sides build their models from different configurations",
                _RESCORE) for f in CONFIG_FIELDS),
    CauseInfo("image-attention-across-images", "implementation", "one side lets every image token of a prompt see every "
              "other image (the later ones too) where the other attends both ways within each image only",
              "re-scoring with every image of the prompt mutually visible drops the gap below a tenth"),
    CauseInfo("decode-inconsistency", "implementation", "an engine's log-probs while it generates differ from its own "
              "teacher-forced scores of the same tokens: its decoding (KV cache, positions, KV sharing) computes "
              "something its prefill does not", "the side's generation log-probs against its own scores of the same "
              "ids (no second engine needed)"),
    CauseInfo("embedding-scale", "implementation", "the sides' embedding outputs differ by one constant factor: the "
              "normaliser sqrt(width) taken in another precision (bfloat16 makes sqrt(3072) = 55.43 into 55.5)",
              "the embedding rows of both sides' hidden states: one ratio for every element"),
    CauseInfo("attention-span", "heuristic", "log-probs agree at the first positions of plain text and differ from "
              "one position on: one side attends to a different span of past tokens (a sliding window) or encodes "
              "positions differently beyond it", "the position profile on plain text (a pattern, not a re-score)"),
    CauseInfo("logit-scale", "heuristic", "every position ranks the top-k the same but one side's log-prob gaps are "
              "narrower: a final-logit soft-cap, logit scaling or temperature differs",
              "the position profile on plain text (a pattern, not a re-score)"),
    CauseInfo("weights", "weights", "the weights differ (or, from the position profile's pattern alone, log-probs "
              "differ from the first position on and the top-k order changes)",
              "both sides' weight tensors compared one by one in one naming (confirmed); the position profile on "
              "plain text where the weights cannot be read (a hint)"),
    CauseInfo("non-finite", "observation", "a side's logits or hidden states hold inf or NaN",
              "the side's log-probs, then its hidden states layer by layer"),
    CauseInfo("none-on-plain-text", "observation", "both sides agree on plain text to float noise: the difference "
              "is in the prompt path (template, media)", "the position profile on plain text"),
    CauseInfo("logprobs", "observation", "the teacher-forced log-probs differ beyond the bound",
              "teacher-forced cross-scoring"),
    CauseInfo("near-tie", "observation", "at the first greedy divergence each side's token is in the other's top-n",
              "the greedy divergence's top-n lists"),
]
CAUSES: dict[str, CauseInfo] = {c.name: c for c in _DECLARED}

SETTINGS: dict[str, Setting] = {s.field: s for s in [
    Setting("convention", "convention"),
    Setting("family", "architecture"),
    Setting("dtype", "compute dtype", "dtype-mismatch"),
    Setting("max_model_len", "max model length"),
    Setting("final_logit_softcap", "final logit soft-cap", "final-logit-softcap"),
    Setting("text_vocab_size", "text ids"),
    Setting("logit_rows", "logit rows (softmax over)", "vocabulary-padding"),
    Setting("kv_sharing", "KV sharing (layer -> layer read)", "kv-sharing-rule"),
    Setting("altup_coef_clip", "AltUp coefficient clip", "altup-clip"),
    Setting("attn_logit_softcap", "attention soft-cap", "config:attn_logit_softcap"),
    Setting("query_pre_attn_scalar", "query scaling (1/sqrt of)", "config:query_pre_attn_scalar"),
    Setting("sliding_window", "sliding window", "config:sliding_window"),
    Setting("layer_types", "layer types", "config:layer_types"),
    Setting("rope_local_base", "RoPE base (sliding)", "config:rope_local_base"),
    Setting("rope_global_base", "RoPE base (full)", "config:rope_global_base"),
    Setting("rope_local_scale", "RoPE scale (sliding)", "config:rope_local_scale"),
    Setting("rope_global_scale", "RoPE scale (full)", "config:rope_global_scale"),
    # gemma's RMSNorm epsilon is a constant, its embeddings always tied, its image layout fixed by the checkpoint
    Setting("rms_norm_eps", "RMSNorm epsilon", "config:rms_norm_eps", rescorable=False),
    Setting("tied_embeddings", "tied embeddings", "config:tie_word_embeddings", rescorable=False),
    Setting("image_token_id", "image soft-token id", "config:image_token_id", rescorable=False),
    Setting("mm_tokens_per_image", "soft tokens per image", "config:mm_tokens_per_image", rescorable=False),
    Setting("kv_cache_dtype", "KV-cache dtype", "kv-cache-dtype", rescorable=False),
    Setting("quantization", "weight quantization", "quantization", rescorable=False),
    Setting("tokenizer_sha256", "tokenizer.model (sha256)", "tokenizer-files", rescorable=False),
    Setting("chat_template_sha256", "chat template (sha256)", "chat-template", rescorable=False),
    Setting("end_ids", "end ids", "generation-config", rescorable=False),
]}


def is_declared(name: str) -> bool:
    """Declared above, or `config:<key>`: any model-configuration key the sides' configs disagree on
    (`backends.models.config_diff`), declared by that family."""
    return name in CAUSES or (name.startswith(CONFIG_PREFIX) and len(name) > len(CONFIG_PREFIX))


def info(name: str) -> CauseInfo:
    """The declaration of cause `name` (a `KeyError` naming this module for one never declared)."""
    if name in CAUSES:
        return CAUSES[name]
    if is_declared(name):
        return CauseInfo(name, "configuration", f"the sides build their models from different values of the "
                         f"configuration key {name[len(CONFIG_PREFIX):]!r}", _DIFF_OR_RESCORE)
    raise KeyError(f"cause {name!r} is not declared in harness/causes.py")


def rescorable(field: str) -> bool:
    """A side can re-score with the other side's value of setting `field` (a `config:<key>` no
    setting names cannot be: the gemma library's model has no such knob)."""
    return field in SETTINGS and SETTINGS[field].rescorable


def of_kind(*kinds: Kind) -> frozenset[str]:
    return frozenset(c.name for c in CAUSES.values() if c.kind in kinds)


def kind(name: str) -> Kind:
    return info(name).kind


def setting_cause(field: str) -> CauseInfo:
    """The cause a difference in setting `field` names."""
    cause = SETTINGS[field].cause
    if cause is None:
        raise KeyError(f"setting {field!r} names no cause")
    return info(cause)


# the settings whose differences are causes, in the report's order
CAUSE_SETTINGS = tuple(s.field for s in SETTINGS.values() if s.cause is not None)


def catalogue() -> str:
    """The causes as the markdown table docs/parity.md carries (between its `causes:begin` and
    `causes:end` markers; tests/test_causes.py keeps the two the same)."""
    settings_of = {s.cause: f"`{s.field}`" for s in SETTINGS.values() if s.cause is not None}
    lines = ["| cause | kind | what it means | confirmed by | setting |", "|---|---|---|---|---|"]
    for kind_ in KINDS:
        for c in (c for c in CAUSES.values() if c.kind == kind_):
            lines.append(f"| `{c.name}` | {c.kind} | {c.meaning} | {c.confirmed_by} | {settings_of.get(c.name, '')} |")
    return "\n".join(lines)
