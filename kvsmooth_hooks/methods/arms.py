"""Method arms as text: what ``--arms``, ``--method-set`` and sweep axes say about inference-time methods.

* ``vcd``: the method alone; ``llava-1.5+vcd`` (any KVSmooth arm token, then ``+`` and a method): KVSmooth and
  the method in one arm (refused for methods that replace attention rows: PAI, MiddleLayer);
* ``--method-set vcd.alpha=0.5``: a parameter of every arm of that method;
* sweep axes ``vcd.alpha=0.5,1.0``: one arm per value (the product with other axes).
"""

from __future__ import annotations

from .base import Method, MethodError
from .registry import METHODS, build_method, is_method

__all__ = ["split_method", "method_settings", "parse_method_sets", "is_method_axis", "method_arm_name", "arm_method",
           "split_axes"]


def split_method(token: str) -> tuple[str | None, str | None]:
    """``'llava-1.5+vcd'`` -> ``('llava-1.5', 'vcd')``, ``'vcd'`` -> ``(None, 'vcd')``, ``'llava-1.5'`` ->
    ``('llava-1.5', None)``. A ``+`` not followed by a registered method name is part of the token."""
    if is_method(token):
        return None, token
    head, sep, tail = token.rpartition("+")
    if sep and head and is_method(tail):
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
        if not is_method(name):
            raise MethodError(f"--method-set {p!r}: unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
        out.setdefault(name, {})[param] = value.strip()
    for name, params in out.items():
        build_method(name, **params)  # names and types checked now, not in the middle of a run
    return out


def is_method_axis(field: str) -> bool:
    """Whether a sweep axis ``FIELD`` is ``METHOD.PARAM``."""
    name, dot, param = field.partition(".")
    return bool(dot and param and is_method(name))


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


def arm_method(name: str, method_sets: dict | None, with_arm: str | None = None, smoothed: bool = False,
               params: dict | None = None) -> tuple[str, Method]:
    """``(arm label, method)`` for the method part of an arm (``vcd`` alone, or ``with_arm+vcd``);
    ``method_sets``: ``{method: {param: value}}`` (``--method-set``), ``params`` on top (a sweep's values).
    Raises :class:`MethodError` for what cannot be combined."""
    method = build_method(name, **{**(method_sets or {}).get(name, {}), **(params or {})})
    label = method_arm_name(method, build_method(name))
    if with_arm is not None and not smoothed:
        raise MethodError(f"{with_arm}+{name}: {with_arm} is the unsmoothed baseline, nothing to combine; write {name}")
    if smoothed and not method.composes_with_kvsmooth:
        raise MethodError(f"{with_arm or 'a smoothed arm'}+{name}: {name} replaces attention rows and cannot run "
                          f"inside a KVSmooth session; run {name} as an arm of its own")
    return label, method


def split_axes(specs: list[str]) -> tuple[list[str], str | None, list[tuple[str, list[str]]]]:
    """Sweep axes -> (KVSmooth axes as given, the method swept or None, [(param, values)] of its axes)."""
    config, methods, axes = [], set(), []
    for spec in specs:
        key, _, values = spec.partition("=")
        if not is_method_axis(key):
            config.append(spec)
            continue
        name, param = key.split(".", 1)
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise MethodError(f"--axis {spec!r}: no values")
        methods.add(name)
        axes.append((param, vals))
    if len(methods) > 1:
        raise MethodError(f"--axis: one method per sweep, got {', '.join(sorted(methods))}")
    return config, (methods.pop() if methods else None), axes
