"""The package's shape: every module imports on a clean interpreter, no import cycles, no private
names imported across packages, and the harness never decides behaviour by an engine's name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("backends", "harness", "evals")
SCRIPTS_DIR = ROOT / "backends" / "vllm_env"  # run by the vLLM environment; never imported


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if SCRIPTS_DIR in path.parents:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def _imports(mod: str) -> list[tuple[str, str | None, int, bool]]:
    """(imported module, imported name or None, line, at module level) for each import in `mod`."""
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
    base = mod if _is_package(mod) else mod.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    # imports inside `if TYPE_CHECKING:` or functions are not module-level
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, None, node.lineno, id(node) in top_level))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parts = parts[: len(parts) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:  # `from pkg import submodule`
                    out.append((sub, None, node.lineno, id(node) in top_level))
                else:
                    out.append((target, a.name, node.lineno, id(node) in top_level))
    return out


def _owner(private_module: str) -> str:
    """The package a private module or name belongs to: everything up to its first private part."""
    parts = private_module.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_") and not p.startswith("__"):
            return ".".join(parts[:i])
    return private_module


def test_every_module_imports_on_a_clean_interpreter():
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok', len(sys.argv) - 1)"
    r = subprocess.run([sys.executable, "-c", code, *MODULES], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(Path.home())})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == f"ok {len(MODULES)}"


def test_no_private_names_imported_across_packages():
    bad = []
    for mod in MODULES:
        for target, name, line, _ in _imports(mod):
            if target.split(".")[0] not in PACKAGES:
                continue
            private = target if _owner(target) != target else None
            if private is None and name and name.startswith("_") and not name.startswith("__"):
                private = f"{target}.{name}"
            if private is None:
                continue
            owner = _owner(private)
            inside = mod == owner or mod.startswith(owner + ".")
            if not inside:
                bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line} imports {private} (private to {owner})")
    assert not bad, "\n".join(bad)


def _cycles(module_level_only: bool) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES:
        for target, _, _, top in _imports(mod):
            if (top or not module_level_only) and target in MODULES and target != mod:
                graph[mod].add(target)
    cycles, state = [], dict.fromkeys(graph, 0)

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state[n] == 1:
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif state[n] == 0:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if state[m] == 0:
            visit(m, [m])
    # a package's __init__ importing its own submodules, which import siblings through the package,
    # is the one pattern Python resolves; anything else is a cycle
    return [c for c in cycles if not all(x.startswith(c[0]) or c[0].startswith(x) for x in c)]


def test_no_import_cycles_at_module_level():
    real = _cycles(module_level_only=True)
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_no_import_cycles_hidden_in_functions():
    """An import inside a function that closes a cycle (diagnosis importing from parity, which
    imports diagnosis) is a cycle too, only deferred: none either."""
    real = _cycles(module_level_only=False)
    assert not real, "\n".join(" -> ".join(c) for c in real)


MAX_FUNCTION_LINES = 80


def _long_functions(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_function_over_80_lines():
    paths = [p for pkg in ("backends", "harness") for p in sorted((ROOT / pkg).rglob("*.py"))]
    long = _long_functions(paths)
    assert not long, "split these into named steps:\n" + "\n".join(long)


def _engine_name_branches(path: Path, engine_names: set[str]) -> list[str]:
    """`x == "vllm"`, `name in ("jax", ...)`, `if backend != "hf"` and the like, where the other side
    of the comparison is an engine name (a variable or attribute called name/backend/engine/side)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def names_engine(expr: ast.AST) -> bool:
        text = ast.unparse(expr).lower()
        return any(w in text for w in ("name", "backend", "engine", "side", "provider"))

    def literals(expr: ast.AST) -> set[str]:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in expr.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for x, y in zip(operands, operands[1:]):
                for lit_side, other in ((x, y), (y, x)):
                    if literals(lit_side) & engine_names and names_engine(other):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def _engine_name_lookups(path: Path, engine_names: set[str]) -> list[str]:
    """Engine knowledge kept in the harness as data keyed by an engine's name: `x["vllm"]`,
    `d.get("jax")`, and dict displays with an engine's name as a key (`{"vllm": ...}.get(engine)`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        hit = False
        if isinstance(node, ast.Dict):
            hit = any(isinstance(k, ast.Constant) and k.value in engine_names for k in node.keys)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value) != "Literal":
            hit = isinstance(node.slice, ast.Constant) and node.slice.value in engine_names
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            first = node.args[0]
            hit = (node.func.attr in ("get", "pop", "setdefault") and isinstance(first, ast.Constant)
                   and first.value in engine_names)
        if hit:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_harness_never_branches_on_an_engine_name():
    import backends

    names = set(backends.engines())
    bad = [hit for path in sorted((ROOT / "harness").rglob("*.py")) for hit in _engine_name_branches(path, names)]
    assert not bad, "\n".join(bad)


def test_harness_keeps_no_data_keyed_by_an_engine_name():
    """Titles, options, environments, guides: each engine declares its own (`BaseBackend`'s
    class-level declarations); the harness reads them, never a table of its own keyed by names."""
    import backends

    names = set(backends.engines())
    bad = [hit for path in sorted((ROOT / "harness").rglob("*.py")) for hit in _engine_name_lookups(path, names)]
    assert not bad, "\n".join(bad)


def test_the_lookup_check_catches_a_table():
    planted = ROOT / "harness" / "_planted_lookup_check.py"
    planted.write_text('TITLES = {"vllm": "vLLM"}\n\ndef f(d, opts):\n    return d["jax"], opts.get("hf"), '
                       'Literal["vllm"]\n')
    try:
        hits = _engine_name_lookups(planted, {"vllm", "jax", "hf"})
    finally:
        planted.unlink()
    assert len(hits) == 3, hits


def test_the_branch_check_catches_a_branch(tmp_path):
    """The check above can fail: a planted `if name == "vllm"` is found."""
    planted = ROOT / "harness" / "_planted_branch_check.py"
    planted.write_text('def f(side):\n    if side.name == "vllm":\n        return 1\n    return 2 if backend in ("jax", "x") else 3\n')
    try:
        hits = _engine_name_branches(planted, {"vllm", "jax", "hf"})
    finally:
        planted.unlink()
    assert len(hits) == 2


@pytest.mark.parametrize("engine", ["jax", "vllm", "hf", "openai", "llamacpp"])
def test_every_engine_class_implements_the_protocol(engine):
    """Every method and attribute of `Backend` is defined on each built-in engine's class."""
    import backends
    from backends import Backend

    cls = backends.engine_class(engine)
    wanted = [n for n in dir(Backend) if not n.startswith("_") or n in ("__enter__", "__exit__")]
    wanted += list(Backend.__annotations__)
    missing = [n for n in wanted if not hasattr(cls, n) and n not in ("model", "capabilities")]
    assert not missing, f"{engine}: {missing}"


def test_unknown_engine_and_option_are_one_line_errors():
    import backends

    with pytest.raises(backends.InputError, match="unknown engine 'tpu'; choose one of: vllm, jax, hf"):
        backends.get("tpu", model="tiny-gemma3")
    with pytest.raises(backends.InputError, match="the jax engine takes no option 'url'"):
        backends.get("jax", model="tiny-gemma3", url="http://127.0.0.1:1/v1")


def test_the_private_import_check_catches_one():
    """A planted harness module importing a private module of backends is reported."""
    planted = ROOT / "harness" / "_planted_private_import.py"
    planted.write_text("from backends.models._arch import GemmaArch\nfrom backends.jax import _backend\n")
    MODULES["harness._planted_private_import"] = planted
    try:
        with pytest.raises(AssertionError, match="private to backends.models"):
            test_no_private_names_imported_across_packages()
    finally:
        del MODULES["harness._planted_private_import"]
        planted.unlink()
