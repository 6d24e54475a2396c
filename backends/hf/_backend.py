"""`HfBackend`: a Gemma 3 Hugging Face folder run by transformers in process (see the package docstring)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._base import BaseBackend, finish_generation
from .._errors import InputError, ModelError, UnsupportedError
from .._protocol import ImagePixelsResult, LayerStates
from .._system import peak_rss_bytes
from .._types import (
    Capabilities,
    Generation,
    ImagePart,
    MemorySnapshot,
    ModelSettings,
    Request,
    SamplingParams,
    TextPart,
    Timings,
    TokenScores,
    TopLogprobs,
)

EOS, END_OF_TURN, PAD = 1, 106, 0  # Gemma's <eos>, <end_of_turn>, <pad>
END_TOKENS = (EOS, END_OF_TURN)
TOP_K_MAX = 20
DTYPES = ("float32", "bfloat16")
NO_AUDIO = "Gemma 3 has no audio encoder"
NO_VISION = "the model has no vision encoder (text-only Gemma 3 folder)"
GEMMA3N_TOWERS = ("the hf engine loads Gemma 3n's text model only: its MobileNetV5 vision tower needs timm, which "
                  "the harness environment does not have (images and audio run on vLLM)")


@dataclasses.dataclass(frozen=True)
class _Encoded:
    """One request as the model takes it: prompt ids (BOS, template, expanded image tokens),
    and for image prompts the pixels and the token types (1 at image soft tokens)."""

    ids: list[int]
    pixel_values: Any = None  # torch.Tensor (n_images, 3, H, W) or None
    token_type_ids: list[int] | None = None


class HfBackend(BaseBackend):
    """`Backend` on Hugging Face transformers, in process, on the CPU.

    `hf_dir` is a local Hugging Face folder (config.json, model.safetensors, tokenizer files, chat
    template, preprocessor config for vision models); `model` is the display name. Without
    `hf_dir` the model name is resolved to a local folder through `backends.models.resolve`.
    """

    name = "hf"
    title = "transformers"

    def __init__(
        self,
        model: str,
        hf_dir: str | Path | None = None,
        *,
        dtype: str = "float32",
        max_batch_size: int = 16,
        attn_implementation: str = "eager",
        processor_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import torch

        t0 = time.perf_counter()
        self.model = str(model)
        if dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not supported by the hf engine; use float32 or bfloat16")
        if max_batch_size < 1:
            raise InputError(f"max_batch_size={max_batch_size}: give at least 1")
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.attn_implementation = attn_implementation
        self.processor_kwargs = dict(processor_kwargs or {})  # passed to the processor (vLLM's --mm-processor-kwargs)
        self.hf_dir = self._folder(self.model, hf_dir)
        self._torch_dtype = getattr(torch, dtype)
        self.warmup_s: float | None = None

        from transformers import AutoConfig

        try:
            self._config = AutoConfig.from_pretrained(self.hf_dir)
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"cannot read {self.hf_dir / 'config.json'}: {_first_line(e)}") from None
        self.has_vision = getattr(self._config, "vision_config", None) is not None
        self._model = self._load_model()
        self._processor, self._tokenizer = self._load_tokenizer()
        self._vocab_size = int(self._config.get_text_config().vocab_size)
        self.capabilities = Capabilities(
            modalities=frozenset({"text", "image"} if self.has_vision else {"text"}), streaming=False,
            max_top_logprobs=TOP_K_MAX,
            unsupported=({"audio": GEMMA3N_TOWERS, "image": GEMMA3N_TOWERS} if self._config.model_type == "gemma3n" else
                         {"audio": NO_AUDIO, **({} if self.has_vision else {"image": NO_VISION})}),
            chat=getattr(self._tokenizer, "chat_template", None) is not None,
        )
        self.load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.generate([self.capabilities.text_request("Hello")], SamplingParams(max_tokens=2, logprobs=1))
        self.warmup_s = time.perf_counter() - t1

    # ---------------------------------------------------------------- loading

    @staticmethod
    def _folder(model: str, hf_dir: str | Path | None) -> Path:
        if hf_dir is None:
            from ..models import resolve

            hf_dir = resolve(model, want="hf").hf_dir
            if hf_dir is None:
                raise ModelError(f"{model} has no local Hugging Face folder; pass hf_dir=/path/to/folder")
        path = Path(hf_dir)
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path

    def _load_model(self) -> Any:
        from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration, Gemma3nForCausalLM

        model_type = getattr(self._config, "model_type", None)
        kw: dict[str, Any] = {}
        cls: Any
        if model_type == "gemma3n":
            # The text model only: Gemma 3n's vision tower needs timm, which this environment lacks.
            self.has_vision = False
            cls = Gemma3nForCausalLM
            kw = {"config": self._config.get_text_config(), "key_mapping": {r"^model\.language_model\.": "model."}}
        elif self.has_vision and model_type != "gemma3":
            raise ModelError(f"{self.hf_dir}: model_type {model_type!r} with a vision_config is not Gemma 3 (gemma3)")
        else:
            cls = Gemma3ForConditionalGeneration if self.has_vision else AutoModelForCausalLM
        try:
            with _transformers_quiet():
                model = cls.from_pretrained(self.hf_dir, dtype=self._torch_dtype,
                                            attn_implementation=self.attn_implementation, **kw)
        except (OSError, ValueError, ImportError, KeyError, RuntimeError) as e:
            if "attn_implementation" in str(e):
                raise InputError(f"attn_implementation={self.attn_implementation!r}: {_first_line(e)}") from None
            raise ModelError(f"transformers cannot load {self.hf_dir} ({cls.__name__}, "
                             f"attn_implementation={self.attn_implementation!r}): {_first_line(e)}") from None
        model.eval()
        return model

    def _load_tokenizer(self) -> tuple[Any, Any]:
        """(processor or None, tokenizer): `AutoProcessor` with the slow (PIL) image processor for
        vision folders (torchvision, which the fast one needs, does not install beside this torch)."""
        from transformers import AutoProcessor, AutoTokenizer

        try:
            if self.has_vision:
                processor = AutoProcessor.from_pretrained(self.hf_dir, backend="pil")
                return processor, processor.tokenizer
            return None, AutoTokenizer.from_pretrained(self.hf_dir)
        except (OSError, ValueError, ImportError, KeyError, TypeError) as e:
            raise ModelError(f"cannot load the tokenizer/processor of {self.hf_dir}: {_first_line(e)}") from None

    # ---------------------------------------------------------------- tokens and prompts

    def text_ids(self, text: str) -> list[int]:
        """Plain tokenization of `text` (no chat template, no BOS)."""
        return [int(t) for t in self._tokenizer.encode(text, add_special_tokens=False)]

    def detokenize(self, ids: Sequence[int]) -> str:
        """The tokenizer's decode, special tokens shown (as transformers' and vLLM's decode)."""
        return self._tokenizer.decode([int(i) for i in ids])

    def _decode(self, ids: Sequence[int]) -> str:
        return self.detokenize([i for i in ids if i not in END_TOKENS])

    def _messages(self, request: Request) -> list[dict[str, Any]]:
        from PIL import Image

        out = []
        for m in request.messages:
            content: list[dict[str, Any]] = []
            for p in m.content:
                if isinstance(p, TextPart):
                    content.append({"type": "text", "text": p.text})
                elif isinstance(p, ImagePart):
                    content.append({"type": "image", "image": Image.fromarray(p.to_rgb_array())})
            out.append({"role": m.role, "content": content})
        return out

    def _encode(self, request: Request) -> _Encoded:
        self.capabilities.check(request, self.name)
        if request.text is not None:  # BOS + the text, no template
            return _Encoded(ids=[int(t) for t in self._tokenizer(request.text)["input_ids"]])
        msgs = self._messages(request)
        kw: dict[str, Any] = dict(add_generation_prompt=True, tokenize=True, return_dict=True)
        if self._processor is None:
            return _Encoded(ids=[int(t) for t in self._tokenizer.apply_chat_template(msgs, **kw)["input_ids"]])
        try:
            extra = {"processor_kwargs": self.processor_kwargs} if self.processor_kwargs else {}
            out = self._processor.apply_chat_template(msgs, return_tensors="pt", **kw, **extra)
        except (TypeError, ValueError) as e:
            raise InputError(f"hf: the processor of {self.hf_dir} refused the request"
                             f"{' with processor_kwargs ' + str(self.processor_kwargs) if self.processor_kwargs else ''}: "
                             f"{_first_line(e)}") from None
        ids = [int(t) for t in out["input_ids"][0]]
        if "pixel_values" not in out:
            return _Encoded(ids=ids)
        return _Encoded(ids=ids, pixel_values=out["pixel_values"].to(self._torch_dtype),
                        token_type_ids=[int(t) for t in out["token_type_ids"][0]])

    def prompt_ids(self, request: Request) -> list[int]:
        """Prompt ids as the model sees them: the folder's chat template (BOS included), each image
        expanded by the processor to "\\n\\n" <start_of_image> soft tokens <end_of_image> "\\n\\n"
        inside the text before tokenizing (so those newlines merge with neighbouring ones)."""
        return self._encode(request).ids

    def image_pixels(self, request: Request) -> ImagePixelsResult | None:
        """(processor class, resized uint8 HxWx3 images before rescale/normalise, normalised float32
        HxWx3 pixels the vision tower receives), one per image; None for a request without images."""
        self.capabilities.check(request, self.name)
        if not request.images:
            return None
        proc = self._processor.image_processor
        resized, pixels = [], []
        for part in request.images:
            img = part.to_rgb_array()
            raw = proc(images=img, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
            norm = proc(images=img, return_tensors="np")["pixel_values"][0]
            resized.append(np.clip(np.rint(np.transpose(raw, (1, 2, 0))), 0, 255).astype(np.uint8))
            pixels.append(np.transpose(norm, (1, 2, 0)).astype(np.float32))
        return ImagePixelsResult(processor=type(proc).__name__, resized=resized, pixels=pixels)

    # ---------------------------------------------------------------- generation

    def generate(self, requests: Sequence[Request], sampling: SamplingParams) -> list[Generation]:
        import torch

        encoded = [self._encode(r) for r in requests]
        seed = sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little")
        gen = torch.Generator().manual_seed(seed)
        out: list[Generation] = []
        for start in range(0, len(requests), self.max_batch_size):
            chunk = list(range(start, min(start + self.max_batch_size, len(requests))))
            t0 = time.perf_counter()
            rows = self._decode_loop([encoded[i] for i in chunk], sampling, gen)
            timings = Timings(e2e_s=time.perf_counter() - t0, batch_size=len(chunk))
            for i, (ids, lps, tops) in zip(chunk, rows):
                out.append(self._finish(requests[i], encoded[i].ids, ids, lps, tops, sampling, timings))
        return out

    def _decode_loop(self, encs: Sequence[_Encoded], s: SamplingParams,
                     gen: Any) -> list[tuple[list[int], list[float], list[TopLogprobs]]]:
        """Decode a left-padded batch step by step over the KV cache; per row the tokens, their
        log-probs and top alternatives (float32 log_softmax of each step's raw logits)."""
        import torch

        B, L = len(encs), max(len(e.ids) for e in encs)
        input_ids = torch.full((B, L), PAD, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        kw: dict[str, Any] = {}
        if any(e.pixel_values is not None for e in encs):
            tti = torch.zeros((B, L), dtype=torch.long)
            for b, e in enumerate(encs):
                if e.token_type_ids is not None:
                    tti[b, L - len(e.ids):] = torch.tensor(e.token_type_ids)
            kw = {"pixel_values": torch.cat([e.pixel_values for e in encs if e.pixel_values is not None]),
                  "token_type_ids": tti}
        for b, e in enumerate(encs):
            input_ids[b, L - len(e.ids):] = torch.tensor(e.ids)
            mask[b, L - len(e.ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        rows: list[tuple[list[int], list[float], list[TopLogprobs]]] = [([], [], []) for _ in encs]
        done = [False] * B
        with torch.inference_mode():
            out = self._model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                              logits_to_keep=1, **kw)
            nxt_pos = positions[:, -1:] + 1
            for step in range(s.max_tokens):
                logits = out.logits[:, -1].float()
                tok = _pick(logits, s, gen)
                logp = torch.log_softmax(logits, dim=-1) if s.return_logprobs else None
                if logp is not None and s.logprobs:
                    top_v, top_i = torch.topk(logp, s.logprobs, dim=-1)
                for b in range(B):
                    if done[b]:
                        continue
                    t = int(tok[b])
                    ids, lps, tops = rows[b]
                    ids.append(t)
                    if logp is not None:
                        lps.append(float(logp[b, t]))
                        if s.logprobs:
                            tops.append([(int(i), float(v)) for i, v in zip(top_i[b], top_v[b])])
                    if t in END_TOKENS and not s.ignore_eos:
                        done[b] = True
                    elif s.stop:
                        text = self._decode(ids)
                        done[b] = any(x in text for x in s.stop if x)
                if all(done) or step == s.max_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
                out = self._model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt_pos,
                                  past_key_values=out.past_key_values, use_cache=True)
                nxt_pos = nxt_pos + 1
        return rows

    def _finish(self, request: Request, prompt_ids: list[int], ids: list[int], lps: list[float],
                tops: list[TopLogprobs], s: SamplingParams, timings: Timings) -> Generation:
        ids, text, finish = finish_generation(ids, s, END_TOKENS, self._decode)
        n = len(ids)
        return Generation(
            request_id=request.id, prompt_ids=prompt_ids, token_ids=ids, text=text, finish_reason=finish,
            logprobs=lps[:n] if s.return_logprobs else None,
            top_logprobs=tops[:n] if s.return_logprobs and s.logprobs else None, timings=timings,
        )

    # ---------------------------------------------------------------- scoring

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def score(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
              top_logprobs: int = 0, causal_images: bool = False) -> list[TokenScores]:
        """Teacher-forced log-probs of `continuation_ids` after each request's prompt (one forward
        each). `causal_images=True` passes no token types, so image tokens attend causally."""
        self.check_score_args(requests, continuation_ids, top_logprobs)
        encoded = [self._encode(r) for r in requests]
        out = []
        for r, e, cont in zip(requests, encoded, continuation_ids):
            sc = self._score_one(e, [int(t) for t in cont], top_logprobs, causal_images)
            out.append(sc.model_copy(update={"request_id": r.id}))
        return out

    def score_causal_images(self, requests: Sequence[Request], continuation_ids: Sequence[Sequence[int]], *,
                            top_logprobs: int = 0) -> list[TokenScores]:
        """`score` with causal attention inside images (the `CausalImageScoring` diagnostic)."""
        return self.score(requests, continuation_ids, top_logprobs=top_logprobs, causal_images=True)

    def score_ids(self, ids: Sequence[int], *, top_logprobs: int = 0) -> TokenScores:
        """Log-probs of ids[1:], each given the ids before it (no chat template; text only)."""
        ids = self.check_score_ids(ids, top_logprobs)
        return self._score_one(_Encoded(ids=ids[:1]), ids[1:], top_logprobs, causal_images=False)

    def _score_one(self, e: _Encoded, cont: list[int], top: int, causal_images: bool) -> TokenScores:
        import torch

        if not cont:
            return TokenScores(prompt_ids=e.ids, token_ids=[], logprobs=[], top_logprobs=[] if top else None)
        seq = torch.tensor([e.ids + cont])
        kw: dict[str, Any] = {}
        if e.pixel_values is not None and e.token_type_ids is not None:
            kw["pixel_values"] = e.pixel_values
            if not causal_images:
                kw["token_type_ids"] = torch.tensor([e.token_type_ids + [0] * len(cont)])
        with torch.inference_mode():
            # The last len(cont) + 1 positions; the one after the last token predicts nothing asked.
            logits = self._model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False,
                                 logits_to_keep=len(cont) + 1, **kw).logits[0, :-1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            chosen = logp.gather(-1, torch.tensor(cont)[:, None])[:, 0].tolist()
            tops = None
            if top:
                v, i = torch.topk(logp, top, dim=-1)
                tops = [[(int(a), float(b)) for a, b in zip(ri, rv)] for ri, rv in zip(i.tolist(), v.tolist())]
        return TokenScores(prompt_ids=e.ids, token_ids=cont, logprobs=[float(x) for x in chosen], top_logprobs=tops)

    # ---------------------------------------------------------------- layer capture

    def capture_layers(self, request: Request, continuation_ids: Sequence[int] = (), *,
                       reference: np.ndarray | None = None) -> LayerStates:
        """The residual stream at every depth for the request's prompt + `continuation_ids`
        (`LayerCapture`), by forward hooks on the decoder layers and the final norm (transformers'
        `output_hidden_states` leaves out the last layer's stream before the norm); with `reference`
        each layer and the norm are fed that stream instead (a local pass)."""
        import torch

        t0 = time.perf_counter()
        core = next((m for m in self._model.modules()
                     if isinstance(getattr(m, "layers", None), torch.nn.ModuleList) and hasattr(m, "norm")), None)
        if core is None or "Gemma3n" in type(core).__name__:
            raise UnsupportedError("hf: layer capture follows Gemma 3's one residual stream; Gemma 3n's AltUp keeps "
                                   "several streams per layer (not supported)")
        e = self._encode(request)
        cont = [int(t) for t in continuation_ids]
        seq = torch.tensor([e.ids + cont])
        kw: dict[str, Any] = {}
        if e.pixel_values is not None and e.token_type_ids is not None:
            kw = {"pixel_values": e.pixel_values, "token_type_ids": torch.tensor([e.token_type_ids + [0] * len(cont)])}
        n = len(core.layers)
        ref = None if reference is None else torch.from_numpy(np.array(reference, np.float32))  # a writable copy
        rows: list[Any] = [None] * (n + 2)

        def fed(k: int, hidden: Any) -> Any:
            assert ref is not None
            return ref[k, : hidden.shape[1]].to(hidden.dtype)[None]

        def pre(k: int) -> Callable[..., Any]:
            def hook(mod: Any, args: tuple, kwargs: dict) -> Any:
                hidden = args[0] if args else kwargs["hidden_states"]
                if k == 0:
                    rows[0] = hidden[0].float().clone()
                if ref is None:
                    return None
                if args:
                    return (fed(k, hidden), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": fed(k, hidden)}
            return hook

        def post(k: int) -> Callable[..., Any]:
            def hook(mod: Any, args: tuple, out: Any) -> None:
                rows[k + 1] = (out[0] if isinstance(out, tuple) else out)[0].float().clone()
            return hook

        handles = [layer.register_forward_pre_hook(pre(k), with_kwargs=True) for k, layer in enumerate(core.layers)]
        handles += [layer.register_forward_hook(post(k)) for k, layer in enumerate(core.layers)]
        handles.append(core.norm.register_forward_pre_hook(pre(n), with_kwargs=True))
        handles.append(core.norm.register_forward_hook(post(n)))
        try:
            with torch.inference_mode():
                self._model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False, logits_to_keep=1, **kw)
        finally:
            for h in handles:
                h.remove()
        hidden = torch.stack(rows).numpy()
        soft = getattr(self._model.config, "image_token_id", None)
        ids = e.ids + cont
        return LayerStates(hidden=hidden, ids=ids, media=np.asarray(ids) == soft, seconds=time.perf_counter() - t0)

    # ---------------------------------------------------------------- the record, memory, lifetime

    def weight_tensors(self) -> dict[str, np.ndarray] | None:
        from .. import models

        return models.hf_dir_tensors(self.hf_dir)

    def model_settings(self) -> ModelSettings:
        """What transformers computes where engines part by design (`ModelSettings`): the
        config's soft-cap and rows, Gemma 3n's same-type KV-sharing rule, no AltUp clipping."""
        from .. import models

        return models.hf_folder_settings(self.hf_dir, "hf", dtype=self.dtype, kv_cache_dtype=self.dtype,
                                         quantization=None)

    def describe(self) -> dict[str, Any]:
        import torch
        import transformers

        return {
            "backend": self.name, "model": self.model, "hf_dir": str(self.hf_dir), "dtype": self.dtype,
            "vocab_size": self.vocab_size, "attn_implementation": self.attn_implementation,
            "model_class": type(self._model).__name__,
            "processor_class": type(self._processor).__name__ if self._processor is not None else None,
            "processor_kwargs": self.processor_kwargs,
            "tokenizer_class": type(self._tokenizer).__name__,
            "torch": torch.__version__, "transformers": transformers.__version__, "device": "cpu",
            "torch_threads": torch.get_num_threads(), "max_batch_size": self.max_batch_size,
            "load_s": self.load_s, "warmup_s": self.warmup_s,
        }

    def guide_facts(self) -> dict[str, str]:
        import torch
        import transformers

        return {
            "Setup": f"transformers {transformers.__version__}, torch {torch.__version__}, in process",
            "Model loading": f"{type(self._model).__name__}.from_pretrained (Hugging Face folder {self.hf_dir.name})",
            "Memory efficiency": "dynamic KV cache per batch (left-padded)",
            "API": "Python, in process (model forward, own decoding loop)",
            "Multi-GPU": "one device (CPU)",
            "Quantization": f"none; dtype {self.dtype}",
        }

    def memory(self) -> MemorySnapshot:
        import psutil

        return MemorySnapshot(backend=self.name, device="cpu", rss_bytes=psutil.Process().memory_info().rss,
                              peak_rss_bytes=peak_rss_bytes())

    def close(self) -> None:
        self._model = None
        gc.collect()



# ------------------------------------------------------------------------- helpers


def _pick(logits: Any, s: SamplingParams, gen: Any) -> Any:
    """The next token of each row of float32 `logits` (B, V): argmax when greedy, else a draw
    from softmax(logits / temperature) restricted to the top-k or the top-p nucleus."""
    import torch

    if s.greedy:
        return logits.argmax(dim=-1)
    x = logits / s.temperature
    if s.top_k is not None:
        kth = torch.topk(x, min(s.top_k, x.shape[-1]), dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if s.top_p is not None:
        sorted_x, order = torch.sort(x, descending=True, dim=-1)
        p = torch.softmax(sorted_x, dim=-1)
        drop = (p.cumsum(dim=-1) - p) >= s.top_p  # keep the smallest prefix whose mass reaches top_p
        x = torch.full_like(x, float("-inf")).scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(x, dim=-1), 1, generator=gen)[:, 0]


@contextlib.contextmanager
def _transformers_quiet():
    """No progress bar ("Loading weights") and no load report on the console while a model loads
    (for Gemma 3n the text model is taken out of a multimodal folder: its towers' tensors are left
    unused on purpose)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
