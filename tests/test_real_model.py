"""The real trained model (gemma-3-270m: google/gemma-3-270m as llama.cpp's Q4_K_M GGUF from the
package index) and the GGUF importer, checked against transformers' own GGUF loader and tokenizer,
on the real file and on GGUFs written from the project's tiny model; bad GGUFs get one line each."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli_in_process

CORPUS = Path(__file__).parent / "data" / "tokenizer_check_corpus.txt"
pytestmark = pytest.mark.slow


def corpus_lines() -> list[str]:
    """The tokenizer corpus (scripts/make_tokenizer_check_corpus.py): one text per line, with
    \\n, \\t and \\\\ escaped."""
    out = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        text, i = [], 0
        while i < len(line):
            if line[i] == "\\" and i + 1 < len(line):
                text.append({"n": "\n", "t": "\t", "\\": "\\"}[line[i + 1]])
                i += 2
            else:
                text.append(line[i])
                i += 1
        out.append("".join(text))
    return out


@pytest.fixture(scope="module")
def real_dir():
    """The registry model's imported folder (imported once per machine, then cached)."""
    from backends import models

    return models.resolve("gemma-3-270m", want="gemma").gemma_dir


@pytest.fixture(scope="module")
def real_gguf(real_dir):
    from backends.models import _real, get_spec

    return _real.gguf_file(get_spec("gemma-3-270m"))


@pytest.fixture(scope="module")
def theirs(real_gguf):
    """transformers' model and tokenizer of the real file, read once for the module."""
    return transformers_gguf(real_gguf)


def transformers_gguf(path: Path):
    """transformers' own GGUF loader and tokenizer (needs gguf and accelerate): the independent check."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def test_corpus_is_the_issue_s_size_and_kinds():
    lines = corpus_lines()
    assert len(lines) >= 2000
    text = "".join(lines)
    assert "Москва" in text and "def " in text and "🏳️‍🌈" in text and "\t\t" in text and " " * 33 in text
    assert any("\U00012000" <= c <= "\U00012399" for c in text)  # cuneiform, an astral plane
    assert lines == [ln for ln in lines if ln]  # no empty text


def test_real_import_is_transformers_weights_bit_for_bit(real_dir, theirs):
    """Every tensor the engines load (the Hugging Face twin; the gemma params are the same arrays
    reshaped) equals transformers' dequantization of the same file, bit for bit."""
    from safetensors.numpy import load_file

    model, _ = theirs
    tensors = {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ours = load_file(str(real_dir / "hf" / "model.safetensors"))
    assert set(ours) == set(tensors)
    differ = [k for k in ours if ours[k].dtype != np.float32 or not np.array_equal(ours[k], tensors[k])]
    assert not differ, differ[:5]
    cfg = json.loads((real_dir / "hf" / "config.json").read_text())
    tc = model.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "sliding_window", "layer_types", "query_pre_attn_scalar", "vocab_size"):
        assert cfg[key] == getattr(tc, key), key
    assert cfg["rms_norm_eps"] == pytest.approx(tc.rms_norm_eps, rel=1e-7)  # the file holds it as float32
    assert cfg["rope_parameters"]["sliding_attention"]["rope_theta"] == 10_000.0
    assert cfg["rope_parameters"]["full_attention"]["rope_theta"] == 1_000_000.0
    assert "chat_template" not in json.loads((real_dir / "hf" / "tokenizer_config.json").read_text())


def test_the_import_is_the_gemma_library_s_270m(real_dir):
    """The architecture read from the GGUF is gm.nn.Gemma3_270M's (the registry's gemma class)."""
    from backends import models

    spec = models.get_spec("gemma-3-270m")
    want = models.GemmaArch.from_gemma_config(models.real_model(spec).config, max_position_embeddings=spec.max_model_len)
    got = models.read_card(real_dir).arch
    assert got.model_dump(exclude={"dtype"}) == want.model_dump(exclude={"dtype"})
    assert got.dtype == "float32" and models.read_card(real_dir).chat is False


