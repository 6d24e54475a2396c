"""One description of a Gemma 3 architecture, mapped to both libraries' configs.

`GemmaArch` is what paritybench stores next to a checkpoint (`paritybench-model.json`). It maps
one-to-one onto the gemma library's `TransformerConfig` and onto a Hugging Face `config.json`,
so both backends are configured from the same numbers: sliding window and layer types, RoPE
bases and scaling, soft-caps, query scaling, tied embeddings.
"""

from __future__ import annotations

from typing import Any, Literal

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
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "query_pre_attn_scalar": _num(self.query_pre_attn_scalar),
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
            "attn_logit_softcapping": self.attn_logit_softcap,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "use_bidirectional_attention": False,
            "tie_word_embeddings": True,
            "bos_token_id": BOS,
            "eos_token_id": [EOS, END_OF_TURN],
            "pad_token_id": PAD,
            "dtype": self.dtype,
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


class ModelCard(BaseModel):
    """`paritybench-model.json`: what a gemma-format model directory holds."""

    model_config = ConfigDict(extra="forbid")
    format: int = 1
    name: str
    arch: GemmaArch
    source: str = Field(default="", description="where the weights came from (builder, HF dir, checkpoint)")
