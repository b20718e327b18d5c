"""Package structure: no import cycle (lazy imports inside functions included) and small core modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT

PKG = ROOT / "kvsmooth_hooks"
#: the core is held to 300 lines a module; evaluation code and the demo app sit beside it (nothing in the core
#: imports them) and are sized by their own owners
MAX_LINES, EXEMPT = 300, ("eval/", "demo.py")


def _modules(pkg: Path = PKG) -> dict[str, Path]:
    out = {}
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(pkg.parent).with_suffix("")
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
    """In the whole package, ``eval/`` included (lazy imports inside functions count)."""
    mods = _modules()
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
    assert _imports("kvsmooth_hooks.core.config", p, {"kvsmooth_hooks.core.plan", "kvsmooth_hooks.core.config"}) == {"kvsmooth_hooks.core.plan"}


def test_core_modules_are_small():
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
           if not str(p.relative_to(PKG)).startswith(EXEMPT) and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


#: evaluation and application layers; the core (config, plan, session, sites, scorers, adapters, probe, ...) never
#: imports them, and ``eval/`` (metrics on files) never imports the core's runtime or the layers that run models
APP = ("kvsmooth_hooks.eval", "kvsmooth_hooks.benchmarks", "kvsmooth_hooks.runner", "kvsmooth_hooks.integrations",
       "kvsmooth_hooks.demo", "kvsmooth_hooks.cli", "kvsmooth_hooks.run", "kvsmooth_hooks.check", "kvsmooth_hooks.check_cli",
       "kvsmooth_hooks.check_inputs", "kvsmooth_hooks.sweep", "kvsmooth_hooks.tiny_configs", "kvsmooth_hooks.methods",
       "kvsmooth_hooks.figures", "kvsmooth_hooks.templates", "kvsmooth_hooks.protocols", "kvsmooth_hooks.models",
       "kvsmooth_hooks.plots")
RUNTIME = ("kvsmooth_hooks.core.session", "kvsmooth_hooks.core.sites", "kvsmooth_hooks.core.probe", "kvsmooth_hooks.core.adapters",
           "kvsmooth_hooks.core.state", "kvsmooth_hooks.core.groups", "kvsmooth_hooks.core.rowbatch", "kvsmooth_hooks.core.lens",
           "kvsmooth_hooks.core.modes", "kvsmooth_hooks.core.guard", "kvsmooth_hooks.core.forwards")


def _graph():
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_layering():
    graph = _graph()
    core_to_app = {n: sorted(m for m in deps if _under(m, APP)) for n, deps in graph.items()
                   if not _under(n, APP) and n != "kvsmooth_hooks"}
    assert not {n: d for n, d in core_to_app.items() if d}, "the core imports evaluation/application code"
    eval_up = {n: sorted(m for m in deps if _under(m, RUNTIME + APP[1:]))
               for n, deps in graph.items() if _under(n, ("kvsmooth_hooks.eval",))}
    assert not {n: d for n, d in eval_up.items() if d}, "eval/ imports the session or the model-running layers"


def test_core_is_self_contained():
    """``kvsmooth_hooks.core`` (config -> plan -> session over sites, scorers, adapters, probe) imports nothing of
    the package outside itself but the version."""
    graph = _graph()
    outside = {n: sorted(m for m in deps if not _under(m, ("kvsmooth_hooks.core", "kvsmooth_hooks._version")))
               for n, deps in graph.items() if _under(n, ("kvsmooth_hooks.core",))}
    assert not {n: d for n, d in outside.items() if d}, f"the core imports application code: {outside}"


def test_tests_do_not_use_the_experiment_scripts():
    """The test suite stands on the package and tests/ alone; the scripts' own tests live in experiments/tests/."""
    root = PKG.parent / "tests"
    scripts = {p.stem for p in (PKG.parent / "experiments").glob("*.py")}
    offenders = {}
    for path in root.rglob("*.py"):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        tree = ast.parse(text)
        mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        bad = sorted(mods & scripts) + (["experiments/ on sys.path"] if re.search(r"sys\.path.*experiments", text) else [])
        if bad:
            offenders[str(path.relative_to(root))] = bad
    assert not offenders, offenders


#: private access between our modules that is known and not yet removed (module, name); nothing may be added
KNOWN_PRIVATE_ACCESS: set[tuple[str, str]] = set()


def _private_access(pkg: Path = PKG) -> set[tuple[str, str]]:
    """(module, name): a module importing another module's ``_name``, or reading ``obj._name`` of an object
    (not ``self``/``cls``) where ``_name`` is a private attribute or function that another module defines."""
    mods = _modules(pkg)
    trees = {n: ast.parse(p.read_text()) for n, p in mods.items()}
    defined: dict[str, set[str]] = {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith("_") \
                    and not node.name.startswith("__"):
                defined.setdefault(node.name, set()).add(name)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                defined.setdefault(node.attr, set()).add(name)
    found = set()
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("kvsmooth_hooks")):
                found |= {(name, a.name) for a in node.names if a.name.startswith("_") and not a.name.startswith("__")}
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr in defined \
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) \
                    and name not in defined[node.attr]:
                found.add((name, node.attr))
    return found


def test_no_private_access_between_modules():
    new = _private_access() - KNOWN_PRIVATE_ACCESS
    assert not new, f"private names used across modules (make them public or move the code): {sorted(new)}"


def test_private_access_check_sees_imports_and_attributes(tmp_path):
    """The check above is not vacuous: a private import and a private attribute read are reported."""
    pkg = tmp_path / "kvsmooth_hooks"
    pkg.mkdir()
    (pkg / "a.py").write_text("def _helper():\n    pass\n\nclass S:\n    def __init__(self):\n        self._state = 1\n")
    (pkg / "b.py").write_text("from .a import _helper\n\ndef f(s):\n    return s._state\n")
    assert _private_access(pkg) == {("kvsmooth_hooks.b", "_helper"), ("kvsmooth_hooks.b", "_state")}
