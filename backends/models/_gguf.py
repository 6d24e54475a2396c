"""Gemma 3 GGUF files (llama.cpp's format) read back into float32 Hugging Face weights, a
`config.json` and the SentencePiece `tokenizer.model`.

llama.cpp's converter (`convert_hf_to_gguf.py`, class Gemma3Model, and gguf-py's tensor names)
writes a Gemma 3 checkpoint with these conventions, each undone here:
- names: `token_embd`, `blk.N.attn_norm | attn_q | attn_k | attn_v | attn_output | attn_q_norm |
  attn_k_norm | post_attention_norm | ffn_norm | ffn_gate | ffn_up | ffn_down | post_ffw_norm`,
  `output_norm` (HF_NAMES below); the output projection is the tied embedding (no `output`).
- RMSNorm weights are stored as (1 + w) (`norm_shift = 1.0`: Gemma 3's RMSNorm multiplies by
  1 + w, llama.cpp's by w): 1 is subtracted from every `*_norm` tensor.
- tensor layouts: GGUF lists dimensions fastest first; the `gguf` package's arrays are row-major
  [rows, columns], which is Hugging Face's [out_features, in_features] (no transposes; Gemma's
  query and key weights are not permuted, unlike Llama's).
- hyper-parameters llama.cpp does not store, but fixes for the gemma3 architecture: every 6th
  layer attends globally (the rest in the sliding window), local RoPE base 10000 (unless the file
  has `rope.freq_base_swa`), query scaling by 1/sqrt(head_dim) (by 1/sqrt(width / heads) for the
  62-layer 27B model).
- the tokenizer: `tokenizer.ggml.model` "llama" is SentencePiece; pieces, scores and token types
  (SentencePiece's own numbering) are written back into a BPE ModelProto with byte fallback and
  Gemma's normalizer (no dummy prefix, whitespace kept and escaped as U+2581).
Quantized tensors are dequantized by the `gguf` package (`gguf.quants.dequantize`) to float32.

Checked (tests/test_real_model.py): on gemma-3-270m-q4_k_m.gguf the 236 dequantized tensors equal
transformers' GGUF loader's bit for bit, and the rebuilt tokenizer gives transformers' GGUF
tokenizer's ids on every line of tests/data/tokenizer_check_corpus.txt (the two rules it needs are
in `sentencepiece_model`). `write_gguf` writes the other way, with the same conventions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import InputError, ModelError
from ._checkpoint import file_sha256

# llama.cpp name -> Hugging Face Gemma3ForCausalLM name ("{i}": the block)
HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.post_attention_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.pre_feedforward_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "blk.{i}.post_ffw_norm.weight": "model.layers.{i}.post_feedforward_layernorm.weight",
}
NORM_SHIFT = 1.0  # llama.cpp stores Gemma 3's RMSNorm weights as 1 + w
SWA_PATTERN = 6  # llama.cpp's gemma3: layers 6, 12, ... (1-based) are global
LOCAL_ROPE_BASE = 10_000.0
# SentencePiece's piece types (sentencepiece_model.proto), as GGUF's tokenizer.ggml.token_type stores them
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
WHITESPACE = "\u2581"  # SentencePiece's escaped space


@dataclass(frozen=True)
class GgufTokenizer:
    pieces: list[str]
    scores: list[float]
    types: list[int]  # SentencePiece's: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int
    add_bos: bool


@dataclass(frozen=True)
class GgufModel:
    """What a Gemma 3 GGUF holds, in Hugging Face terms."""

    path: Path
    sha256: str
    config: dict[str, Any]  # a Hugging Face text config (transformers 5's rope_parameters)
    tensors: dict[str, np.ndarray]  # HF names -> float32
    tensor_types: dict[str, str]  # HF names -> the GGUF type it was stored in (Q4_K, F32, ...)
    tokenizer: GgufTokenizer
    file_type: int | None
    chat_template: str | None  # tokenizer.chat_template (None: a base model)


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - a dependency of the harness environment
        raise ModelError("the `gguf` package is missing: rebuild the environment (make env)") from None
    if not path.is_file():
        raise InputError(f"{path}: no such GGUF file")
    try:
        return GGUFReader(str(path))
    except Exception as e:  # a truncated or altered file: the reader's own error, in one line
        raise InputError(f"{path}: not a readable GGUF file ({type(e).__name__}: {str(e)[:160]}); "
                         "download it again or check its sha256") from None


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf(path: Path | str, *, expect_sha256: str | None = None) -> GgufModel:
    """Read a Gemma 3 text GGUF: config, float32 tensors (dequantized) and tokenizer."""
    path = Path(path)
    sha = file_sha256(path) or ""
    if expect_sha256 is not None and sha != expect_sha256:
        raise InputError(f"{path}: sha256 {sha[:16]}... is not the expected {expect_sha256[:16]}...; "
                         "the file is truncated or altered: assemble or download it again")
    r = _reader(path)
    config, tokens = _config(r, path)
    tok = _tokenizer(r, tokens)
    tensors, stored = _tensors(r, path, int(config["num_hidden_layers"]))
    return GgufModel(path=path, sha256=sha, config=config, tensors=tensors, tensor_types=stored, tokenizer=tok,
                     file_type=_field(r, "general.file_type"), chat_template=_field(r, "tokenizer.chat_template"))


def _config(r: Any, path: Path) -> tuple[dict[str, Any], list[str]]:
    """The Hugging Face text config a Gemma 3 GGUF's metadata describes, and its vocabulary
    (a one-line error for a file that is not a Gemma 3 text GGUF with its tokenizer)."""
    arch = _field(r, "general.architecture")
    if arch != "gemma3":
        raise ModelError(f"{path}: general.architecture is {arch!r}, not 'gemma3'; only Gemma 3 text GGUFs import")
    if _field(r, "tokenizer.ggml.tokens") is None:
        raise ModelError(f"{path}: the GGUF has no tokenizer (tokenizer.ggml.tokens); "
                         "import one converted with its tokenizer")
    if _field(r, "tokenizer.ggml.model") != "llama":
        raise ModelError(f"{path}: tokenizer.ggml.model is {_field(r, 'tokenizer.ggml.model')!r}, "
                         "not 'llama' (SentencePiece), as Gemma's is")

    def hp(key: str, default: Any = None) -> Any:
        value = _field(r, f"gemma3.{key}", default)
        if value is None:
            raise ModelError(f"{path}: the GGUF lacks gemma3.{key}")
        return value

    n_layers, width, heads = int(hp("block_count")), int(hp("embedding_length")), int(hp("attention.head_count"))
    head_dim = int(hp("attention.key_length", width // heads))
    eps = float(hp("attention.layer_norm_rms_epsilon", 1e-6))
    if abs(eps - 1e-6) > 1e-9:
        raise ModelError(f"{path}: RMSNorm epsilon {eps:g}; Gemma 3 uses 1e-6")
    scaling = _field(r, "gemma3.rope.scaling.type")
    factor = float(_field(r, "gemma3.rope.scaling.factor", 1.0)) if scaling in ("linear", 1) else 1.0
    full = {"rope_type": "linear", "factor": factor} if factor != 1.0 else {"rope_type": "default"}
    tokens = list(_field(r, "tokenizer.ggml.tokens"))
    config: dict[str, Any] = {
        "model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"],
        "vocab_size": len(tokens), "hidden_size": width,
        "intermediate_size": int(hp("feed_forward_length")), "num_hidden_layers": n_layers,
        "num_attention_heads": heads, "num_key_value_heads": int(hp("attention.head_count_kv")),
        "head_dim": head_dim, "sliding_window": int(hp("attention.sliding_window")),
        "layer_types": ["full_attention" if (i + 1) % SWA_PATTERN == 0 else "sliding_attention"
                        for i in range(n_layers)],
        "rope_parameters": {
            "full_attention": {**full, "rope_theta": float(hp("rope.freq_base", 1_000_000.0))},
            "sliding_attention": {"rope_type": "default",
                                  "rope_theta": float(_field(r, "gemma3.rope.freq_base_swa", LOCAL_ROPE_BASE))},
        },
        "query_pre_attn_scalar": width // heads if n_layers == 62 else head_dim,
        "max_position_embeddings": int(hp("context_length", 131_072)),
        "final_logit_softcapping": None, "attn_logit_softcapping": None, "dtype": "float32",
    }
    return config, tokens


@dataclass(frozen=True)
class GgufHeader:
    """What a Gemma 3 GGUF says of itself without its weights: the Hugging Face config it
    describes, each tensor's stored type, the file type, the special ids and the chat template."""

    path: Path
    config: dict[str, Any]
    tensor_types: dict[str, str]  # GGUF tensor names -> type (F32, Q4_K, ...)
    file_type: int | None
    vocab_size: int
    eos_id: int
    end_of_turn_id: int | None
    add_bos: bool
    chat_template: str | None


