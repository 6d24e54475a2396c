"""Gemma tokenizers: the embedded tiny SentencePiece model, the chat template, HF tokenizer files.

The tiny tokenizer is trained on `data/tokenizer_corpus.txt` (shipped in the repository) with
Gemma 3's special-token layout, so the gemma library's stock `Gemma3Tokenizer` and the Hugging
Face `GemmaTokenizer` that vLLM loads both read it unchanged:

    0 <pad>  1 <eos>  2 <bos>  3 <unk>  4 <mask>  5 [multimodal]  6..104 <unused0..98>
    105 <start_of_turn>  106 <end_of_turn>  107 "\\n"  108 "\\n\\n"  109 "\\n\\n\\n"  110 "\\n\\n\\n\\n"
    then byte-fallback and BPE pieces.

The vision variant pads the vocabulary to 262144 pieces, because the gemma library hard-codes
<start_of_image> = 255999 and <end_of_image> = 256000, and puts <image_soft_token> at 262143.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

from . import _arch

CORPUS = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
FULL_VOCAB = 262_144
IMAGE_SOFT_TOKEN = "<image_soft_token>"
NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")

# The Gemma 3 chat template (logic of google/gemma-3-*-it): an optional system message is
# prefixed to the first user turn, the assistant role is called "model", text is trimmed and
# images render as <start_of_image>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def train_tiny(vocab_size: int = 1024, *, full: bool = False) -> bytes:
    """Train the tiny Gemma-layout SentencePiece model; deterministic for a given corpus."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    # generated protobuf module: its classes are made at import time, so mypy cannot see them
    ModelProto = pb.ModelProto  # type: ignore[attr-defined]

    lines = [ln for ln in CORPUS.read_text(encoding="utf-8").splitlines() if ln.strip()]
    user_defined = (
        ["<mask>", "[multimodal]"] + [f"<unused{i}>" for i in range(99)]
        + ["<start_of_turn>", "<end_of_turn>", *NEWLINES]
    )
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=user_defined, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2,
    )
    proto = ModelProto()
    proto.ParseFromString(buf.getvalue())
    assert proto.pieces[_arch.START_OF_TURN].piece == "<start_of_turn>", "special-token layout broke"
    assert proto.pieces[108].piece == "\n\n"
    if full:
        unused = ModelProto.SentencePiece.Type.UNUSED
        user = ModelProto.SentencePiece.Type.USER_DEFINED
        k = 99

        def filler():
            nonlocal k
            k += 1
            return ModelProto.SentencePiece(piece=f"<unused{k - 1}>", score=0.0, type=unused)

        while len(proto.pieces) < _arch.START_OF_IMAGE:
            proto.pieces.append(filler())
        for piece in ("<start_of_image>", "<end_of_image>"):
            proto.pieces.append(ModelProto.SentencePiece(piece=piece, score=0.0, type=user))
        while len(proto.pieces) < FULL_VOCAB - 1:
            proto.pieces.append(filler())
        proto.pieces.append(ModelProto.SentencePiece(piece=IMAGE_SOFT_TOKEN, score=0.0, type=user))
    return proto.SerializeToString()


# Gemma 3n's multimodal pieces, as in the released tokenizer: text ids [0, V), vision ids
# [V, V+128), audio ids [V+128, V+256); <start_of_image>/<start_of_audio> are text pieces.
GEMMA3N_MM_RANGE = 128
GEMMA3N_BOI, GEMMA3N_BOA = "<start_of_image>", "<start_of_audio>"
GEMMA3N_EXTRA = (["<end_of_image>", "<image_soft_token>"] + [f"<vision_unused{i}>" for i in range(GEMMA3N_MM_RANGE - 2)]
                 + ["<end_of_audio>", "<audio_soft_token>"] + [f"<audio_unused{i}>" for i in range(GEMMA3N_MM_RANGE - 2)])


