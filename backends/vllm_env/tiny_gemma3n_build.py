"""Helper run by the vLLM environment's interpreter (never imported by the harness): writes a
random-weight Gemma 3n (`Gemma3nForConditionalGeneration`: text + vision + audio) as a Hugging Face
folder. tiny-gemma3n keeps its vision and audio towers, processor and tokenizer files; its text
model is replaced by the gemma library's weights (`backends.models`: one set of text weights for
both engines, converted by `gemma3n_write_hf_dir`).

    .venv-vllm/bin/python backends/vllm_env/tiny_gemma3n_build.py OUT_DIR TOKENIZER_MODEL

TOKENIZER_MODEL is the project's tiny SentencePiece model with Gemma 3n's multimodal pieces
(`backends.models.gemma3n_tokenizer`). It needs this environment because the vision tower is a
timm MobileNetV5 (transformers builds it through timm) and the harness environment has neither
timm nor its torchvision. Everything comes from a fixed seed: the same inputs and package
versions give the same bytes. Prints one JSON line describing the model.

Token layout, as in the released Gemma 3n (text ids [0, V), vision ids [V, V+128), audio ids
[V+128, V+256), V = the SentencePiece vocabulary):

    <start_of_image>, <start_of_audio>   two of the text range's <unusedN> pieces, renamed
    V       <end_of_image>      V+1     <image_soft_token>   V+2..V+127    <vision_unusedN>
    V+128   <end_of_audio>      V+129   <audio_soft_token>   V+130..V+255  <audio_unusedN>

Model: a placeholder text model of 4 layers (replaced, see above), vision timm
`mobilenetv5_300m_enc` at channel_multiplier 0.125 (the smallest width timm offers, ~16M
parameters) with a 4x4 MSFA output: a 128x128 image gives 16 soft tokens; audio a 2-layer
conformer (hidden 64) with 32 soft tokens per clip (vLLM pads shorter clips' encodings to 32).
transformers initialises some tensors (projections, norms) to zero, which would make every image
and clip look alike; every all-zero tensor gets seeded noise. The token embedding (tied to the
output layer) is multiplied by 6 so next-token distributions are peaked, as in `backends.tiny`.

The chat template is the project's Gemma 3 template (`CHAT_TEMPLATE` in backends/models/_tokenizer.py,
read from the package source, not imported) with Gemma 3n's placeholders: images render
as <image_soft_token>, audio as <audio_soft_token>; the processor expands each into
"\\n\\n<start_of_X>" + N soft tokens + "<end_of_X>\\n\\n".
"""

from __future__ import annotations

import ast
import json
import random
import sys
import tempfile
from pathlib import Path

SEED = 0
IMAGE_SIZE = 128
VISION_TOKENS = 16
AUDIO_TOKENS = 32
MAX_POSITIONS = 4096
MM_RANGE = 128  # ids per modality after the text vocabulary
SHARPEN = 6.0  # as backends.tiny's recipes: peaked next-token distributions, as in trained models
NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
BOA, EOA, AUDIO = "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"

_GEMMA3_IMAGE_ITEM = "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
_GEMMA3N_MEDIA_ITEMS = ("{%- if item['type'] == 'image' -%}{{ '<image_soft_token>' }}"
                        "{%- elif item['type'] == 'audio' -%}{{ '<audio_soft_token>' }}")


def fail(msg: str) -> None:
    print(f"tiny_gemma3n_build: {msg}", file=sys.stderr)
    raise SystemExit(2)