def read_gguf_header(path: Path | str) -> GgufHeader:
    """A GGUF's metadata and tensor types (no tensor is read: fast for any size)."""
    from gguf import GGMLQuantizationType

    path = Path(path)
    r = _reader(path)
    config, tokens = _config(r, path)
    return GgufHeader(
        path=path, config=config,
        tensor_types={t.name: GGMLQuantizationType(t.tensor_type).name for t in r.tensors},
        file_type=_field(r, "general.file_type"), vocab_size=len(tokens),
        eos_id=int(_field(r, "tokenizer.ggml.eos_token_id", 1)),
        end_of_turn_id=tokens.index("<end_of_turn>") if "<end_of_turn>" in tokens else None,
        add_bos=bool(_field(r, "tokenizer.ggml.add_bos_token", True)),
        chat_template=_field(r, "tokenizer.chat_template"))


def _tokenizer(r: Any, tokens: list[str]) -> GgufTokenizer:
    """The vocabulary and special ids of a GGUF (llama.cpp's defaults where a key is absent)."""
    types = [int(t) for t in _field(r, "tokenizer.ggml.token_type", [NORMAL] * len(tokens))]
    return GgufTokenizer(
        pieces=tokens, scores=[float(s) for s in _field(r, "tokenizer.ggml.scores", [0.0] * len(tokens))],
        types=types, bos_id=int(_field(r, "tokenizer.ggml.bos_token_id", 2)),
        eos_id=int(_field(r, "tokenizer.ggml.eos_token_id", 1)),
        unk_id=int(_field(r, "tokenizer.ggml.unknown_token_id", 3)),
        pad_id=int(_field(r, "tokenizer.ggml.padding_token_id", 0)),
        add_bos=bool(_field(r, "tokenizer.ggml.add_bos_token", True)),
    )


