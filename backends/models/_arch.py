"""One description of a Gemma 3 architecture, mapped to both libraries' configs.

`GemmaArch` is what paritybench stores next to a checkpoint (`paritybench-model.json`). It maps
one-to-one onto the gemma library's `TransformerConfig` and onto a Hugging Face `config.json`,
so both backends are configured from the same numbers: sliding window and layer types, RoPE
bases and scaling, soft-caps, query scaling, tied embeddings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._errors import ModelError

LayerType = Literal["sliding", "full"]
HF_LAYER = {"sliding": "sliding_attention", "full": "full_attention"}

# Special token ids hard-coded by the gemma library's Gemma 3 tokenizer and vision path.
BOS, EOS, PAD, START_OF_TURN, END_OF_TURN = 2, 1, 0, 105, 106
START_OF_IMAGE, END_OF_IMAGE = 255999, 256000


class VisionArch(BaseModel):
    """SigLIP encoder of Gemma 3 (images are square, resized inside the model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    image_size: int = 896
    patch_size: int = 14
    width: int = 1152
    depth: int = 27
    num_heads: int = 16
    mlp_dim: int = 4304
    mm_tokens_per_image: int = 256


class GemmaArch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["gemma3"] = "gemma3"
    vocab_size: int
    embed_dim: int
    hidden_dim: int
    num_heads: int
    head_dim: int
    num_kv_heads: int
    layer_types: tuple[LayerType, ...]
    sliding_window: int | None
    query_pre_attn_scalar: float
    final_logit_softcap: float | None = None
    attn_logit_softcap: float | None = None
    rope_local_base: float = 10_000.0
    rope_global_base: float = 1_000_000.0
    rope_local_scale: float = 1.0
    rope_global_scale: float = 1.0
    max_position_embeddings: int = 131_072
    vision: VisionArch | None = None
    # Token id of the image soft token in the Hugging Face checkpoint. None: not in the
    # tokenizer; the converter then appends it after the vocabulary (as Google's releases do).
    image_token_id: int | None = None
    dtype: Literal["float32", "bfloat16"] = "bfloat16"

    @property
    def num_layers(self) -> int:
        return len(self.layer_types)

    # ------------------------------------------------------------------ gemma library

    def to_gemma_config(self):
        """The gemma library's `TransformerConfig` for this architecture."""
        from gemma import gm
        from gemma.multimodal import vision as gemma_vision
        from gemma.multimodal import vision_utils

        C = gm.nn.config
        at = {"sliding": gm.nn.AttentionType.LOCAL_SLIDING, "full": gm.nn.AttentionType.GLOBAL}
        if self.query_pre_attn_scalar == self.head_dim:
            qnorm = C.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM
        elif self.query_pre_attn_scalar == self.embed_dim // self.num_heads:
            qnorm = C.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
        else:
            raise ModelError(
                f"query_pre_attn_scalar {self.query_pre_attn_scalar} is neither head_dim ({self.head_dim}) nor "
                f"embed_dim/num_heads ({self.embed_dim // self.num_heads}); the gemma library cannot express it"
            )
        vision = None
        if self.vision is not None:
            v = self.vision
            vision = gemma_vision.SigLiPFromPatches(
                siglip_encoder=vision_utils.ViTModel(
                    patch_size=(v.patch_size, v.patch_size), width=v.width, depth=v.depth,
                    mlp_dim=v.mlp_dim, num_heads=v.num_heads,
                ),
                siglip_exit=gemma_vision.VisionExit(output_length=v.mm_tokens_per_image),
                num_mm_tokens_per_image_prepool=(v.image_size // v.patch_size) ** 2,
                num_mm_tokens_per_image=v.mm_tokens_per_image,
                image_height=v.image_size,
                image_width=v.image_size,
            )
        return C.TransformerConfig(
            num_embed=self.vocab_size, embed_dim=self.embed_dim, hidden_dim=self.hidden_dim,
            num_heads=self.num_heads, head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
            final_logit_softcap=self.final_logit_softcap, attn_logits_soft_cap=self.attn_logit_softcap,
            use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
            attention_types=tuple(at[t] for t in self.layer_types),
            query_pre_attn_norm=qnorm, sliding_window_size=self.sliding_window,
            transpose_gating_einsum=True,
            local_base_frequency=int(self.rope_local_base), global_base_frequency=int(self.rope_global_base),
            local_scale_factor=self.rope_local_scale, global_scale_factor=self.rope_global_scale,
            vision_encoder=vision,
        )

    @classmethod
    def from_gemma_config(cls, config: Any, *, dtype: str = "bfloat16", max_position_embeddings: int = 131_072,
                          image_token_id: int | None = None) -> GemmaArch:
        """Read a gemma `TransformerConfig` (for example `gm.nn.Gemma3_4B.config`)."""
        from gemma import gm

        C = gm.nn.config
        if not (config.use_post_attn_norm and config.use_post_ffw_norm and config.use_qk_norm
                and config.transpose_gating_einsum):
            raise ModelError("only Gemma 3 architectures (post norms, qk-norm, transposed gating) are supported")
        lt = []
        for t in config.attention_types:
            lt.append("sliding" if t == gm.nn.AttentionType.LOCAL_SLIDING else "full")
        q = config.query_pre_attn_norm
        if q == C.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM:
            qs = float(config.head_dim)
        elif q == C.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS:
            qs = float(config.embed_dim // config.num_heads)
        else:
            raise ModelError(f"unsupported query normalisation {q}")
        vision = None
        ve = config.vision_encoder
        if ve is not None:
            enc = ve.siglip_encoder
            vision = VisionArch(
                image_size=ve.image_height, patch_size=enc.patch_size[0], width=enc.width, depth=enc.depth,
                num_heads=enc.num_heads, mlp_dim=enc.mlp_dim, mm_tokens_per_image=ve.num_mm_tokens_per_image,
            )
        return cls(
            vocab_size=config.num_embed, embed_dim=config.embed_dim, hidden_dim=config.hidden_dim,
            num_heads=config.num_heads, head_dim=config.head_dim, num_kv_heads=config.num_kv_heads,
            layer_types=tuple(lt), sliding_window=config.sliding_window_size, query_pre_attn_scalar=qs,
            final_logit_softcap=config.final_logit_softcap, attn_logit_softcap=config.attn_logits_soft_cap,
            rope_local_base=float(config.local_base_frequency), rope_global_base=float(config.global_base_frequency),
            rope_local_scale=float(config.local_scale_factor), rope_global_scale=float(config.global_scale_factor),
            max_position_embeddings=max_position_embeddings, vision=vision, dtype=dtype,
            image_token_id=image_token_id,
        )

    # ------------------------------------------------------------------ Hugging Face

    @property
    def hf_vocab_size(self) -> int:
        """Vocabulary rows in the HF checkpoint: +64 when the image token is appended (as Google's)."""
        if self.vision is not None and self.image_token_id is None:
            return self.vocab_size + 64
        return self.vocab_size

    @property
    def hf_image_token_id(self) -> int | None:
        if self.vision is None:
            return None
        return self.image_token_id if self.image_token_id is not None else self.vocab_size

    def _rope(self, base: float, scale: float) -> dict[str, Any]:
        if scale == 1.0:
            return {"rope_type": "default", "rope_theta": base}
        return {"rope_type": "linear", "factor": scale, "rope_theta": base}

    def to_hf_text_config(self) -> dict[str, Any]:
        return {
            "model_type": "gemma3_text",
            "vocab_size": self.hf_vocab_size,
            "hidden_size": self.embed_dim,
            "intermediate_size": self.hidden_dim,
            "num_hidden_layers": self.num_layers,
            "query_pre_attn_scalar": _num(self.query_pre_attn_scalar),
            "attn_logit_softcapping": self.attn_logit_softcap,
            **self._hf_shared_fields(),
            "use_bidirectional_attention": False,
            "dtype": self.dtype,
        }

    def _hf_shared_fields(self) -> dict[str, Any]:
        """The text-config fields Gemma 3 and Gemma 3n write alike."""
        return {
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "sliding_window": self.sliding_window,
            "layer_types": [HF_LAYER[t] for t in self.layer_types],
            "max_position_embeddings": self.max_position_embeddings,
            "rope_parameters": {
                "full_attention": self._rope(self.rope_global_base, self.rope_global_scale),
                "sliding_attention": self._rope(self.rope_local_base, self.rope_local_scale),
            },
            "hidden_activation": "gelu_pytorch_tanh",
            "rms_norm_eps": 1e-6,
            "final_logit_softcapping": self.final_logit_softcap,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "tie_word_embeddings": True,
            "bos_token_id": BOS,
            "eos_token_id": [EOS, END_OF_TURN],
            "pad_token_id": PAD,
        }

    def to_hf_config(self) -> dict[str, Any]:
        """A complete `config.json` for Gemma3ForCausalLM or Gemma3ForConditionalGeneration."""
        text = self.to_hf_text_config()
        if self.vision is None:
            return {"architectures": ["Gemma3ForCausalLM"], **text}
        v = self.vision
        text.pop("dtype")
        return {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "text_config": text,
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": v.width,
                "intermediate_size": v.mlp_dim,
                "num_hidden_layers": v.depth,
                "num_attention_heads": v.num_heads,
                "num_channels": 3,
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "hidden_act": "gelu_pytorch_tanh",
                "layer_norm_eps": 1e-6,
                "attention_dropout": 0.0,
                "vision_use_head": False,
            },
            "mm_tokens_per_image": v.mm_tokens_per_image,
            "boi_token_index": START_OF_IMAGE,
            "eoi_token_index": END_OF_IMAGE,
            "image_token_index": self.hf_image_token_id,
            "tie_word_embeddings": True,
            "dtype": self.dtype,
        }

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], *, source: str = "config.json") -> GemmaArch:
        """Read a Hugging Face Gemma 3 `config.json` (text-only or multimodal)."""
        mt = cfg.get("model_type")
        if mt not in ("gemma3", "gemma3_text"):
            raise ModelError(f"{source}: model_type {mt!r} is not Gemma 3 (gemma3 or gemma3_text); "
                             "only Gemma 3 checkpoints convert")
        text = cfg["text_config"] if mt == "gemma3" else cfg
        try:
            lt_hf = text.get("layer_types")
            n = text["num_hidden_layers"]
            if lt_hf is None:  # older configs: every Nth layer is global
                pat = text.get("sliding_window_pattern", text.get("_sliding_window_pattern", 6))
                lt_hf = ["full_attention" if (i + 1) % pat == 0 else "sliding_attention" for i in range(n)]
            inv = {v: k for k, v in HF_LAYER.items()}
            rope = text.get("rope_parameters")
            if rope is None:  # transformers 4.x format
                scaling = text.get("rope_scaling") or {}
                rope = {
                    "full_attention": {"rope_theta": text.get("rope_theta", 1_000_000.0),
                                       "factor": scaling.get("factor", 1.0)},
                    "sliding_attention": {"rope_theta": text.get("rope_local_base_freq", 10_000.0)},
                }
            vision = None
            image_token_id = None
            vocab = text["vocab_size"]
            if mt == "gemma3":
                vc = cfg["vision_config"]
                vision = VisionArch(
                    image_size=vc["image_size"], patch_size=vc["patch_size"], width=vc["hidden_size"],
                    depth=vc["num_hidden_layers"], num_heads=vc["num_attention_heads"],
                    mlp_dim=vc["intermediate_size"], mm_tokens_per_image=cfg.get("mm_tokens_per_image", 256),
                )
                itok = cfg.get("image_token_index", 262144)
                if itok == vocab - 64:
                    vocab = vocab - 64  # Google's layout: image token appended after the SentencePiece vocab
                else:
                    image_token_id = itok
            dtype = cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or "bfloat16"
            return cls(
                vocab_size=vocab, embed_dim=text["hidden_size"], hidden_dim=text["intermediate_size"],
                num_heads=text["num_attention_heads"], head_dim=text["head_dim"],
                num_kv_heads=text["num_key_value_heads"], layer_types=tuple(inv[t] for t in lt_hf),
                sliding_window=text.get("sliding_window"),
                query_pre_attn_scalar=float(text.get("query_pre_attn_scalar", text["head_dim"])),
                final_logit_softcap=text.get("final_logit_softcapping"),
                attn_logit_softcap=text.get("attn_logit_softcapping"),
                rope_local_base=float(rope["sliding_attention"].get("rope_theta", 10_000.0)),
                rope_global_base=float(rope["full_attention"].get("rope_theta", 1_000_000.0)),
                rope_local_scale=float(rope["sliding_attention"].get("factor", 1.0)),
                rope_global_scale=float(rope["full_attention"].get("factor", 1.0)),
                max_position_embeddings=text.get("max_position_embeddings", 131_072),
                vision=vision, image_token_id=image_token_id,
                dtype="float32" if dtype == "float32" else "bfloat16",
            )
        except KeyError as e:
            raise ModelError(f"{source}: missing field {e.args[0]!r}; is this a complete Gemma 3 config.json?") from None


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