def chat_template() -> str:
    """The project's Gemma 3 template with Gemma 3n's image and audio placeholders."""
    src = Path(__file__).resolve().parent.parent / "models" / "_tokenizer.py"
    for node in ast.parse(src.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CHAT_TEMPLATE" for t in node.targets):
            template = ast.literal_eval(node.value)
            break
    else:
        fail(f"no CHAT_TEMPLATE string in {src}")
    if template.count(_GEMMA3_IMAGE_ITEM) != 1:
        fail(f"the chat template in {src} has no single image item {_GEMMA3_IMAGE_ITEM!r} to adapt")
    return template.replace(_GEMMA3_IMAGE_ITEM, _GEMMA3N_MEDIA_ITEMS)


def text_vocab(spm_bytes: bytes) -> int:
    """V, the number of text pieces of a Gemma 3n tokenizer (the id of <end_of_image>)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(spm_bytes)
    names = [p.piece for p in proto.pieces]
    missing = [t for t in (BOI, EOI, IMAGE, BOA, EOA, AUDIO) if t not in names]
    if missing:
        fail(f"the tokenizer lacks Gemma 3n's pieces {missing}; give backends.models' gemma3n_tokenizer() output")
    return names.index(EOI)


def make_tokenizer(spm_bytes: bytes, template: str):
    from transformers import GemmaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(spm_bytes)
        tok = GemmaTokenizer.from_pretrained(
            tmp, add_bos_token=True, add_eos_token=False, model_max_length=MAX_POSITIONS,
            extra_special_tokens={
                "sot_token": "<start_of_turn>", "eot_token": "<end_of_turn>",
                "boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE,
                "boa_token": BOA, "eoa_token": EOA, "audio_token": AUDIO,
            },
        )
    tok.chat_template = template
    return tok


def tidy_tokenizer_config(out: Path) -> None:
    """No source path or load-time state (offline mode) in tokenizer_config.json; "\\n" pieces
    are not special tokens (else `skip_special_tokens` drops newlines from decoded text)."""
    p = out / "tokenizer_config.json"
    tc = json.loads(p.read_text())
    for key in ("vocab_file", "is_local", "local_files_only"):
        tc.pop(key, None)
    for key in ("extra_special_tokens", "additional_special_tokens"):
        if isinstance(tc.get(key), list):
            tc[key] = [t for t in tc[key] if t not in NEWLINES]
    p.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")


def randomize_zero_tensors(model, std: float = 0.05) -> None:
    import torch

    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def configs(tok, v: int):
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in (BOI, EOI, IMAGE, BOA, EOA, AUDIO)}
    want = {EOI: v, IMAGE: v + 1, EOA: v + MM_RANGE, AUDIO: v + MM_RANGE + 1}
    if any(ids[t] != i for t, i in want.items()) or max(ids[BOI], ids[BOA]) >= v:
        fail(f"multimodal tokens landed at {ids}, expected {want} and <start_of_*> below {v}")
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    text = Gemma3nTextConfig(
        vocab_size=v + 2 * MM_RANGE, vocab_size_per_layer_input=v,
        hidden_size=64, hidden_size_per_layer_input=16, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=32,  # vLLM CPU: head 32+
        sliding_window=32, layer_types=["sliding_attention", "full_attention"] * 2,
        num_kv_shared_layers=2, laurel_rank=8, altup_num_inputs=4,
        activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0],
        max_position_embeddings=MAX_POSITIONS, final_logit_softcapping=30.0,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=eos,
    )
    vision = Gemma3nVisionConfig(
        architecture="mobilenetv5_300m_enc",
        model_args={"channel_multiplier": 0.125, "msfa_output_resolution": 4},  # 4x4 = 16 soft tokens
        hidden_size=2048, vocab_size=MM_RANGE, vocab_offset=v, do_pooling=False,
    )
    audio = Gemma3nAudioConfig(
        vocab_size=MM_RANGE, vocab_offset=v + MM_RANGE, input_feat_size=128, hidden_size=64,
        conf_num_attention_heads=2, conf_num_hidden_layers=2, sscp_conv_channel_size=[16, 8],
    )
    cfg = Gemma3nConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), audio_config=audio.to_dict(),
        vision_soft_tokens_per_image=VISION_TOKENS, audio_soft_tokens_per_image=AUDIO_TOKENS,
        boi_token_id=ids[BOI], eoi_token_id=ids[EOI], image_token_id=ids[IMAGE],
        boa_token_id=ids[BOA], eoa_token_id=ids[EOA], audio_token_id=ids[AUDIO],
        dtype="float32",
    )
    return cfg, ids, eos


def check(out: Path, model, ids: dict[str, int]) -> dict:
    """Reload the folder as vLLM does (AutoProcessor) and run the model on an image and a clip;
    two different images must give different logits (no all-zero projection left)."""
    import numpy as np
    import torch
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(out)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "audio"}, {"type": "text", "text": "Describe."}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    rng = np.random.default_rng(SEED)
    logits = []
    for _ in range(2):
        img = rng.integers(0, 256, size=(96, 72, 3), dtype=np.uint8)
        inp = proc(text=prompt, images=[img], audio=[clip], return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inp).logits[0, -1])
    got = inp["input_ids"][0].tolist()
    if got.count(ids[IMAGE]) != VISION_TOKENS or got.count(ids[AUDIO]) != AUDIO_TOKENS:
        fail(f"the processor expanded to {got.count(ids[IMAGE])} image / {got.count(ids[AUDIO])} audio soft tokens, "
             f"expected {VISION_TOKENS} / {AUDIO_TOKENS}")
    diff = float((logits[0] - logits[1]).abs().max())
    if diff < 1e-4:
        fail(f"two different images give the same logits (max |d| {diff:.2g}): the image path is dead")
    return {"prompt_len": len(got), "image_logit_diff": round(diff, 4),
            "pixel_values": list(inp["pixel_values"].shape), "input_features": list(inp["input_features"].shape)}


def main(out_dir: str, spm_path: str) -> None:
    import numpy as np
    import torch
    import transformers
    from transformers import (Gemma3nAudioFeatureExtractor, Gemma3nForConditionalGeneration, Gemma3nProcessor,
                              GenerationConfig, SiglipImageProcessor)

    out = Path(out_dir)
    try:
        spm_bytes = Path(spm_path).read_bytes()
    except OSError as e:
        fail(f"cannot read the tokenizer {spm_path}: {e.strerror}")
    if out.exists() and any(out.iterdir()):
        fail(f"{out} is not empty; give a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    transformers.set_seed(SEED)

    template = chat_template()
    spm3n, v = spm_bytes, text_vocab(spm_bytes)
    tok = make_tokenizer(spm3n, template)
    cfg, ids, eos = configs(tok, v)

    torch.manual_seed(SEED)
    model = Gemma3nForConditionalGeneration(cfg).to(torch.float32).eval()
    randomize_zero_tensors(model)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SHARPEN)  # tied to the output projection
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                                               eos_token_id=eos)
    model.save_pretrained(out, safe_serialization=True)

    processor = Gemma3nProcessor(
        feature_extractor=Gemma3nAudioFeatureExtractor(),
        image_processor=SiglipImageProcessor(
            size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            do_resize=True, do_rescale=True, do_normalize=True, resample=2,
        ),
        tokenizer=tok, chat_template=template,
        audio_seq_length=AUDIO_TOKENS, image_seq_length=VISION_TOKENS,
    )
    processor.save_pretrained(out)
    (out / "tokenizer.model").write_bytes(spm3n)
    tidy_tokenizer_config(out)

    summary = {
        "params": sum(p.numel() for p in model.parameters()),
        "params_by_part": {part: sum(p.numel() for n, p in model.named_parameters() if f".{part}." in f".{n}")
                           for part in ("language_model", "vision_tower", "audio_tower", "embed_vision", "embed_audio")},
        "text_vocab": v, "vocab_size": cfg.text_config.vocab_size, "ids": ids,
        "image_soft_tokens": VISION_TOKENS, "audio_soft_tokens": AUDIO_TOKENS,
        **check(out, model, ids),
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        raise SystemExit(2)
    main(sys.argv[1], sys.argv[2])
