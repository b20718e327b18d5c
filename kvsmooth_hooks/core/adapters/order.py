"""Whether an attention module leaves its key projection's output untouched until the value projection ran.

The ``kv_proj`` site blends the new token's key and value projections in place. If nothing reads the key
projection's output before the value projection runs, the key's blend can wait for the value hook, and both
become one fused op per layer (``torch._foreach_lerp_``) instead of one per projection. Many attention modules
transform the key first (``k_norm`` in Qwen3, OLMo 2, Gemma 3n, ...): there a late in-place edit would not reach
the attention, so the key must be blended in its own hook.

This is decided from the source of the attention class's ``forward`` (``ast``), conservatively: the key is
deferred only if

* ``self.<key>(...)`` and ``self.<value>(...)`` are each called once, in top-level statements of ``forward``
  (not inside a branch), the key's first;
* the key's statement is a plain assignment whose value is the projection call followed only by view methods
  (``view``, ``transpose``, ``unflatten``, ``permute``, ``unsqueeze``, ``squeeze``, and ``reshape`` directly on
  the projection's contiguous output), so the assigned names are views of the projection's output;
* no statement after it, up to and including the value's, mentions those names.

Llama, Mistral, Qwen 2, Gemma 2/3, Granite and Starcoder 2 qualify; Qwen 3 and OLMo 2 (``k_norm`` around the
call), Gemma 3n (calls inside a branch) and anything whose source cannot be read do not.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap

VIEW_METHODS = frozenset({"view", "transpose", "unflatten", "permute", "unsqueeze", "squeeze"})


def _is_self_call(node: ast.AST, attr: str) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "self")


def _view_chain_of(node: ast.AST, attr: str) -> bool:
    """``node`` is ``self.<attr>(...)`` followed only by view methods."""
    while not _is_self_call(node, attr):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            return False
        inner = node.func.value
        if node.func.attr not in VIEW_METHODS and not (node.func.attr == "reshape" and _is_self_call(inner, attr)):
            return False
        node = inner
    return True


def _calls(stmt: ast.stmt, attr: str) -> int:
    return sum(_is_self_call(n, attr) for n in ast.walk(stmt))


def _targets(stmt: ast.stmt) -> set[str] | None:
    """Names a plain ``a = ...`` / ``a, b = ...`` assignment binds, or None for any other statement."""
    if not isinstance(stmt, ast.Assign):
        return None
    names: set[str] = set()
    for target in stmt.targets:
        elts = target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
        for elt in elts:
            if not isinstance(elt, ast.Name):
                return None
            names.add(elt.id)
    return names


@functools.lru_cache(maxsize=None)
def key_untouched_until_value(cls: type, key_attr: str, value_attr: str) -> bool:
    """Whether ``cls.forward`` reads nothing from ``self.<key_attr>(...)``'s output before ``self.<value_attr>(...)``
    ran (see the module doc). False whenever the source cannot be read or parsed."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return False
    fn = tree.body[0] if tree.body and isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    if fn is None:
        return False
    body = fn.body
    k_at = [i for i, stmt in enumerate(body) if _calls(stmt, key_attr)]
    v_at = [i for i, stmt in enumerate(body) if _calls(stmt, value_attr)]
    if len(k_at) != 1 or len(v_at) != 1 or k_at[0] >= v_at[0]:
        return False
    stmt = body[k_at[0]]
    names = _targets(stmt)
    if not names or _calls(stmt, key_attr) != 1 or _calls(fn, key_attr) != 1 or _calls(fn, value_attr) != 1:
        return False
    if not _view_chain_of(stmt.value, key_attr):
        return False
    return not any(isinstance(n, ast.Name) and n.id in names
                   for later in body[k_at[0] + 1: v_at[0] + 1] for n in ast.walk(later))
