"""The cause registry (`harness.causes`): every cause the code names is declared there, every
declared cause is documented, a cause that is not declared cannot be made, and the settings table
points only at declared causes and at fields engines report."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from backends import ModelSettings
from harness import causes
from harness.findings import Cause

ROOT = Path(__file__).resolve().parent.parent


def cause_literals(path: Path) -> list[tuple[int, str]]:
    """Cause names written as string literals in `path`: `Cause(name="...")`, and comparisons of a
    `.name`/`.cause` with a literal (`c.name == "logprobs"`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "Cause":
            for kw in node.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    found.append((node.lineno, kw.value.value))
        if isinstance(node, ast.Compare) and ast.unparse(node.left).endswith((".name", ".cause")):
            for comp in node.comparators:
                if isinstance(comp, ast.Constant) and isinstance(comp.value, str):
                    found.append((node.lineno, comp.value))
    return found


def undeclared(paths: list[Path]) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{line}: {name!r}" for p in paths for line, name in cause_literals(p)
            if not causes.is_declared(name)]


def test_every_cause_the_code_names_is_declared():
    paths = sorted((ROOT / "harness").rglob("*.py"))
    assert sum(len(cause_literals(p)) for p in paths) >= 15  # the scan sees the checks' causes
    assert not undeclared(paths), "\n".join(undeclared(paths))


def test_the_scan_catches_an_undeclared_cause(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('def f(res):\n    x = Cause(name="cosmic-rays", explains=True, detail="")\n'
                       '    return [c for c in res.causes if c.name == "solar-wind"]\n')
    planted = planted.rename(ROOT / "harness" / "_planted_cause.py")
    try:
        assert [x.split(": ")[1] for x in undeclared([planted])] == ["'cosmic-rays'", "'solar-wind'"]
    finally:
        planted.unlink()


def test_an_undeclared_cause_cannot_be_made():
    with pytest.raises(ValidationError, match="cause 'cosmic-rays' is not declared in harness/causes.py"):
        Cause(name="cosmic-rays", explains=True, detail="")
    assert Cause(name="near-tie", explains=True, detail="").kind == "observation"


def test_docs_carry_the_catalogue_as_declared():
    """docs/parity.md's table of causes is the registry's (regenerate it with
    `python -c "from harness import causes; print(causes.catalogue())"`)."""
    doc = (ROOT / "docs" / "parity.md").read_text()
    begin, end = "<!-- causes:begin -->\n", "\n<!-- causes:end -->"
    assert begin in doc and end in doc, "docs/parity.md lacks the causes:begin / causes:end markers"
    shown = doc[doc.index(begin) + len(begin):doc.index(end)]
    assert shown == causes.catalogue(), "docs/parity.md's table of causes differs from harness/causes.py"
    assert all(f"`{name}`" in shown for name in causes.CAUSES)


def test_the_settings_table_names_declared_causes_of_reported_fields():
    for field, setting in causes.SETTINGS.items():
        assert field in ModelSettings.model_fields, field
        if setting.cause is not None:
            assert causes.is_declared(setting.cause), setting
    assert causes.of_kind("precision") == {"dtype-mismatch", "kv-cache-dtype", "quantization", "overflow"}
    assert causes.of_kind("by-design") == {"final-logit-softcap", "vocabulary-padding", "kv-sharing-rule", "altup-clip"}
    assert set(causes.KINDS) == {c.kind for c in causes.CAUSES.values()}
