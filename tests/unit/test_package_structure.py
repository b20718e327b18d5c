"""Package structure: no import cycle (lazy imports inside functions included) and small core modules."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "kvsmooth_hooks"
#: the core is held to 300 lines a module; evaluation code and the demo app sit beside it (nothing in the core
#: imports them) and are sized by their own owners
MAX_LINES, EXEMPT = 300, ("eval/", "demo.py")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its body (including inside functions)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                root = base[: len(base) - (node.level - 1)]
                mod = ".".join(root + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def test_no_import_cycles():
    """In the core (``eval/`` is evaluation code beside it, owned and checked separately)."""
    mods = {n: p for n, p in _modules().items() if not n.startswith("kvsmooth_hooks.eval")}
    graph = {name: _imports(name, path, set(mods)) for name, path in mods.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_cycle_detector_sees_lazy_imports(tmp_path):
    """The check above is not vacuous: an import inside a function counts."""
    src = "def f():\n    from .plan import resolve\n"
    p = tmp_path / "config.py"
    p.write_text(src)
    assert _imports("kvsmooth_hooks.config", p, {"kvsmooth_hooks.plan", "kvsmooth_hooks.config"}) == {"kvsmooth_hooks.plan"}


def test_core_modules_are_small():
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
           if not str(p.relative_to(PKG)).startswith(EXEMPT) and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
