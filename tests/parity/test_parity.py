"""One test per prompt: the two backends must agree (pass) or differ only for a named,
confirmed cause (warn). Runs on tiny-gemma3 in CI; on a GPU machine, unchanged:

    pytest tests/parity --model gemma-3-4b-it --vllm-url http://127.0.0.1:8000/v1 --dtype bfloat16
"""

from __future__ import annotations

from pathlib import Path

import pytest

import evals


def _suite_path(config) -> Path:
    return Path(config.getoption("--suite") or evals.path("smoke"))


def pytest_generate_tests(metafunc):
    if "prompt_id" in metafunc.fixturenames:
        import yaml

        raw = yaml.safe_load(_suite_path(metafunc.config).read_text(encoding="utf-8"))
        ids = [p["id"] for p in raw["prompts"]]
        metafunc.parametrize("prompt_id", ids, ids=ids)


def _side(request, name: str):
    """A backend for one side: the session's shared tiny servers when the options are the defaults."""
    import backends

    cfg = request.config
    model, dtype, url = cfg.getoption("--model"), cfg.getoption("--dtype"), cfg.getoption("--vllm-url")
    shared = {("vllm", "tiny-gemma3"): "vllm_text", ("jax", "tiny-gemma3"): "jax_text",
              ("vllm", "tiny-gemma3-vision"): "vllm_vision", ("jax", "tiny-gemma3-vision"): "jax_vision"}
    if dtype is None and url is None and (name, model) in shared:
        return request.getfixturevalue(shared[(name, model)]), False
    opts = {}
    if dtype:
        opts["dtype"] = dtype
    if name == "vllm" and url:
        opts = {"url": url}
    return backends.get(name, model=model, **opts), True


@pytest.fixture(scope="session")
def parity_report(request):
    from harness import parity, suites

    cfg = request.config
    names = [n.strip() for n in cfg.getoption("--backends").split(",")]
    if len(names) != 2:
        raise pytest.UsageError(f"--backends needs two backends, e.g. vllm,jax (got {names})")
    _, reqs = suites.load(_suite_path(cfg))
    (a, own_a), (b, own_b) = _side(request, names[0]), _side(request, names[1])
    tol = parity.PROFILES[cfg.getoption("--tolerance")] if cfg.getoption("--tolerance") else None
    if cfg.getoption("--logprob-atol") is not None:
        base = tol or parity.profile_for(cfg.getoption("--dtype"))
        tol = base.model_copy(update={"logprob_pass": cfg.getoption("--logprob-atol")})
    try:
        yield parity.compare(a, b, reqs, max_tokens=cfg.getoption("--max-tokens"), tolerance=tol)
    finally:
        for side, own in ((a, own_a), (b, own_b)):
            if own:
                side.close()


def test_prompt(prompt_id, parity_report):
    p = parity_report.by_id(prompt_id)
    explanation = "\n  ".join(p.reasons)
    print(f"\n{prompt_id}: {p.verdict}\n  {explanation}")
    if p.verdict == "unsupported":  # recorded with its reason, never silently dropped
        assert p.reasons and all("unsupported" in r for r in p.reasons)
        return
    assert p.verdict in ("pass", "warn"), f"{prompt_id}: {p.verdict}\n  {explanation}"
    if p.verdict == "warn":
        assert any(c.explains for c in p.causes), f"{prompt_id}: a warning needs a confirmed cause\n  {explanation}"
    assert p.agreement is not None and p.agreement.positions > 0
