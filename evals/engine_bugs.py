"""Documented Gemma engine bugs, each planted on a tiny model of paritybench's own, with what parity
must say of it: the verdict, the cause it names (confirmed or not) and where it places it.

Every case reproduces the shape of a bug an engine shipped (the upstream thread is named), on a
model no registry holds: multi-query attention, head_dim 64 unlike width/heads = 24, five layers
starting with a full one, a window of 6, RoPE scaling 4 on full layers, a final soft-cap of 30. The
reference side is the gemma library (JAX) on the clean model; the other side is transformers (in
process) on the model's Hugging Face folder with the bug planted: a config.json field, a tensor,
the chat template, or the engine's computation patched in place (decoding positions, the
embedding normaliser). A case says what it plants in its `plant` line.

    own = engine_bugs.build_own(root)                 # the clean model, both formats
    report = engine_bugs.run(engine_bugs.CASES["local-rope-scaled"], own, root)

tests/test_engine_bugs.py asserts every case; benchmarks/engine_bugs.py prints the catalogue
table of docs/engine-bugs.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import backends
from backends import Backend, ImagePart, Message, Request, TextPart, models
from harness import parity
from harness.findings import ParityReport, Verdict

ARCH = models.GemmaArch(
    vocab_size=1024, embed_dim=96, hidden_dim=160, num_heads=4, head_dim=64, num_kv_heads=1,
    layer_types=("full", "sliding", "sliding", "full", "sliding"), sliding_window=6, query_pre_attn_scalar=64,
    final_logit_softcap=30.0, rope_global_scale=4.0, max_position_embeddings=2048,
    dtype="float32",
)
TEXT = Request.from_text("The quick brown fox jumps over the lazy dog while the river runs past the old mill, and "
                         "nobody notices the time at all.", id="fox")
CHAT = Request(messages=[Message(role="user", content=[TextPart(text="What is two plus two?")])], id="chat")


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)


WIDE_IMAGE = Request(messages=[Message(role="user", content=[
    ImagePart(array=np.random.default_rng(3).integers(0, 256, size=(300, 1200, 3), dtype=np.uint8)),
    TextPart(text="What is this?")])], id="wide-image")
TWO_IMAGES = Request(messages=[Message(role="user", content=[
    TextPart(text="Compare"), ImagePart(array=_image(1)), TextPart(text="with"), ImagePart(array=_image(2)),
    TextPart(text="in one word.")])], id="two-images")


@dataclasses.dataclass(frozen=True)
class Own:
    """The clean model: its gemma folder (the JAX side) and Hugging Face folder (the planted side's base)."""

    gemma: Path
    hf: Path


def build_own(root: Path, arch: models.GemmaArch = ARCH, seed: int = 11) -> Own:
    tok = models.ensure_tiny("tiny-gemma3") / models.TOKENIZER
    gemma = models.write_model_dir(root / "own", models.ModelCard(name="own", arch=arch),
                                   models.random_params(arch, seed=seed, sharpen=6.0), tok)
    return Own(gemma=gemma, hf=models.gemma_dir_to_hf(gemma, root / "own-hf").path)


def own_vision(root: Path, seed: int = 7) -> Own:
    """A vision model of this module's own: tiny-gemma3-vision's layout, every weight moved by 5%
    random noise (built once under `root`)."""
    import jax

    gemma, hf = root / "own-vision", root / "own-vision-hf"
    if not (hf / "config.json").is_file():
        base = models.ensure_tiny("tiny-gemma3-vision")
        rng = np.random.default_rng(seed)
        params = jax.tree_util.tree_map(
            lambda w: (np.asarray(w) * (1 + 0.05 * rng.standard_normal(np.shape(w)))).astype(np.asarray(w).dtype),
            models.load_params(base / models.PARAMS))
        card = models.read_card(base).model_copy(update={"name": "own-vision"})
        models.write_model_dir(gemma, card, params, base / models.TOKENIZER)
        models.gemma_dir_to_hf(gemma, hf)
    return Own(gemma=gemma, hf=hf)


# ----------------------------------------------------------------------------- plants


def copy_hf(own: Own, root: Path, name: str) -> Path:
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(own.hf, out)
    return out


def edit_config(edit: Callable[[dict[str, Any]], None]) -> Callable[[Own, Path, str], Path]:
    """A plant that changes the Hugging Face folder's config.json."""
    def plant(own: Own, root: Path, name: str) -> Path:
        folder = copy_hf(own, root, name)
        cfg = json.loads((folder / "config.json").read_text())
        edit(cfg)
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))
        return folder
    return plant