def test_real_tokenizer_gives_transformers_ids_on_the_corpus(real_dir, theirs):
    """The rebuilt SentencePiece model (what the gemma library uses) and the Hugging Face folder's
    tokenizer (what vLLM and transformers use) give transformers' GGUF tokenizer's ids on every
    line; both add the BOS the file asks for (add_bos_token true), which transformers' GGUF
    tokenizer leaves out."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    _, tok = theirs
    sp = spm.SentencePieceProcessor(model_file=str(real_dir / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(real_dir / "hf")
    lines = corpus_lines()
    bad_sp, bad_hf = [], []
    for line in lines:
        want = tok(line, add_special_tokens=False)["input_ids"]
        if sp.encode(line) != want:
            bad_sp.append(line)
        if hf(line)["input_ids"] != [2, *want]:
            bad_hf.append(line)
    assert not bad_sp, (len(bad_sp), bad_sp[:3])
    assert not bad_hf, (len(bad_hf), bad_hf[:3])
    assert tok("The capital")["input_ids"][0] != 2  # transformers' GGUF tokenizer: no BOS


def test_gguf_round_trip_of_a_model_of_our_own(tiny_text_dir, tmp_path):
    """tiny-gemma3 written as GGUF the way llama.cpp's converter writes Gemma 3 (F32, BF16, Q8_0)
    and imported back: the same architecture (its linear RoPE scaling included), the matrices bit
    for bit at F32, the norms within float32's rounding of the stored 1 + w, the quantized types
    within their step; transformers' GGUF loader reads the F32 file to the same tensors."""
    from safetensors.numpy import load_file

    from backends import models
    from backends.models import _checkpoint as ck
    from backends.models import model_dir_to_gguf as write_gguf

    want = ck.flat_tree(ck.load_params(tiny_text_dir / ck.PARAMS))
    for dtype, bound in (("F32", 0.0), ("BF16", 2e-2), ("Q8_0", 2e-2)):
        gguf = write_gguf(tiny_text_dir, tmp_path / f"tiny-{dtype}.gguf", dtype=dtype)
        p = cli_in_process("convert", "--from", "gguf", gguf, tmp_path / f"imported-{dtype}")
        assert p.returncode == 0, p.stderr
        out = tmp_path / f"imported-{dtype}"
        assert ck.read_card(out).arch == ck.read_card(tiny_text_dir).arch
        got = ck.flat_tree(ck.load_params(out / ck.PARAMS))
        for name, w in want.items():
            d = float(np.max(np.abs(got[name] - w)))
            if name.endswith("/scale"):  # stored as 1 + w in float32: w comes back within its rounding
                assert d <= float(np.max(np.spacing(np.float32(1) + np.abs(w)))), name
            else:
                assert d <= bound * float(np.max(np.abs(w))), (dtype, name, d)
        if dtype == "F32":
            model, _ = transformers_gguf(gguf)
            ours = load_file(str(out / "hf" / "model.safetensors"))
            theirs = {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
            assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert models.resolve(str(tmp_path / "imported-F32"), want="hf").hf_dir == tmp_path / "imported-F32" / "hf"


def test_tiny_gguf_tokenizer_gives_transformers_ids(tiny_text_dir, tmp_path):
    """On a vocabulary the project trained itself (no Gemma special layout beyond its own), the
    tokenizer rebuilt from the GGUF gives transformers' GGUF tokenizer's ids too."""
    import sentencepiece as spm

    from backends.models import model_dir_to_gguf as write_gguf
    from backends.models._gguf import read_gguf, sentencepiece_model

    gguf = write_gguf(tiny_text_dir, tmp_path / "tiny.gguf")
    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model(read_gguf(gguf).tokenizer))
    _, theirs = transformers_gguf(gguf)
    lines = corpus_lines()[::4]
    bad = [ln for ln in lines if sp.encode(ln) != theirs(ln, add_special_tokens=False)["input_ids"]]
    assert not bad, (len(bad), bad[:3])


def _patched(src: Path, dst: Path, old: bytes, new: bytes, count: int = -1) -> Path:
    data = src.read_bytes()
    assert old in data and len(old) == len(new)
    dst.write_bytes(data.replace(old, new, count if count > 0 else data.count(old)))
    return dst


def test_bad_ggufs_get_one_line_and_leave_nothing(tiny_text_dir, tmp_path):
    from backends.models import model_dir_to_gguf as write_gguf

    good = write_gguf(tiny_text_dir, tmp_path / "good.gguf")
    data = good.read_bytes()
    cases = {}
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    cases["truncated"] = ([truncated], "not a readable GGUF file")
    cases["altered"] = ([good, "--sha256", "0" * 64], "is not the expected")
    cases["not gemma 3"] = ([_patched(good, tmp_path / "llama.gguf", b"gemma3", b"llama3")],
                            "general.architecture is 'llama3', not 'gemma3'")
    cases["no tokenizer"] = ([_patched(good, tmp_path / "notok.gguf", b"tokenizer.ggml.tokens", b"tokenizer.ggml.tokenz")],
                             "has no tokenizer")
    # one matrix stored as I32 (4 bytes an element, as F32): a type the gguf package does not
    # dequantize. A tensor info: name (u64 length, bytes), n_dims (u32), dims (u64 each), type (u32).
    name = b"blk.0.attn_q.weight"
    at = data.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    type_at = at + 4 + 8 * int.from_bytes(data[at:at + 4], "little")
    raw = bytearray(data)
    assert int.from_bytes(raw[type_at:type_at + 4], "little") == 0  # F32
    raw[type_at:type_at + 4] = (26).to_bytes(4, "little")  # GGML_TYPE_I32
    (tmp_path / "i32.gguf").write_bytes(bytes(raw))
    cases["undequantizable"] = ([tmp_path / "i32.gguf"], "stored as I32, which the gguf package cannot dequantize")
    for what, (args, message) in cases.items():
        dst = tmp_path / f"out-{what.replace(' ', '-')}"
        p = cli_in_process("convert", "--from", "gguf", *args, dst)
        assert p.returncode != 0, what
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in p.stderr, (what, p.stderr)
        assert not dst.exists() and not list(tmp_path.glob(f".{dst.name}.tmp-*")), what


