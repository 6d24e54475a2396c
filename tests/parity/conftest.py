"""The parity suite: one comparison per session, one test per prompt of the suite."""

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
