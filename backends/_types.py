"""Request and result types shared by every backend.

Everything a backend takes or returns is one of these validated models, so the two sides of a
comparison are fed, and report, exactly the same things.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Modality = Literal["text", "image", "audio"]
NO_CHAT_TEMPLATE = ("the model has no chat template (a base model takes plain-text prompts: `text:` in a suite, "
                    "Request.plain)")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


# --------------------------------------------------------------------------- request parts


class TextPart(_Model):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Model):
    """An image given as a file path, encoded bytes (PNG, JPEG, ...) or an HxWxC uint8 array."""

    type: Literal["image"] = "image"
    path: Path | None = None
    data: bytes | None = None
    array: np.ndarray | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ImagePart:
        given = [n for n in ("path", "data", "array") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"an image part needs exactly one of path, data or array (got {given or 'none'})")
        if self.array is not None:
            a = self.array
            if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.dtype != np.uint8:
                raise ValueError(f"image array must be HxWxC uint8 with C in 1, 3, 4; got shape {a.shape} {a.dtype}")
        return self

    def to_rgb_array(self) -> np.ndarray:
        """The image as an HxWx3 uint8 array (decoded with Pillow)."""
        from . import _media

        if self.array is not None:
            return _media.rgb(self.array)
        return _media.decode_image(self.path, self.data)


class AudioPart(_Model):
    """Audio given as a file path (WAV, FLAC, ...) or mono float samples with their rate in Hz."""

    type: Literal["audio"] = "audio"
    path: Path | None = None
    samples: np.ndarray | None = None
    rate: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _path_or_samples(self) -> AudioPart:
        if (self.path is None) == (self.samples is None):
            raise ValueError("an audio part needs exactly one of path or samples")
        if self.samples is not None and self.rate is None:
            raise ValueError("audio samples need their sample rate (rate=..., in Hz)")
        return self


Part = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class Message(_Model):
    role: Literal["system", "user", "assistant"]
    content: list[Part]

    @field_validator("content", mode="before")
    @classmethod
    def _text_shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [TextPart(text=v)]
        return v


class Request(_Model):
    """One prompt: a chat (`messages`, whose parts are text, images or audio; each engine renders
    Gemma's chat template) or a plain text (`text`: a completion prompt, fed as exactly BOS plus the
    text, no template: what a base model takes)."""

    messages: list[Message] = Field(default_factory=list)
    text: str | None = None
    id: str | None = None

    @classmethod
    def from_text(cls, text: str, *, id: str | None = None, system: str | None = None) -> Request:
        """A one-turn chat prompt."""
        msgs = [Message(role="system", content=system)] if system else []
        msgs.append(Message(role="user", content=text))
        return cls(messages=msgs, id=id)

    @classmethod
    def plain(cls, text: str, *, id: str | None = None) -> Request:
        """A plain-text (completion) prompt."""
        return cls(text=text, id=id)

    @property
    def is_chat(self) -> bool:
        return self.text is None

    @model_validator(mode="after")
    def _roles(self) -> Request:
        if self.text is not None:
            if self.messages:
                raise ValueError("a request is either a chat (messages) or a plain text (text), not both")
            if not self.text:
                raise ValueError("a plain-text prompt needs some text")
            return self
        if not self.messages:
            raise ValueError("a request needs messages (a chat) or text (a plain-text prompt)")
        roles = [m.role for m in self.messages if m.role != "system"]
        if any(m.role == "system" for m in self.messages[1:]):
            raise ValueError("a system message may only come first")
        for i, r in enumerate(roles):
            want = "user" if i % 2 == 0 else "assistant"
            if r != want:
                raise ValueError(f"roles must alternate user/assistant starting with user; message {i} is {r}")
        if not roles or roles[-1] != "user":
            raise ValueError("the last message must come from the user")
        return self

    @property
    def modalities(self) -> frozenset[str]:
        if self.text is not None:
            return frozenset({"text"})
        return frozenset(p.type for m in self.messages for p in m.content)

    @property
    def images(self) -> list[ImagePart]:
        return [p for m in self.messages for p in m.content if isinstance(p, ImagePart)]

    @property
    def audio(self) -> list[AudioPart]:
        return [p for m in self.messages for p in m.content if isinstance(p, AudioPart)]


# --------------------------------------------------------------------------- sampling


class SamplingParams(_Model):
    """One explicit sampling configuration, shared by both sides of a comparison.

    temperature 0 means greedy. `logprobs` is the number of top alternatives returned per
    generated token (0: only the chosen token's log-prob); `return_logprobs=False` skips log-probs
    altogether (throughput runs). `ignore_eos` makes every output exactly `max_tokens` long.
    """

    temperature: float = Field(default=0.0, ge=0.0)
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int = Field(default=32, ge=1)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int = Field(default=0, ge=0, le=20)
    return_logprobs: bool = True  # False: no log-probs at all (throughput runs)
    ignore_eos: bool = False  # True: generate exactly max_tokens (end tokens do not stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @model_validator(mode="after")
    def _consistent(self) -> SamplingParams:
        if self.greedy and (self.top_k is not None or self.top_p is not None):
            raise ValueError("top_k/top_p need temperature > 0 (temperature 0 is greedy)")
        if self.logprobs and not self.return_logprobs:
            raise ValueError("logprobs > 0 needs return_logprobs=True")
        if self.top_k is not None and self.top_p is not None:
            raise ValueError("give top_k or top_p, not both (the gemma sampler applies one method)")
        return self


# --------------------------------------------------------------------------- results

TopLogprobs = list[tuple[int, float]]


class Timings(_Model):
    """Wall-clock timings of one request, in seconds.

    `ttft_s` and `token_times_s` are only known where the backend streams (vLLM). For a batched
    backend (JAX) `e2e_s` is the batch's time and `compile_s` the part of it spent compiling.
    """

    e2e_s: float
    ttft_s: float | None = None
    token_times_s: list[float] | None = None
    compile_s: float = 0.0
    batch_size: int = 1


class Generation(_Model):
    request_id: str | None = None
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    top_logprobs: list[TopLogprobs] | None = None
    finish_reason: Literal["stop", "length"]
    timings: Timings


class TokenScores(_Model):
    """Teacher-forced log-probs of given continuation tokens after a prompt."""

    request_id: str | None = None
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[TopLogprobs] | None = None


class MemorySnapshot(_Model):
    """Memory of one backend at one moment, in bytes (None where the backend cannot know)."""

    backend: str
    device: Literal["cpu", "gpu", "tpu"]
    timestamp: float = Field(default_factory=time.time)
    rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    live_array_bytes: int | None = None
    device_array_bytes: dict[str, int] | None = None  # live array bytes held on each device (a sharded model)
    device_bytes_in_use: int | None = None
    device_peak_bytes: int | None = None
    kv_cache_usage: float | None = None  # fraction 0..1 of the KV cache in use (vLLM)
    requests_running: int | None = None
    requests_waiting: int | None = None


class Capabilities(_Model):
    """What a backend can do for a given model; `unsupported` says why a modality is missing."""

    modalities: frozenset[Modality]
    logprobs: bool = True
    scoring: bool = True
    streaming: bool = False
    max_top_logprobs: int = 20
    unsupported: dict[str, str] = Field(default_factory=dict)
    chat: bool = True  # takes chat prompts (False: a base model without a chat template)
    no_chat: str = NO_CHAT_TEMPLATE

    def text_request(self, text: str, *, id: str | None = None) -> Request:
        """`text` as the prompt this model takes: a one-turn chat, or plain text for a model
        without a chat template."""
        return Request.from_text(text, id=id) if self.chat else Request.plain(text, id=id)

    def check(self, request: Request, backend: str) -> None:
        from ._errors import UnsupportedError

        if request.is_chat and not self.chat:
            raise UnsupportedError(f"{backend}: request {request.id or ''} is a chat prompt, but {self.no_chat}")
        for m in sorted(request.modalities - self.modalities):
            why = self.unsupported.get(m, "the model takes no such input")
            raise UnsupportedError(f"{backend}: request {request.id or ''} has {m} input, which is unsupported: {why}")


class ModelSettings(_Model):
    """What a side's engine really computes where Gemma engines are known to part, by design.

    A field not set is unknown for that side (for example a hub model an attached server loaded);
    None is a value: no soft-cap, no clipping, no KV sharing.

    convention: whose rules the side follows ("gemma": the gemma library's, "hf": transformers',
    "vllm": vLLM's). family: the architecture ("gemma3", "gemma3n"). final_logit_softcap: the cap c of c * tanh(logits / c). text_vocab_size: the
    text ids. logit_rows: how many logits each softmax normalises over (the output embedding's rows;
    more than the text ids where vision/audio ids or padding rows follow). kv_sharing: for each layer,
    the layer whose keys and values it attends with (Gemma 3n's KV-shared layers).
    altup_coef_clip: the bound AltUp's prediction and correction coefficients are clipped to at
    inference (Gemma 3n); None when nothing is clipped (no bound, or every coefficient within it).
    dtype: the compute dtype the side really ran (a managed vLLM server: what its engine loaded).
    max_model_len: the longest sequence the side takes. The configuration fields (query scaling,
    window and layer types, RoPE bases and scales per layer type, attention soft-cap, RMSNorm
    epsilon, tied embeddings, image-token layout) are what the engine's model was built from.
    kv_cache_dtype and quantization: how the engine stores the KV cache and the weights.
    tokenizer_sha256: the SentencePiece file's hash; chat_template_sha256: the template file's.
    end_ids: the token ids that end a generation. config: every key of the model configuration the
    engine consumes (Hugging Face text-config names), for the diff of fields no other setting names. embed_dim: the residual stream's width (the
    float32 tolerance follows the model's size); hidden_dim, num_heads, num_kv_heads, head_dim:
    the feed-forward width and the attention heads (with embed_dim and layer_types, the shape a
    roofline estimate reads: `harness.roofline`).
    """

    convention: str | None = None
    family: str | None = None
    embed_dim: int | None = None
    hidden_dim: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    dtype: str | None = None
    max_model_len: int | None = None
    final_logit_softcap: float | None = None
    text_vocab_size: int | None = None
    logit_rows: int | None = None
    kv_sharing: tuple[int, ...] | None = None
    altup_coef_clip: float | None = None
    # the model configuration both engines read (names of `backends.models.GemmaArch`)
    attn_logit_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    rope_local_base: float | None = None
    rope_global_base: float | None = None
    rope_local_scale: float | None = None
    rope_global_scale: float | None = None
    rms_norm_eps: float | None = None
    tied_embeddings: bool | None = None  # the output projection is the input embedding
    image_token_id: int | None = None  # the id image soft tokens carry in the prompt
    mm_tokens_per_image: int | None = None  # soft tokens per image
    # engine choices that change the numbers
    kv_cache_dtype: str | None = None  # what keys and values are stored in
    quantization: str | None = None  # the weight quantization method (None: none)
    # files the two sides should share
    tokenizer_sha256: str | None = None
    chat_template_sha256: str | None = None  # the Jinja chat template a side applies (a folder's)
    end_ids: tuple[int, ...] | None = None
    # the model configuration the engine consumes, as Hugging Face text-config keys
    # (`backends.models.consumed_config`; the gemma library's is its architecture's equivalent)
    config: dict[str, Any] | None = None

    def known(self) -> dict[str, Any]:
        """The fields this side knows, by name."""
        return {k: getattr(self, k) for k in sorted(self.model_fields_set)}