# ------------------------------------------------------------------------------ Gemma 3n

# Hugging Face's Gemma3nTextConfig default, which vLLM applies from config.json; gemma 3.3's
# Gemma3n_E2B/E4B set none.
HF_GEMMA3N_SOFTCAP = 30.0
GEMMA3N_MM_IDS = 256  # vision (128) and audio (128) ids after the text vocabulary, in HF's layout

KvRule = Literal["gemma", "hf"]
KV_RULES: dict[str, str] = {
    "gemma": "fixed offsets: a KV-shared sliding layer reads layer (first shared - 2), a full one (first shared - 1) "
             "(gemma's create_kv_cache_sharing_patterns; vLLM's Gemma3n the same)",
    "hf": "the last unshared layer of the same type (transformers' Gemma3nTextAttention)",
}


def kv_sharing_targets(layer_types: tuple[str, ...], num_shared: int, rule: KvRule) -> tuple[int, ...]:
    """For each layer, the layer whose keys and values it uses (itself when not KV-shared)."""
    n = len(layer_types)
    first = n - num_shared
    out = []
    for i, t in enumerate(layer_types):
        if num_shared == 0 or i < first:
            out.append(i)
        elif rule == "gemma":
            out.append(first - (2 if t == "sliding" else 1))
        else:
            prev = [j for j in range(first) if layer_types[j] == t]
            if not prev:
                raise ModelError(f"layer {i} ({t}) is KV-shared but no unshared {t} layer precedes it")
            out.append(prev[-1])
    return tuple(out)


