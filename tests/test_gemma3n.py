"""Gemma 3n on the gemma library and transformers from one set of weights: the converter both ways,
text parity, and the four differences by design named from the sides' settings (each planted on a
tiny model of its own and confirmed by a re-score), and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_in_process, variant

import backends
from backends import InputError, ModelError, Request, SamplingParams, UnsupportedError, models
from harness import parity

PROMPTS = ["Tell me about the sea.", "What is two plus two?", "Write one line about a cat.",
           "The quick brown fox jumps over the lazy dog while the river runs past the old mill."]


def text_requests() -> list[Request]:
    return [Request.from_text(t, id=f"p{i}") for i, t in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def g3n_dir():
    return models.ensure_tiny("tiny-gemma3n")


@pytest.fixture(scope="module")
def jax3n(g3n_dir):
    with backends.get("jax", model="tiny-gemma3n") as b:
        yield b


@pytest.fixture(scope="module")
def hf3n(g3n_dir):
    with backends.get("hf", model="tiny-gemma3n") as b:
        yield b


def hf_of(tmp_path: Path, gemma_dir: Path, towers: Path) -> Path:
    return models.gemma_dir_to_hf(gemma_dir, tmp_path / (gemma_dir.name + "-hf"), towers=towers).path


def causes(report) -> set[str]:
    return {c.name for p in report.prompts for c in p.causes if c.explains}


# ---------------------------------------------------------------- one set of weights, both formats


def test_round_trip_gemma_hf_gemma_is_bit_exact(tmp_path, g3n_dir):
    hf = models.gemma_dir_to_hf(g3n_dir, tmp_path / "hf", towers=g3n_dir / "hf")
    back = models.hf_dir_to_gemma(hf.path, tmp_path / "back")
    a, b = models.load_params(g3n_dir / models.PARAMS), models.load_params(back.path / models.PARAMS)
    assert models.tree_digest(a) == models.tree_digest(b)
    assert models.read_card(back.path).arch == models.read_card(g3n_dir).arch
    assert any("towers left out" in n for n in back.notes)
    # the converted folder is the cached one, byte for byte
    for f in ("model.safetensors", "config.json", "tokenizer.model", "tokenizer.json"):
        assert (hf.path / f).read_bytes() == (g3n_dir / "hf" / f).read_bytes(), f


def test_keys_and_values_of_kv_shared_layers_are_left_out_with_a_notice(tmp_path, g3n_dir):
    """Google's checkpoints carry k/v projections in KV-shared layers, which no engine uses."""
    from safetensors.numpy import load_file, save_file

    hf = tmp_path / "hf"
    hf.mkdir()
    for f in (g3n_dir / "hf").iterdir():
        (hf / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(hf / "model.safetensors"))
    t = "model.language_model.layers."
    for i in (3, 4, 5):
        for part in ("k_proj", "v_proj", "k_norm"):
            sd[f"{t}{i}.self_attn.{part}.weight"] = sd[f"{t}0.self_attn.{part}.weight"]
    save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})
    back = models.hf_dir_to_gemma(hf, tmp_path / "back")
    assert any("KV-shared layers left out (9 tensors)" in n for n in back.notes), back.notes
    assert models.tree_digest(models.load_params(back.path / models.PARAMS)) == \
        models.tree_digest(models.load_params(g3n_dir / models.PARAMS))


def test_tiny_gemma3n_is_byte_reproducible(tmp_path, g3n_dir):
    fresh = models.build_tiny("tiny-gemma3n", tmp_path / "again")

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    assert digest(fresh) == digest(g3n_dir)


def test_google_vocabulary_layout_round_trips(tmp_path, g3n_dir):
    """A gemma model with the text rows only (as gemma 3.3's E2B/E4B): HF gets 256 pad-row copies
    appended (as Google's checkpoints); back to gemma they are dropped again."""
    text_only = variant(tmp_path, g3n_dir, "rows1024", arch={"vocab_size": 1024}, params_fn=_cut_rows)
    hf = hf_of(tmp_path, text_only, g3n_dir / "hf")
    from safetensors.numpy import load_file

    emb = load_file(str(hf / "model.safetensors"))["model.language_model.embed_tokens.weight"]
    assert emb.shape[0] == 1280 and np.array_equal(emb[1024:], np.repeat(emb[:1], 256, axis=0))
    back = models.hf_dir_to_gemma(hf, tmp_path / "back").path
    assert models.read_card(back).arch.vocab_size == 1024
    assert models.tree_digest(models.load_params(back / models.PARAMS)) == \
        models.tree_digest(models.load_params(text_only / models.PARAMS))


