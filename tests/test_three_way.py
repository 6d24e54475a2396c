"""Three sides (vLLM, JAX, transformers) on tiny-gemma3-vision and the default suite, as
`paritybench compare --backends vllm,jax,hf --no-bench` runs them: parity for every pair and an
arbitration line per prompt that names the odd one out and its cause."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_quiet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def three(tmp_path_factory, vllm_vision):
    out = tmp_path_factory.mktemp("three") / "run"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "compare", "--backends", "vllm,jax,hf", "--vllm-url",
                        vllm_vision.url, "--no-bench", "--max-tokens", "12", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=900)
    return out, p


def test_every_pair_compared_and_the_odd_one_named(three):
    out, p = three
    assert p.returncode == 0, p.stderr[-3000:]
    assert_quiet(p)
    r = json.loads((out / "results.json").read_text())
    assert set(r["pairs"]) == {"vllm-jax", "vllm-hf", "jax-hf"}
    verdict = {k: {x["id"]: x for x in rep["prompts"]} for k, rep in r["pairs"].items()}
    for pid in ("qa-capital", "system-greeting", "multilingual-ru", "multi-turn"):  # text: every pair passes
        assert all(verdict[k][pid]["verdict"] == "pass" for k in verdict), pid
    # red-square (64x64: no resize on any side): gemma and transformers agree to float noise
    assert verdict["jax-hf"]["red-square"]["agreement"]["max_abs_dlogprob"] <= 1e-4
    arb = {a["id"]: a for a in r["arbitration"]}
    for pid in ("red-square", "cat-photo"):
        assert arb[pid]["odd_one_out"] == "vllm", arb[pid]
        assert "causal-image-attention" in {c["name"] for c in arb[pid]["causes"]}
        assert "vllm is the odd one out" in arb[pid]["line"]
    assert arb["qa-capital"]["line"] == "all 3 sides agree"
    assert arb["speech-paris"]["odd_one_out"] is None  # audio: unsupported on every side, not arbitrated
    # the worst pair decides: images warn with confirmed causes, nothing fails
    assert r["verdict"] == "warn"
    md = (out / "report.md").read_text()
    assert "## Every pair of sides" in md and "## vLLM vs JAX vs transformers, measured" in md
    assert "every pair of sides" in p.stdout