def test_a_registry_model_whose_file_does_not_match_leaves_nothing(tmp_path, monkeypatch):
    """A packaged model whose assembled file has another hash than the registry's: one line, and
    neither the file nor a model folder stays in the cache."""
    from backends import ModelError
    from backends.models import _real, get_spec

    monkeypatch.setenv("PARITYBENCH_CACHE", str(tmp_path))
    spec = dataclasses.replace(get_spec("gemma-3-270m"), gguf_sha256="0" * 64)
    with pytest.raises(ModelError, match="has sha256 a5fd3b62.*not the registry's 0000") as e:
        _real.ensure(spec)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "gguf").iterdir())
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f"{_real.model_dir(spec).name}.lock"]


def test_compare_on_the_real_model_writes_language(tmp_path):
    """The issue's command: vLLM and JAX on the real model's text suite, float32. Plain-text
    prompts pass with the same greedy text, which reads as language; chat prompts are refused by
    both sides (a base model has no chat template), with that reason. With --quality (a cut of
    the corpus and of the multiple-choice suite): the same perplexity and choices on both sides,
    accuracy far above chance."""
    out = tmp_path / "real"
    # quality on a cut of the inputs (the whole corpus and 113 items: about 45 s a side)
    items = (Path("evals/quality/knowledge.yaml").read_text().split("\n  - id: ")[:17])
    (tmp_path / "mc.yaml").write_text("\n  - id: ".join(items) + "\n")
    (tmp_path / "config.yaml").write_text(json.dumps({"quality": {
        "enabled": True, "corpora": ["evals/quality/english.txt"], "suite": str(tmp_path / "mc.yaml")}}))
    p = cli_in_process("compare", "--config", tmp_path / "config.yaml", "--model", "gemma-3-270m", "--suite",
                       "evals/text.yaml", "--no-bench", "--out", out,
                       env={"PARITYBENCH_VLLM_CPU_KV_CACHE_GIB": "0.5"})  # its 32768 positions: 0.26 GiB
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = {r["id"]: r for r in results["parity"]["prompts"]}
    plain = [r for i, r in rows.items() if i.startswith("plain-")]
    assert len(plain) >= 6 and all(r["verdict"] == "pass" and r["text_equal"] and r["prompt_ids_equal"] for r in plain)
    ids = rows["plain-capital"]["a"]["prompt_ids"]  # exactly BOS + the text, on both sides (prompt_ids_equal)
    assert ids[0] == 2 and 2 not in ids[1:] and len(ids) == 10
    assert "Paris" in rows["plain-capital"]["a"]["text"]
    assert "Санкт-Петербург" in rows["plain-ru"]["a"]["text"] or "Москва" in rows["plain-ru"]["a"]["text"]
    assert "return" in rows["plain-code"]["a"]["text"]
    chat = [r for i, r in rows.items() if not i.startswith("plain-")]
    assert chat and all(r["verdict"] == "unsupported" and "no chat template" in r["reasons"][0] for r in chat)
    q = results["quality"]
    assert q["vllm"]["accuracy"]["items"] == 16 and q["vllm"]["accuracy"]["acc"] >= 0.75  # chance: 25 %
    assert q["jax"]["verdict"] == "pass" and q["jax"]["same_choice"] == 1.0
    assert abs(q["jax"]["perplexity_ratio"]["english"] - 1) < 1e-3 and q["vllm"]["perplexity"][0]["perplexity"] < 10
    scored = {r["id"]: r for r in results["scores"]["prompts"]}
    assert all(scored[i]["vllm"] and scored[i]["jax"] for i in ("plain-capital", "plain-gold", "plain-opposite"))