def _cut_rows(params, rows: int = 1024):
    emb = dict(params["embedder"])
    emb["input_embedding"] = np.asarray(emb["input_embedding"])[:rows]
    emb["per_layer_input_embedding"] = np.asarray(emb["per_layer_input_embedding"])[:rows]
    return {**params, "embedder": emb}


# ---------------------------------------------------------------- the JAX engine on Gemma 3n


def test_jax_runs_gemma3n_text_only_with_the_reason(jax3n):
    assert jax3n.capabilities.modalities == {"text"}
    assert "text-only" in jax3n.capabilities.unsupported["image"]
    [g] = jax3n.generate([Request.from_text("Hello there")], SamplingParams(max_tokens=6))
    assert len(g.token_ids) == 6 and g.text
    img = Request(messages=[{"role": "user", "content": [{"type": "image", "array": np.zeros((8, 8, 3), np.uint8)}]}])
    with pytest.raises(UnsupportedError, match="text-only"):
        jax3n.generate([img], SamplingParams(max_tokens=2))


def test_jax_and_transformers_agree_and_a_clean_model_names_no_cause(jax3n, hf3n):
    assert hf3n.capabilities.modalities == {"text"} and "timm" in hf3n.capabilities.unsupported["image"]
    report = parity.compare(jax3n, hf3n, text_requests(), max_tokens=12)
    assert report.verdict == "pass", [p.reasons for p in report.prompts]
    assert report.tolerance.logprob_pass <= 1e-4
    assert max(p.agreement.max_abs_dlogprob for p in report.prompts) <= 1e-4
    assert all(p.greedy_equal for p in report.prompts)
    assert not any(p.causes for p in report.prompts)
    sa, sb = report.a["settings"], report.b["settings"]
    assert (sa["convention"], sb["convention"]) == ("gemma", "hf")
    assert sa["kv_sharing"] == sb["kv_sharing"] == [0, 1, 2, 1, 1, 2]


# ---------------------------------------------------------------- differences by design, planted


def test_softcap_on_one_side_only_is_named_and_confirmed(tmp_path, g3n_dir, hf3n):
    """gemma 3.3's E2B/E4B have no final soft-cap, Hugging Face's 30."""
    d = variant(tmp_path, g3n_dir, "nocap", arch={"final_logit_softcap": None})
    with backends.get("jax", model=str(d)) as jax_nocap:
        report = parity.compare(jax_nocap, hf3n, text_requests()[:2], max_tokens=8)
        assert "final-logit-softcap" in causes(report)
        assert report.verdict == "warn", [p.reasons for p in report.prompts]
        c = next(c for p in report.prompts for c in p.causes if c.name == "final-logit-softcap")
        assert c.evidence["max_abs_dlogprob_aligned"] <= 1e-4 < c.evidence["max_abs_dlogprob"]
        # the alignment option: the same folder with Hugging Face's conventions agrees
    with backends.get("jax", model=str(d), conventions="hf") as aligned:
        assert aligned.model_settings().final_logit_softcap == 30.0
        assert parity.compare(aligned, hf3n, text_requests()[:2], max_tokens=8).verdict == "pass"


def test_missing_vocabulary_rows_on_one_side_are_named(tmp_path, g3n_dir):
    text_only = variant(tmp_path, g3n_dir, "rows1024", arch={"vocab_size": 1024}, params_fn=_cut_rows)
    hf = hf_of(tmp_path, text_only, g3n_dir / "hf")  # 1280 rows: pad-row copies, as Google's
    with backends.get("jax", model=str(text_only)) as jax_rows, backends.get("hf", model=str(hf)) as hf_rows:
        report = parity.compare(jax_rows, hf_rows, text_requests()[:2], max_tokens=8)
        assert causes(report) == {"vocabulary-padding"}, [p.reasons for p in report.prompts]
        assert report.verdict == "warn"