class Gemma3nArch(GemmaArch):
    """Gemma 3n text model (AltUp, LAuReL, per-layer inputs, KV sharing, activation sparsity).

    vocab_size: rows of the gemma embedding (and logits). text_vocab_size: the text ids (HF's
    `vocab_size_per_layer_input`; the per-layer embedding covers these). padded_vocab_size: rows
    of the Hugging Face embedding (HF's `vocab_size`: text + 256 vision/audio ids). gemma 3.3's
    E2B/E4B have 262144 rows, Google's HF checkpoints 262400 (256 copies of the pad row appended).
    Norms have no `1 + scale` (unlike Gemma 3). The vision and audio towers are not part of this
    description: gemma 3.3 has none; the converter takes them from a Hugging Face folder.
    """

    family: Literal["gemma3n"] = "gemma3n"  # type: ignore[assignment]
    query_pre_attn_scalar: float = 1.0  # Gemma 3n does not scale queries (qk-norm instead)
    text_vocab_size: int
    padded_vocab_size: int
    per_layer_input_dim: int
    laurel_rank: int
    altup_num_inputs: int = 4
    altup_coef_clip: float | None = 120.0
    activation_sparsity: tuple[float, ...]
    num_kv_shared_layers: int = 0

    @property
    def hf_vocab_size(self) -> int:
        return self.padded_vocab_size

    @property
    def hf_image_token_id(self) -> int | None:
        return None

    def kv_sharing(self, rule: KvRule = "gemma") -> tuple[int, ...]:
        return kv_sharing_targets(self.layer_types, self.num_kv_shared_layers, rule)

    def check(self) -> None:
        """Refuse what the gemma library cannot express."""
        n = self.num_layers
        if len(self.activation_sparsity) != n:
            raise ModelError(f"activation_sparsity has {len(self.activation_sparsity)} entries for {n} layers")
        if self.query_pre_attn_scalar != 1.0 or self.vision is not None:
            raise ModelError("Gemma 3n scales no queries and has no SigLIP tower in the gemma library")
        if self.altup_num_inputs != 4:
            raise ModelError(f"altup_num_inputs {self.altup_num_inputs}: the gemma library hard-codes 4 AltUp inputs")
        if not (0 <= self.num_kv_shared_layers < n):
            raise ModelError(f"num_kv_shared_layers {self.num_kv_shared_layers} must be below the {n} layers")
        if not self.text_vocab_size <= self.vocab_size <= self.padded_vocab_size:
            raise ModelError(f"vocabulary sizes: text {self.text_vocab_size} <= gemma rows {self.vocab_size} <= "
                             f"Hugging Face rows {self.padded_vocab_size} does not hold")

    def to_gemma_config(self):
        """gemma 3.3's Gemma 3n `TransformerConfig` (from its private module: gm.nn exports only
        the two released classes)."""
        from gemma.gm.nn.gemma3n import _config, _modules

        self.check()
        at = {"sliding": _modules.AttentionType.LOCAL_SLIDING, "full": _modules.AttentionType.GLOBAL}
        n = self.num_layers
        sharing = None
        if self.num_kv_shared_layers:
            # gemma computes int(n - frac * n); nudge frac so that float rounding cannot drop a layer
            frac = (self.num_kv_shared_layers - 1e-6) / n
            sharing = _config.KVCacheSharingConfig(frac_shared_layers=frac, share_global=True, share_local=True)
        return _config.TransformerConfig(
            final_logit_softcap=self.final_logit_softcap, num_embed=self.vocab_size, embed_dim=self.embed_dim,
            hidden_dim=self.hidden_dim, num_heads=self.num_heads, head_dim=self.head_dim,
            num_kv_heads=self.num_kv_heads, use_post_attn_norm=True, use_post_ffw_norm=True,
            use_qk_norm=True, qk_norm_with_scale=True, use_value_norm=True,
            attention_types=tuple(at[t] for t in self.layer_types),
            query_pre_attn_norm=_config.QueryPreAttentionNormalisation.NONE,
            attn_logits_soft_cap=self.attn_logit_softcap, sliding_window_size=self.sliding_window,
            transpose_gating_einsum=True,
            local_base_frequency=int(self.rope_local_base), global_base_frequency=int(self.rope_global_base),
            local_scale_factor=self.rope_local_scale, global_scale_factor=self.rope_global_scale,
            vision_encoder=None, activation_sparsity_pattern=tuple(self.activation_sparsity),
            use_altup=True, num_altup_inputs=self.altup_num_inputs, altup_coef_clip=self.altup_coef_clip,
            per_layer_input_dim=self.per_layer_input_dim, use_laurel=True, laurel_rank=self.laurel_rank,
            kv_cache_sharing_config=sharing, scale_plus_one=False, guard_against_excess_precision=True,
        )

    @classmethod
    def from_gemma3n_config(cls, config: Any, *, dtype: str = "bfloat16", max_position_embeddings: int = 32_768,
                            padded_vocab_size: int | None = None) -> Gemma3nArch:
        """Read a gemma Gemma 3n `TransformerConfig` (for example `gm.nn.Gemma3n_E2B.config`)."""
        from gemma.gm.nn.gemma3n import _config, _modules

        if config.query_pre_attn_norm != _config.QueryPreAttentionNormalisation.NONE or config.scale_plus_one:
            raise ModelError("not a Gemma 3n configuration (query scaling or 1 + scale norms)")
        n = len(config.attention_types)
        sc = config.kv_cache_sharing_config
        shared = 0 if sc is None else n - int(n - sc.frac_shared_layers * n)
        lt = tuple("sliding" if t == _modules.AttentionType.LOCAL_SLIDING else "full" for t in config.attention_types)
        return cls(
            vocab_size=config.num_embed, text_vocab_size=config.num_embed,
            padded_vocab_size=padded_vocab_size or config.num_embed + GEMMA3N_MM_IDS,
            embed_dim=config.embed_dim, hidden_dim=config.hidden_dim, num_heads=config.num_heads,
            head_dim=config.head_dim, num_kv_heads=config.num_kv_heads, layer_types=lt,
            sliding_window=config.sliding_window_size, final_logit_softcap=config.final_logit_softcap,
            attn_logit_softcap=config.attn_logits_soft_cap,
            rope_local_base=float(config.local_base_frequency), rope_global_base=float(config.global_base_frequency),
            rope_local_scale=float(config.local_scale_factor), rope_global_scale=float(config.global_scale_factor),
            max_position_embeddings=max_position_embeddings, dtype=dtype,
            per_layer_input_dim=config.per_layer_input_dim, laurel_rank=config.laurel_rank,
            altup_num_inputs=config.num_altup_inputs, altup_coef_clip=config.altup_coef_clip,
            activation_sparsity=tuple(float(x) for x in (config.activation_sparsity_pattern or (0.0,) * n)),
            num_kv_shared_layers=shared,
        )

    def to_hf_text_config(self) -> dict[str, Any]:
        """`text_config` of a Hugging Face `Gemma3nConfig` with this architecture."""
        return {
            "model_type": "gemma3n_text",
            "vocab_size": self.padded_vocab_size,
            "vocab_size_per_layer_input": self.text_vocab_size,
            "hidden_size": self.embed_dim,
            "hidden_size_per_layer_input": self.per_layer_input_dim,
            "intermediate_size": [self.hidden_dim] * self.num_layers,
            "num_hidden_layers": self.num_layers,
            "num_kv_shared_layers": self.num_kv_shared_layers,
            "laurel_rank": self.laurel_rank,
            "altup_num_inputs": self.altup_num_inputs,
            "altup_active_idx": 0,
            "altup_correct_scale": True,
            "altup_coef_clip": self.altup_coef_clip,
            "activation_sparsity_pattern": list(self.activation_sparsity),
            **self._hf_shared_fields(),
        }

    def to_hf_config(self) -> dict[str, Any]:
        raise ModelError("a Gemma 3n Hugging Face config needs its vision and audio towers' configuration: "
                         "use backends.models.gemma3n_hf_config(arch, towers_config)")

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], *, source: str = "config.json") -> Gemma3nArch:  # type: ignore[override]
        """Read a Hugging Face Gemma 3n `config.json` (`Gemma3nConfig` or a bare `gemma3n_text`)."""
        mt = cfg.get("model_type")
        if mt not in ("gemma3n", "gemma3n_text"):
            raise ModelError(f"{source}: model_type {mt!r} is not Gemma 3n (gemma3n or gemma3n_text)")
        text = cfg["text_config"] if mt == "gemma3n" else cfg
        try:
            n = text["num_hidden_layers"]
            inter = text["intermediate_size"]
            inters = set(inter) if isinstance(inter, list) else {inter}
            if len(inters) != 1:
                raise ModelError(f"{source}: intermediate_size varies by layer ({sorted(inters)}); the gemma library "
                                 "has one MLP width")
            for key, want in (("altup_active_idx", 0), ("altup_correct_scale", True)):
                if text.get(key, want) != want:
                    raise ModelError(f"{source}: {key}={text[key]!r}; the gemma library hard-codes {want!r}")
            inv = {v: k for k, v in HF_LAYER.items()}
            rope = text.get("rope_parameters")
            if rope is None:  # transformers 4.x format
                rope = {"full_attention": {"rope_theta": text.get("rope_theta", 1_000_000.0)},
                        "sliding_attention": {"rope_theta": text.get("rope_local_base_freq", 10_000.0)}}
            vocab = text["vocab_size"]
            dtype = cfg.get("dtype") or cfg.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
            return cls(
                vocab_size=vocab, text_vocab_size=text.get("vocab_size_per_layer_input", vocab),
                padded_vocab_size=vocab, embed_dim=text["hidden_size"], hidden_dim=next(iter(inters)),
                num_heads=text["num_attention_heads"], head_dim=text["head_dim"],
                num_kv_heads=text["num_key_value_heads"], layer_types=tuple(inv[t] for t in text["layer_types"]),
                sliding_window=text.get("sliding_window"),
                final_logit_softcap=text.get("final_logit_softcapping", HF_GEMMA3N_SOFTCAP),
                attn_logit_softcap=None,
                rope_local_base=float(rope["sliding_attention"].get("rope_theta", 10_000.0)),
                rope_global_base=float(rope["full_attention"].get("rope_theta", 1_000_000.0)),
                rope_local_scale=float(rope["sliding_attention"].get("factor", 1.0)),
                rope_global_scale=float(rope["full_attention"].get("factor", 1.0)),
                max_position_embeddings=text.get("max_position_embeddings", 32_768),
                dtype="float32" if dtype == "float32" else "bfloat16",
                per_layer_input_dim=text["hidden_size_per_layer_input"], laurel_rank=text["laurel_rank"],
                altup_num_inputs=text.get("altup_num_inputs", 4), altup_coef_clip=text.get("altup_coef_clip", 120.0),
                activation_sparsity=tuple(float(x) for x in text.get("activation_sparsity_pattern") or [0.0] * n),
                num_kv_shared_layers=text.get("num_kv_shared_layers", 0),
            )
        except KeyError as e:
            raise ModelError(f"{source}: missing field {e.args[0]!r}; is this a complete Gemma 3n config.json?") from None