def _tensors(r: Any, path: Path, n_layers: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor under its Hugging Face name, dequantized to float32 with llama.cpp's norm shift
    undone; and each one's stored type."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    patterns = [(re.compile("^" + re.escape(k).replace(r"\{i\}", r"(\d+)") + "$"), v) for k, v in HF_NAMES.items()]
    tensors: dict[str, np.ndarray] = {}
    stored: dict[str, str] = {}
    for t in r.tensors:
        for pattern, hf in patterns:
            m = pattern.match(t.name)
            if m:
                name = hf.format(i=m.group(1)) if m.groups() else hf
                break
        else:
            raise ModelError(f"{path}: tensor {t.name!r} is not part of a Gemma 3 text model; is this GGUF Gemma 3?")
        qtype = GGMLQuantizationType(t.tensor_type)
        try:
            w = np.asarray(dequantize(t.data, qtype), dtype=np.float32)
        except NotImplementedError:
            raise ModelError(f"{path}: tensor {t.name} is stored as {qtype.name}, which the gguf package cannot "
                             "dequantize; convert the model with another quantization type") from None
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists the fastest dimension first
        if w.shape != shape:
            raise ModelError(f"{path}: tensor {t.name} dequantized to {w.shape}, not {shape}")
        if t.name.endswith("_norm.weight"):
            w = w - np.float32(NORM_SHIFT)
        tensors[name], stored[name] = w, qtype.name
    expected = {hf.format(i=i) for hf in HF_NAMES.values() for i in range(n_layers)}
    missing = sorted(expected - set(tensors))
    if missing:
        raise ModelError(f"{path}: {len(missing)} tensors of a Gemma 3 model are missing, first {missing[0]}")
    return tensors, stored


def sentencepiece_model(tok: GgufTokenizer) -> bytes:
    """The SentencePiece ModelProto (tokenizer.model) of a GGUF's vocabulary."""
    import importlib

    pb: Any = importlib.import_module("sentencepiece.sentencepiece_model_pb2")  # generated code: untyped

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tok.pieces)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id = tok.unk_id, tok.bos_id
    m.trainer_spec.eos_id, m.trainer_spec.pad_id = tok.eos_id, tok.pad_id
    m.trainer_spec.unk_piece, m.trainer_spec.bos_piece = tok.pieces[tok.unk_id], tok.pieces[tok.bos_id]
    m.trainer_spec.eos_piece, m.trainer_spec.pad_piece = tok.pieces[tok.eos_id], tok.pieces[tok.pad_id]
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    specials = {tok.pad_id, tok.eos_id, tok.bos_id}
    first_normal = tok.types.index(NORMAL)
    first_score = tok.scores[first_normal]
    for i, (piece, score, kind) in enumerate(zip(tok.pieces, tok.scores, tok.types, strict=True)):
        p = m.pieces.add()
        p.piece, p.score, p.type = piece, score, kind
        if i == tok.unk_id:
            p.type = UNKNOWN
        elif kind == CONTROL and i not in specials:
            p.type = USER_DEFINED  # <start_of_turn>, <mask>, <unusedN>: matched in text, as every engine does
        elif kind == USER_DEFINED and piece.strip(" ") == "":
            # Runs of spaces: llama.cpp's converter marked them user-defined (Hugging Face's added
            # tokens), but they are ordinary BPE pieces of U+2581s, as transformers' GGUF tokenizer
            # also keeps them (merged, not matched whole). Their file scores tie (-1000);
            # transformers ranks its merges by piece id, the order Gemma's scores follow (score =
            # -(id - first normal id)), so they get the score that order gives them.
            p.type, p.piece, p.score = NORMAL, WHITESPACE * len(piece), float(first_normal + first_score - i)
    return m.SerializeToString()