def test_kv_sharing_rule_difference_is_named_on_a_layout_that_exposes_it(tmp_path, g3n_dir):
    """Unshared layers sliding, full, sliding: a KV-shared sliding layer reads layer 1 (a full
    layer) under gemma's fixed offsets and layer 2 under Hugging Face's same-type rule."""
    arch = models.read_card(g3n_dir).arch.model_copy(update={"layer_types": ("sliding", "full", "sliding") * 2})
    assert arch.kv_sharing("gemma") != arch.kv_sharing("hf")
    from backends.models._tiny import init_gemma3n_params

    d = models.write_model_dir(tmp_path / "altpattern", models.ModelCard(name="altpattern", arch=arch),
                               init_gemma3n_params(arch, seed=1), g3n_dir / models.TOKENIZER)
    hf = hf_of(tmp_path, d, g3n_dir / "hf")
    with backends.get("jax", model=str(d)) as jax_alt, backends.get("hf", model=str(hf)) as hf_alt:
        report = parity.compare(jax_alt, hf_alt, text_requests()[:2], max_tokens=8)
        assert causes(report) == {"kv-sharing-rule"}, [p.reasons for p in report.prompts]
        assert report.verdict == "warn"
        with backends.get("jax", model=str(d), conventions="hf") as aligned:
            assert parity.compare(aligned, hf_alt, text_requests()[:2], max_tokens=8).verdict == "pass"


def test_altup_coefficients_beyond_the_clip_are_named(tmp_path, g3n_dir):
    """A checkpoint whose AltUp coefficients exceed 120: gemma clips them, transformers does not."""
    from safetensors.numpy import load_file, save_file

    def big(params):
        layer = dict(params["layer_0"])
        altup = dict(layer["altup"])
        pc = np.array(altup["prediction_coefs"])
        pc[0, 0, 0] = 300.0
        altup["prediction_coefs"] = pc
        return {**params, "layer_0": {**layer, "altup": altup}}

    d = variant(tmp_path, g3n_dir, "bigcoef", params_fn=big)
    hf = hf_of(tmp_path, d, g3n_dir / "hf")  # the converter clips: unclip it, as a checkpoint trained past it
    sd = load_file(str(hf / "model.safetensors"))
    key = "model.language_model.layers.0.altup.prediction_coefs.weight"
    assert sd[key][0, 0] == 120.0
    sd[key][0, 0] = 300.0
    save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with backends.get("jax", model=str(d)) as jax_big, backends.get("hf", model=str(hf)) as hf_big:
        assert jax_big.model_settings().altup_coef_clip == 120.0 and hf_big.model_settings().altup_coef_clip is None
        report = parity.compare(jax_big, hf_big, text_requests()[:2], max_tokens=8)
        assert causes(report) == {"altup-clip"}, [p.reasons for p in report.prompts]


def test_a_real_difference_is_not_excused_by_the_settings(tmp_path, g3n_dir, hf3n):
    """Weights perturbed on the JAX side only (and the soft-cap off): the soft-cap is named but
    aligning it does not close the gap, so the prompt still fails."""
    def perturb(params):
        layer = dict(params["layer_2"])
        mlp = dict(layer["mlp"])
        w = np.asarray(mlp["linear"])  # elementwise noise (a plain scale would be undone by the post-FFW norm)
        mlp["linear"] = w * (1 + 0.05 * np.random.default_rng(0).standard_normal(w.shape)).astype(w.dtype)
        return {**params, "layer_2": {**layer, "mlp": mlp}}

    d = variant(tmp_path, g3n_dir, "perturbed", arch={"final_logit_softcap": None}, params_fn=perturb)
    with backends.get("jax", model=str(d)) as jax_bad:
        report = parity.compare(jax_bad, hf3n, text_requests()[:2], max_tokens=8)
        assert report.verdict == "fail", [p.reasons for p in report.prompts]
        assert "final-logit-softcap" in {c.name for p in report.prompts for c in p.causes}


# ---------------------------------------------------------------- bad input


def test_converting_gemma3n_to_hf_without_towers_is_one_clear_error(tmp_path, g3n_dir):
    p = cli_in_process("convert", g3n_dir, tmp_path / "out", "--to", "hf")
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--towers" in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


def test_towers_for_another_vocabulary_are_refused(tmp_path, g3n_dir):
    other = variant(tmp_path, g3n_dir, "v1000", arch={"text_vocab_size": 1000})
    with pytest.raises(InputError, match="vocab_offset=1024.*1000 text ids"):
        models.gemma_dir_to_hf(other, tmp_path / "hf", towers=g3n_dir / "hf")


def test_vocabulary_rows_that_do_not_match_the_config_are_refused(tmp_path, g3n_dir):
    hf = tmp_path / "bad"
    hf.mkdir()
    for f in (g3n_dir / "hf").iterdir():
        (hf / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((hf / "config.json").read_text())
    cfg["text_config"]["vocab_size"] = 1300
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="1280 rows but config.json says vocab_size 1300"):
        models.hf_dir_to_gemma(hf, tmp_path / "g")