Convention = Literal["gemma", "hf", "vllm"]


# Configuration fields every engine builds its model from (GemmaArch names = ModelSettings names)
CONFIG_FIELDS = ("query_pre_attn_scalar", "sliding_window", "layer_types", "rope_local_base", "rope_global_base",
                 "rope_local_scale", "rope_global_scale", "attn_logit_softcap")

# the model's shape (not compared by the diagnosis: a model of another shape does not load)
SHAPE_FIELDS = ("embed_dim", "hidden_dim", "num_heads", "num_kv_heads", "head_dim")


def engine_settings(arch: GemmaArch, convention: Convention, **known_more: Any) -> Any:
    """What an engine following `convention` computes for `arch` (a `backends.ModelSettings`):
    the configuration fields, and where engines part by design: the gemma library applies the
    gemma rows, its KV-sharing offsets and AltUp clipping; transformers (inference) and vLLM the
    Hugging Face rows and no clipping, transformers with its same-type KV-sharing rule, vLLM with
    the gemma offsets; neither applies an attention soft-cap to Gemma 3 (their attention is given
    none, whatever config.json says). `known_more`: what the engine adds (dtype, max_model_len, files)."""
    from .._types import ModelSettings
    from ._hfconfig import consumed_config

    rows = arch.vocab_size if convention == "gemma" else arch.hf_vocab_size
    full = arch.to_hf_text_config() if isinstance(arch, Gemma3nArch) else arch.to_hf_config()  # 3n's needs towers
    known_more.setdefault("config", consumed_config(full))
    known: dict[str, Any] = {"convention": convention, "family": arch.family,
                             "final_logit_softcap": arch.final_logit_softcap, "logit_rows": rows,
                             **{f: getattr(arch, f) for f in (*SHAPE_FIELDS, *CONFIG_FIELDS)}, **known_more}
    if isinstance(arch, Gemma3nArch):
        known.update(text_vocab_size=arch.text_vocab_size,
                     kv_sharing=arch.kv_sharing("hf" if convention == "hf" else "gemma"),
                     altup_coef_clip=arch.altup_coef_clip if convention == "gemma" else None)
    else:
        known["text_vocab_size"] = arch.vocab_size
        if convention != "gemma":  # transformers' and vLLM's Gemma 3 attention never applies config.json's cap
            known["attn_logit_softcap"] = None
    if arch.vision is not None:
        known.update(image_token_id=arch.hf_image_token_id, mm_tokens_per_image=arch.vision.mm_tokens_per_image)
    return ModelSettings(**known)