# GGUF file types (llama.cpp's llama_ftype) and tensor types of `write_gguf`
FILE_TYPES = {"F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7}


def write_gguf(out: Path | str, *, name: str, arch: Any, tensors: dict[str, Any], tokenizer: bytes,
               dtype: str = "F32") -> Path:
    """Write a Gemma 3 text model as a GGUF file the way llama.cpp's converter does (its names,
    RMSNorm weights stored as 1 + w, its metadata keys, the SentencePiece vocabulary as tokens,
    scores and types). `tensors`: the Hugging Face state dict (float32); `tokenizer`: the
    tokenizer.model bytes; `dtype`: F32, F16, BF16 or Q8_0 for the matrices (norms stay F32, as
    llama.cpp keeps 1-D tensors). A folder is written through `models.model_dir_to_gguf`."""
    import importlib

    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    if dtype not in FILE_TYPES:
        raise InputError(f"GGUF type {dtype!r}: choose one of {', '.join(FILE_TYPES)}")
    out = Path(out)
    sd = tensors
    pb: Any = importlib.import_module("sentencepiece.sentencepiece_model_pb2")  # generated code: untyped
    proto = pb.ModelProto()
    proto.ParseFromString(tokenizer)
    spec = proto.trainer_spec

    w = GGUFWriter(str(out), "gemma3")
    w.add_name(name)
    w.add_file_type(FILE_TYPES[dtype])
    w.add_context_length(arch.max_position_embeddings)
    w.add_embedding_length(arch.embed_dim)
    w.add_block_count(arch.num_layers)
    w.add_feed_forward_length(arch.hidden_dim)
    w.add_head_count(arch.num_heads)
    w.add_head_count_kv(arch.num_kv_heads)
    w.add_key_length(arch.head_dim)
    w.add_value_length(arch.head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(arch.rope_global_base)
    if arch.sliding_window is not None:
        w.add_sliding_window(arch.sliding_window)
    if arch.rope_global_scale != 1.0:
        w.add_string("gemma3.rope.scaling.type", "linear")
        w.add_float32("gemma3.rope.scaling.factor", arch.rope_global_scale)
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([p.type for p in proto.pieces])  # SentencePiece's numbering, as llama.cpp's
    w.add_bos_token_id(spec.bos_id)
    w.add_eos_token_id(spec.eos_id)
    w.add_unk_token_id(spec.unk_id)
    w.add_pad_token_id(spec.pad_id)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    to_gguf = {hf: g for g, hf in HF_NAMES.items()}
    pattern = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
    for name in sorted(sd, key=_tensor_order):
        t = np.asarray(sd[name], dtype=np.float32)
        m = pattern.match(name)
        g = (to_gguf["model.layers.{i}." + m.group(2)].format(i=m.group(1)) if m else to_gguf[name])
        if g.endswith("_norm.weight"):
            w.add_tensor(g, t + np.float32(NORM_SHIFT))
        elif dtype in ("F32",):
            w.add_tensor(g, t)
        elif dtype == "F16":
            w.add_tensor(g, t.astype(np.float16))
        else:  # BF16, Q8_0: packed bytes, the logical shape follows from the type
            qtype = GGMLQuantizationType[dtype]
            w.add_tensor(g, quantize(t, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _tensor_order(name: str) -> tuple[int, str]:
    m = re.match(r"^model\.layers\.(\d+)\.", name)
    return (int(m.group(1)) + 1 if m else 0, name)
