"""Bad input gets one clear line naming the thing and what to do (CLI: exit code 2, no traceback)."""

import shutil
import subprocess
import sys

import pytest

import backends
from backends import ModelError


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env)


def _one_line_error(p, *needles):
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_checkpoint_folder(tmp_path, tiny_text_dir):
    d = tmp_path / "m"
    shutil.copytree(tiny_text_dir, d, ignore=shutil.ignore_patterns("params", "hf"))
    with pytest.raises(ModelError, match=f"checkpoint folder not found: {d / 'params'}"):
        backends.get("jax", model=str(d))


def test_missing_model_folder():
    with pytest.raises(ModelError, match="model folder not found: /nonexistent/model"):
        backends.get("jax", model="/nonexistent/model")


def test_tokenizer_that_does_not_fit(tiny_text_dir, tiny_vision_dir):
    # the 262144-piece vision tokenizer cannot index the text model's 1024-row embedding
    with pytest.raises(ModelError, match=r"has 262144 pieces but the model's embedding has 1024 rows"):
        backends.get("jax", model=str(tiny_text_dir), tokenizer=tiny_vision_dir / "tokenizer.model")


def test_tokenizer_without_gemma_layout(tmp_path, tiny_text_dir):
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 50 + ["abc def"] * 50), model_writer=buf,
                                   vocab_size=200, hard_vocab_limit=False, minloglevel=2)
    (tmp_path / "t.model").write_bytes(buf.getvalue())
    with pytest.raises(ModelError, match="special tokens at ids 0, 1, 2, 105, 106"):
        backends.get("jax", model=str(tiny_text_dir), tokenizer=tmp_path / "t.model")


def test_unknown_model_name_cli():
    _one_line_error(_cli("models", "build", "gemma-9"), "no model recipe 'gemma-9'", "random-gemma-3-270m")
    _one_line_error(_cli("models", "build", "gemma-3-4b-it", "--random-weights"),
                    "no random-weight build of gemma-3-4b-it's architecture", "gemma-3-1b-it (random-gemma-3-1b)")


def test_unknown_backend():
    with pytest.raises(backends.InputError, match="unknown engine 'tpu'; choose one of: vllm, jax, hf"):
        backends.get("tpu", model="tiny-gemma3")


def test_convert_refuses_existing_destination(tmp_path, tiny_text_dir):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    _one_line_error(_cli("convert", "--to", "hf", str(tiny_text_dir), str(tmp_path / "x")), "already exists", "--force")
    assert (tmp_path / "x" / "f").read_text() == "keep me"


def test_convert_non_gemma_hf_config(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "llama"}')
    _one_line_error(_cli("convert", "--to", "gemma", str(tmp_path / "hf"), str(tmp_path / "out")),
                    "config.json", "'llama' is not Gemma 3")


def test_image_to_text_model_is_refused_when_scoring(jax_text):
    import numpy as np

    from backends import ImagePart, Request, UnsupportedError

    req = Request(messages=[{"role": "user", "content": [ImagePart(array=np.zeros((8, 8, 3), np.uint8))]}])
    with pytest.raises(UnsupportedError, match="image input"):
        jax_text.score([req], [[5]])


def test_unreadable_image_names_file(tmp_path):
    from backends import ImagePart, InputError

    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(InputError, match="cannot read image .*broken.png"):
        ImagePart(path=p).to_rgb_array()