def conventional(field: str, family: str | None, values: dict[str, Any]) -> bool:
    """Whether two sides' differing values of a by-design setting are what their engines'
    conventions give (`values`: convention -> the side's value): Gemma 3n's final soft-cap (gemma's
    none, Hugging Face's and vLLM's 30 from config.json), AltUp clipping (gemma's bound, none
    elsewhere), the vocabulary rows and the KV-sharing rule (the conventions' own, so only between
    sides whose conventions differ). Any other pair of values is a configuration difference."""
    if len(values) < 2:  # both sides follow one convention: their values should be the same
        return False
    if field == "final_logit_softcap":
        expect = {"gemma": None, "hf": HF_GEMMA3N_SOFTCAP, "vllm": HF_GEMMA3N_SOFTCAP}
        return family == "gemma3n" and all(c in expect and v == expect[c] for c, v in values.items())
    if field == "altup_coef_clip":
        return family == "gemma3n" and all((v is None) == (c != "gemma") for c, v in values.items())
    if field == "logit_rows":  # gemma's rows are the text vocabulary, Hugging Face's append padding rows
        return "gemma" in values and all(v >= values["gemma"] for v in values.values())
    return field == "kv_sharing" and family == "gemma3n"


AnyArch = Annotated[GemmaArch | Gemma3nArch, Field(discriminator="family")]


def arch_from_hf_config(cfg: dict[str, Any], *, source: str = "config.json") -> GemmaArch:
    """The architecture of a Hugging Face Gemma 3 or Gemma 3n `config.json`."""
    if cfg.get("model_type") in ("gemma3n", "gemma3n_text"):
        return Gemma3nArch.from_hf_config(cfg, source=source)
    return GemmaArch.from_hf_config(cfg, source=source)


class ModelCard(BaseModel):
    """`paritybench-model.json`: what a gemma-format model directory holds."""

    model_config = ConfigDict(extra="forbid")
    format: int = 1
    name: str
    arch: AnyArch
    source: str = Field(default="", description="where the weights came from (builder, HF dir, checkpoint)")
    chat: bool = Field(default=True, description="the model has Gemma's chat template (False: a base model imported "
                                                 "without one, which takes plain-text prompts only)")
