"""One test per prompt: the two backends must agree (pass) or differ only for a named,
confirmed cause (warn). Runs on tiny-gemma3 in CI; on a GPU machine, unchanged:

    pytest tests/parity --model gemma-3-4b-it --vllm-url http://127.0.0.1:8000/v1 --dtype bfloat16
"""


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
