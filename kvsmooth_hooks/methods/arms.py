"""Method arms as text: what ``--arms``, ``--method-set`` and sweep axes say about inference-time methods.

* ``vcd``: the method alone; ``llava-1.5+vcd`` (any KVSmooth arm token, then ``+`` and a method): KVSmooth and
  the method in one arm (refused for methods that replace attention rows: PAI, MiddleLayer);
* ``--method-set vcd.alpha=0.5``: a parameter of every arm of that method;
* sweep axes ``vcd.alpha=0.5,1.0``: one arm per value (the product with other axes).
"""

from __future__ import annotations

from .base import Method, MethodError
from .registry import METHODS, _load_entry_points, build_method

__all__ = ["split_method", "method_settings", "parse_method_sets", "is_method_axis", "method_arm_name"]


def _known(name: str) -> bool:
    if name not in METHODS:
        _load_entry_points()
    return name in METHODS


def split_method(token: str) -> tuple[str | None, str | None]:
    """``'llava-1.5+vcd'`` -> ``('llava-1.5', 'vcd')``, ``'vcd'`` -> ``(None, 'vcd')``, ``'llava-1.5'`` ->
    ``('llava-1.5', None)``. A ``+`` not followed by a registered method name is part of the token."""
    if _known(token):
        return None, token
    head, sep, tail = token.rpartition("+")
    if sep and head and _known(tail):
        return head, tail
    return token, None


def parse_method_sets(pairs: list[str]) -> dict[str, dict[str, str]]:
    """``['vcd.alpha=0.5', 'pai.gamma=2']`` -> ``{'vcd': {'alpha': '0.5'}, 'pai': {'gamma': '2'}}`` (checked)."""
    out: dict[str, dict[str, str]] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        name, dot, param = key.strip().partition(".")
        if not sep or not dot or not param:
            raise MethodError(f"--method-set {p!r}: use METHOD.PARAM=VALUE (e.g. vcd.alpha=0.5)")
        if not _known(name):
            raise MethodError(f"--method-set {p!r}: unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
        out.setdefault(name, {})[param] = value.strip()
    for name, params in out.items():
        build_method(name, **params)  # names and types checked now, not in the middle of a run
    return out


def is_method_axis(field: str) -> bool:
    """Whether a sweep axis ``FIELD`` is ``METHOD.PARAM``."""
    name, dot, param = field.partition(".")
    return bool(dot and param and _known(name))


def method_settings(method: Method | None) -> dict | None:
    """What a run records about an arm's method (``None``: no method)."""
    return None if method is None else {**method.settings(), "source": method.source}


def method_arm_name(method: Method, defaults: Method | None = None) -> str:
    """``vcd`` for the defaults, ``vcd-alpha=0.5`` where parameters differ from ``defaults`` (a folder name)."""
    import dataclasses

    base = defaults if defaults is not None else type(method)()
    diff = [f"{f.name}={getattr(method, f.name)}" for f in dataclasses.fields(method)
            if getattr(method, f.name) != getattr(base, f.name)]
    return "-".join([method.name] + diff)