def _rope(kind: str, **update: Any) -> Callable[[dict[str, Any]], None]:
    def edit(cfg: dict[str, Any]) -> None:
        rope = cfg["rope_parameters"][kind]
        rope.update(update)
        if rope.get("rope_type") == "default":
            rope.pop("factor", None)
    return edit


def _doubled_bos(own: Own, root: Path, name: str) -> Path:
    """The chat template writes <bos> and the prompt gets another (the template's own line doubled)."""
    folder = copy_hf(own, root, name)
    template = folder / "chat_template.jinja"
    template.write_text("{{ bos_token }}" + template.read_text())
    return folder


def _untied_head(own: Own, root: Path, name: str) -> Path:
    """The model with an untied output head: `lm_head.weight` beside the embedding, config.json's
    tie_word_embeddings false."""
    from safetensors.numpy import save_file

    folder = copy_hf(own, root, name)
    sd = models.hf_dir_tensors(folder)
    emb = sd["model.embed_tokens.weight"]
    sd["lm_head.weight"] = (emb + np.random.default_rng(3).normal(0, 0.05, emb.shape)).astype(emb.dtype)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    save_file(sd, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    return folder


def _attention_capped(own: Own, root: Path, name: str) -> Path:
    """The same weights, with an attention soft-cap of 10 in the architecture (the gemma folder)."""
    card = models.read_card(own.gemma)
    card = card.model_copy(update={"arch": card.arch.model_copy(update={"attn_logit_softcap": 10.0})})
    return models.write_model_dir(root / name, card, models.load_params(own.gemma / models.PARAMS),
                                  own.gemma / models.TOKENIZER)


def _overflowing(own: Own, root: Path, name: str) -> Path:
    """Layer 2's post-feed-forward norm scaled so the residual stream reaches 8e4 (float16's largest
    is 65504) while float32 stays finite: the gemma folder, for the JAX side."""
    params = models.load_params(own.gemma / models.PARAMS)
    norm = params["layer_2"]["post_ffw_norm"]
    norm["scale"] = np.zeros_like(np.asarray(norm["scale"])) + np.float32(4e4)
    return models.write_model_dir(root / name, models.read_card(own.gemma), params, own.gemma / models.TOKENIZER)


class _DecodeOffset:
    """transformers' model with every decoding step's positions moved by `offset` (the prefill is
    untouched): a KV-cache position bug that only shows while generating."""

    def __init__(self, model: Any, offset: int) -> None:
        self._inner, self._offset = model, offset

    def __call__(self, *args: Any, **kw: Any) -> Any:
        if kw.get("past_key_values") is not None and kw.get("position_ids") is not None:
            kw["position_ids"] = kw["position_ids"] + self._offset
        return self._inner(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _decode_offset(side: Backend) -> None:
    side._model = _DecodeOffset(side._model, 2)  # type: ignore[attr-defined]


def _images_see_each_other(side: Backend) -> Callable[[], None]:
    """transformers' image mask with every image of the prompt in one block, so each image's tokens
    see the other images (later ones too): the shape of transformers #38053 before PR #38080.
    Process-wide while the case runs (the function is the module's); returns the undo."""
    import torch
    from transformers.models.gemma3 import modeling_gemma3 as m

    original = m.get_block_sequence_ids_for_mask

    def one_block(token_type_ids: Any, device: Any = None) -> Any:
        return torch.where((token_type_ids == 1).to(device=device), 0, -1)

    m.get_block_sequence_ids_for_mask = one_block

    def undo() -> None:
        m.get_block_sequence_ids_for_mask = original
    return undo


def _bf16_normaliser(side: Backend) -> None:
    """The embedding normaliser sqrt(width) rounded to bfloat16 while the rest runs in float32
    (the reverse of the published fix: the original computes it in the activations' dtype)."""
    import torch

    emb = side._model.model.embed_tokens  # type: ignore[attr-defined]
    emb.embed_scale = torch.tensor(float(np.sqrt(ARCH.embed_dim)), dtype=torch.bfloat16).float()


# ----------------------------------------------------------------------------- cases


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a case: an engine on the clean model or a planted copy, with options and a
    patch applied to the loaded engine."""

    engine: str = "jax"
    folder: Callable[[Own, Path, str], Path] | None = None  # a planted copy (else the clean model)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    patch: Callable[[Backend], Callable[[], None] | None] | None = None  # may return its undo


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    title: str
    upstream: str  # the thread(s) that document the bug
    plant: str  # what is planted here, in words
    planted: Side  # side b (side a is JAX on the clean model, unless `reference` says otherwise)
    verdict: Verdict
    cause: str  # the cause parity must name
    confirmed: bool  # named with `explains` true (re-scored or checked directly)
    where: str  # where parity must place it: "layer N", "token N", "prompt id N", "" (anywhere)
    reference: Side = Side()
    request: Request = TEXT
    localize: bool = True  # layer by layer when the prompt fails (both sides in float32)
    vision: bool = False  # on the vision model of this module's own (`own_vision`)


CASES: dict[str, Case] = {c.key: c for c in [
    Case("sliding-pattern-lost", "Sliding-window pattern lost (config without layer_types)",
         "vLLM PR #21927, transformers #39290", "config.json without layer_types (transformers' default pattern "
         "of 6 makes every layer sliding)",
         Side("hf", edit_config(lambda c: c.pop("layer_types"))), "fail", "config:layer_types", True, "layer 0"),
    Case("images-see-each-other", "Several images: each image's tokens see the other images",
         "transformers #38053 / PR #38080", "transformers' image mask puts every image of the prompt in one block",
         Side("hf", patch=_images_see_each_other), "fail", "image-attention-across-images", True, "layer 0, image tokens",
         request=TWO_IMAGES, vision=True),
    Case("pan-and-scan-one-side", "Pan and scan on one side only", "vLLM PR #14672, transformers PR #36710 / #36864",
         "transformers' processor with do_pan_and_scan on (a 1200x300 image: the whole image and 4 crops), as "
         "vLLM's --mm-processor-kwargs turns it on",
         Side("hf", options={"processor_kwargs": {"do_pan_and_scan": True, "pan_and_scan_min_crop_size": 256,
                                                  "pan_and_scan_max_num_crops": 4,
                                                  "pan_and_scan_min_ratio_to_activate": 1.2}}), "fail", "pan-and-scan", True, "prompt id 5", request=WIDE_IMAGE, vision=True),
    Case("local-rope-scaled", "Local-layer RoPE scaled like the global one", "vLLM PR #29111",
         "linear scaling 4 on the sliding layers' RoPE", Side("hf", edit_config(_rope("sliding_attention",
                                                                                     rope_type="linear", factor=4.0))),
         "fail", "config:rope_local_scale", True, "layer 1"),
    Case("global-rope-scaling-ignored", "Global-layer linear RoPE scaling ignored", "mlx-vlm PR #1709, llama.cpp #14367",
         "the full layers' RoPE without its linear factor 4", Side("hf", edit_config(_rope("full_attention",
                                                                                          rope_type="default"))),
         "fail", "config:rope_global_scale", True, "layer 0"),
    Case("final-softcap-missing", "Final logit soft-cap missing", "SGLang PR #592 (Gemma 2)",
         "final_logit_softcapping null (the model caps at 30)",
         Side("hf", edit_config(lambda c: c.update(final_logit_softcapping=None))), "fail",
         "config:final_logit_softcap", True, "logits"),
    Case("attention-softcap-missing", "Attention soft-cap missing", "vLLM PR #5908 (Gemma 2)",
         "the model caps attention logits at 10; transformers reads attn_logit_softcapping 10 from config.json, but "
         "its Gemma 3 attention never applies it (nor does vLLM's)",
         Side("hf", edit_config(lambda c: c.update(attn_logit_softcapping=10.0))), "fail", "config:attn_logit_softcap",
         True, "layer 0", reference=Side("jax", _attention_capped)),
    Case("query-scale-head-dim", "query_pre_attn_scalar taken as width / heads instead of head_dim", "no thread: a config-reading slip",
         "query_pre_attn_scalar 24 (width / heads) where the model scales by head_dim 64",
         Side("hf", edit_config(lambda c: c.update(query_pre_attn_scalar=24))), "fail", "config:query_pre_attn_scalar",
         True, "layer 0"),
    Case("mlp-activation-silu", "Wrong MLP activation (SiLU for tanh-approximated GELU)",
         "candle #3745, TensorRT-Model-Connect PR #720, vLLM PR #41574", "hidden_activation silu",
         Side("hf", edit_config(lambda c: c.update(hidden_activation="silu"))), "fail", "config:hidden_activation",
         False, "layer 0"),
    Case("mlp-activation-exact-gelu", "Wrong MLP activation (exact GELU for tanh-approximated GELU)",
         "candle #3745, vLLM PR #41574", "hidden_activation gelu (exact)",
         Side("hf", edit_config(lambda c: c.update(hidden_activation="gelu"))), "warn", "config:hidden_activation",
         False, ""),
    Case("untied-head-ignored", "Untied output head ignored", "vLLM #20548, PR #30827",
         "the model has a separate lm_head.weight, which transformers reads; the gemma library always projects "
         "with the input embedding (ignores it)", Side("jax"), "fail", "config:tie_word_embeddings", False,
         "logits", reference=Side("hf", _untied_head)),
    Case("doubled-bos", "Doubled BOS", "transformers #37686, vLLM #27486, lm-eval #1854",
         "a chat template that writes <bos> before the one it already writes",
         Side("hf", _doubled_bos), "fail", "doubled-bos", True, "prompt id 1", request=CHAT),
    Case("float16-overflow", "Gemma in float16 overflows", "transformers #36822, vLLM #14696",
         "the JAX side in float16 on a model whose residual stream reaches 8e4 after layer 2",
         Side("jax", _overflowing, {"dtype": "float16"}), "fail", "overflow", True, "layer 2",
         reference=Side("jax", _overflowing)),
    Case("decode-position-offset", "A position offset only while decoding", "mlx-lm #1805, tpu-inference PR #3406",
         "transformers' decoding steps run at positions + 2 (the prefill is right)",
         Side("hf", patch=_decode_offset), "fail", "decode-inconsistency", True, "generated token 1"),
    Case("embedding-normaliser-bf16", "Embedding normaliser in reduced precision",
         "the published Gemma fixes (sqrt(3072) = 55.4256 becomes 55.5 in bfloat16)",
         "transformers' normaliser sqrt(96) rounded to bfloat16 (9.8125 for 9.798) in a float32 run",
         Side("hf", patch=_bf16_normaliser), "fail", "embedding-scale", True, "layer -1"),
]}


@contextlib.contextmanager
def open_side(side: Side, own: Own, root: Path, name: str) -> Iterator[Backend]:
    folder = side.folder(own, root, name) if side.folder is not None else (own.hf if side.engine != "jax" else own.gemma)
    with backends.get(side.engine, model=str(folder), **side.options) as b:
        undo = side.patch(b) if side.patch is not None else None
        try:
            yield b
        finally:
            if undo is not None:
                undo()


def run(case: Case, own: Own, root: Path, *, max_tokens: int = 8) -> ParityReport:
    """The case's two sides, compared on its prompt (layers localised when the case asks)."""
    if case.vision:
        own = own_vision(root)
    with open_side(case.reference, own, root, case.key + "-a") as a, open_side(case.planted, own, root, case.key) as b:
        return parity.compare(a, b, [case.request], max_tokens=max_tokens,
                              localize="failing" if case.localize else "off")


def where(case: Case, report: ParityReport) -> str:
    """Where the report places the case's cause: "layer N, token T" (the first non-finite), "generated
    token N" (decoding), "prompt id N" (the prompt ids part), "layer N" and the region (the first layer
    whose residual streams part), "logits" (every layer agrees: the difference is in the output
    layer), "" when nothing was placed."""
    p = report.prompts[0]
    cause = next((c for c in p.causes if c.name == case.cause), None)
    if cause is None:
        return ""
    ev = cause.evidence
    if case.cause == "overflow":
        return f"layer {ev['first_layer']}, token {ev['token']}"
    if case.cause == "decode-inconsistency":
        first = ev["first_token"] if ev["first_token"] is not None else ev["greedy_not_top"][0]
        return f"generated token {first}"
    if "position" in ev:
        return f"prompt id {ev['position']}"
    loc = p.localization
    if loc is not None and loc.status == "localised":
        return f"layer {loc.first_layer}" + (f", {loc.region} tokens" if loc.region not in (None, "text", "all") else "")
    if loc is not None and loc.status == "agree":
        return "logits"
    return ""