def gemma3n_tokenizer(spm_bytes: bytes) -> tuple[bytes, int]:
    """A plain tiny tokenizer with Gemma 3n's multimodal pieces: the two highest <unusedN> pieces
    become <start_of_image> and <start_of_audio>, and 256 vision/audio pieces are appended.
    Returns the new model and V, the number of text pieces."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    ModelProto = pb.ModelProto  # type: ignore[attr-defined]
    proto = ModelProto()
    proto.ParseFromString(spm_bytes)
    names = [p.piece for p in proto.pieces]
    unused = sorted((i for i, n in enumerate(names) if n.startswith("<unused")),
                    key=lambda i: int(names[i][len("<unused"):-1]))
    if GEMMA3N_BOI in names or len(unused) < 2:
        raise ValueError("give the project's plain tiny tokenizer (train_tiny()): it has Gemma 3n pieces already "
                         "or fewer than two <unusedN> pieces")
    proto.pieces[unused[-2]].piece = GEMMA3N_BOI
    proto.pieces[unused[-1]].piece = GEMMA3N_BOA
    v = len(proto.pieces)
    for piece in GEMMA3N_EXTRA:
        proto.pieces.append(ModelProto.SentencePiece(piece=piece, score=0.0,
                                                     type=ModelProto.SentencePiece.USER_DEFINED))
    return proto.SerializeToString(), v


def piece_id(spm_path: Path, piece: str) -> int | None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    i = sp.PieceToId(piece)
    return None if i == sp.unk_id() and piece != "<unk>" else i


def vocab_size(spm_path: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_path)).GetPieceSize()


def write_hf_tokenizer(spm_path: Path, out_dir: Path, arch: _arch.GemmaArch, *, chat: bool = True) -> None:
    """Write tokenizer.model, tokenizer.json, tokenizer_config.json and chat_template.jinja (not
    for a base model without a chat template: `chat=False`).

    The fast tokenizer is converted from the same SentencePiece model by transformers (no torch
    needed). "\\n"-pieces are kept out of the special-token set, or `skip_special_tokens` would
    drop newlines from decoded text.
    """
    from transformers import GemmaTokenizer

    out_dir = Path(out_dir)
    extra = {"sot_token": "<start_of_turn>", "eot_token": "<end_of_turn>"}
    image_id = arch.hf_image_token_id
    if arch.vision is not None:
        extra.update(boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token=IMAGE_SOFT_TOKEN)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm_path, Path(tmp) / "tokenizer.model")
        tok = GemmaTokenizer.from_pretrained(
            tmp, add_bos_token=True, add_eos_token=False, model_max_length=arch.max_position_embeddings,
            extra_special_tokens=extra,
        )
        if arch.vision is not None and piece_id(spm_path, IMAGE_SOFT_TOKEN) is None:
            tok.add_special_tokens({"additional_special_tokens": [IMAGE_SOFT_TOKEN]})
            got = tok.convert_tokens_to_ids(IMAGE_SOFT_TOKEN)
            if got != image_id:
                raise RuntimeError(f"image token landed at {got}, expected {image_id}")
        if chat:
            tok.chat_template = CHAT_TEMPLATE
        tok.save_pretrained(out_dir)
    shutil.copy(spm_path, out_dir / "tokenizer.model")
    p = out_dir / "tokenizer_config.json"
    tc = json.loads(p.read_text())
    tc.pop("vocab_file", None)
    for key in ("extra_special_tokens", "additional_special_tokens"):
        if isinstance(tc.get(key), list):
            tc[key] = [t for t in tc[key] if t not in NEWLINES]
    p.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")


def render_prompt(request) -> str:
    """What an engine of the gemma library tokenizes (after BOS) for `request`: a plain-text prompt
    as it is, a chat through Gemma's chat template (`render_chat`)."""
    return request.text if request.text is not None else render_chat(request)


def render_chat(request) -> str:
    """The Gemma 3 chat prompt for `request` as text, without BOS (the tokenizer adds it).

    The same logic as `CHAT_TEMPLATE` (which the Hugging Face folder carries for vLLM), so both
    backends see the same prompt; the prompt-token parity check verifies it on every run.
    """
    from .._types import ImagePart, TextPart

    msgs = list(request.messages)
    prefix = ""
    if msgs[0].role == "system":
        first = msgs[0].content[0]
        prefix = (first.text if isinstance(first, TextPart) else "") + "\n\n"
        msgs = msgs[1:]
    out = []
    for i, m in enumerate(msgs):
        role = "model" if m.role == "assistant" else m.role
        out.append(f"<start_of_turn>{role}\n" + (prefix if i == 0 else ""))
        for part in m.content:
            if isinstance(part, ImagePart):
                out.append("<start_of_image>")
            elif isinstance(part, TextPart):
                out.append(part.text.strip())
        out.append("<end_of_turn>\n")
    out.append("<start_of_turn>model\n")
    return "".join(out)
