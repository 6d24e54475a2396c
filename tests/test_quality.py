"""Quality (harness/quality.py): perplexity and log-likelihood accuracy per side, against the
reference side; a side more than 1 % worse in perplexity fails, on a model that really differs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backends import InputError
from harness import quality
from harness.results import Accuracy, Perplexity, SideQuality
from tests.conftest import cli_in_process, variant


def test_wilson_interval():
    low, high = quality.wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert quality.wilson(0, 10)[0] == 0.0 and quality.wilson(10, 10)[1] == pytest.approx(1.0)


def _side(ppl: float, answers: list[int]) -> SideQuality:
    acc = Accuracy(suite="s", items=len(answers), correct=sum(a == 0 for a in answers), acc=np.mean([a == 0 for a in answers]),
                   low=0, high=1, acc_norm=0, chance=0.25, answers=answers)
    return SideQuality(perplexity=[Perplexity(corpus="en", documents=1, tokens=10, nll=np.log(ppl), perplexity=ppl)],
                       accuracy=acc)


def test_against_the_reference_is_vllm_s_one_percent_rule():
    ref = _side(20.0, [0, 0, 1, 0])
    ok = quality.against("ref", ref, _side(20.19, [0, 0, 1, 1]), judged=True)
    assert ok.verdict == "pass" and ok.perplexity_ratio["en"] == pytest.approx(1.0095)
    assert ok.accuracy_delta == pytest.approx(-0.25) and ok.same_choice == pytest.approx(0.75)
    worse = quality.against("ref", ref, _side(20.3, [0, 0, 1, 0]), judged=True)
    assert worse.verdict == "fail" and "en: perplexity 1.0150x the reference's (ref)" in worse.reasons[0]
    assert quality.against("ref", ref, _side(19.0, [0, 0, 1, 0]), judged=True).verdict == "pass"  # better is fine
    assert quality.against("ref", ref, _side(30.0, [0, 0, 1, 0]), judged=False).verdict == "report"


def test_shipped_inputs_load_and_bad_ones_are_one_line(tmp_path):
    items = quality.load_items("evals/quality/knowledge.yaml")
    assert len(items) >= 100 and all(len(it.choices) == 4 for it in items)
    assert sorted({it.answer for it in items}) == [0, 1, 2, 3]  # the right answer is not always in one place
    for corpus in ("english", "russian"):
        assert len(quality.load_corpus(f"evals/quality/{corpus}.txt")) >= 10
    bad = tmp_path / "mc.yaml"
    bad.write_text("name: m\nitems:\n  - id: a\n    context: x\n    choices: [' a', ' b']\n    answer: 2\n")
    with pytest.raises(InputError, match=r"mc.yaml line 6: field items.0.answer: 2 is not the index"):
        quality.load_items(bad)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="the perplexity corpus is empty"):
        quality.load_corpus(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="cannot read the perplexity corpus"):
        quality.load_corpus(tmp_path / "missing.txt")


def _sharper(params):
    """The tied embedding times 1.5: every logit sharper (the output layer reads it)."""
    params = dict(params)
    params["embedder"] = {**params["embedder"], "input_embedding": np.asarray(params["embedder"]["input_embedding"]) * 1.5}
    return params


@pytest.mark.slow
def test_compare_quality_passes_on_the_same_model_and_fails_on_one_that_differs(tiny_text_dir, tmp_path):
    """hf and jax on tiny-gemma3: the same perplexity (ratio within 1e-4), the same choices on every
    item; a JAX side whose output layer is sharper is more than 1 % worse, and fails."""
    base = ["compare", "--model", "tiny-gemma3", "--backends", "hf,jax", "--suite", "evals/smoke.yaml", "--no-bench",
            "--localize", "off", "--quality"]
    p = cli_in_process(*base, "--out", tmp_path / "same")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    q = json.loads((tmp_path / "same" / "results.json").read_text())["quality"]
    assert set(q) == {"hf", "jax"} and q["jax"]["reference"] == "hf" and q["jax"]["verdict"] == "pass"
    assert all(abs(r - 1) < 1e-4 for r in q["jax"]["perplexity_ratio"].values())
    assert q["jax"]["same_choice"] == 1.0 and q["hf"]["accuracy"]["items"] >= 100
    assert "quality" in p.stdout and "Quality" in (tmp_path / "same" / "report.md").read_text()

    planted = variant(tmp_path, tiny_text_dir, "sharper", params_fn=_sharper)
    p = cli_in_process(*base, "--jax-model", planted, "--out", tmp_path / "planted")
    assert p.returncode == 1
    q = json.loads((tmp_path / "planted" / "results.json").read_text())["quality"]
    assert q["jax"]["verdict"] == "fail" and "perplexity" in q["jax"]["reasons"][0]
    assert min(q["jax"]["perplexity_ratio"].values()) > 1.01
