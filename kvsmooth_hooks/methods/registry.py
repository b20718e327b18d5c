"""The method registry: ``METHODS``, :func:`register_method`, :func:`get_method`, :func:`build_method` (+ the
entry-point group ``kvsmooth_hooks.methods`` for methods in other packages)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Method, MethodError

__all__ = ["METHODS", "BROKEN", "ENTRY_POINT_GROUP", "register_method", "get_method", "build_method", "is_method"]

METHODS: dict[str, type[Method]] = {}
ENTRY_POINT_GROUP = "kvsmooth_hooks.methods"
_entry_points_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``cls.name`` (``--arms NAME``, :func:`build_method`)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method {cls.name!r} is already registered by {METHODS[cls.name].__module__}")
    METHODS[cls.name] = cls
    return cls


#: entry-point name -> one line saying why it could not be loaded
BROKEN: dict[str, str] = {}


def _load_entry_points() -> None:
    """Load the group's plugins once; one that fails to import is remembered in :data:`BROKEN` and hides no other."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from ..core.registry import entry_point_classes

    good, broken = entry_point_classes(ENTRY_POINT_GROUP, Method)
    for name, cls in good.items():
        METHODS.setdefault(name, cls)
    BROKEN.update(broken)


def is_method(name: str) -> bool:
    """Whether ``name`` is a registered method (built in or a plugin)."""
    if name not in METHODS:
        _load_entry_points()
    return name in METHODS


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; the error lists the known ones and names broken plugins."""
    if name not in METHODS:
        _load_entry_points()
    if name in BROKEN:
        raise MethodError(f"method {name!r}: the plugin of entry-point group {ENTRY_POINT_GROUP!r} {BROKEN[name]}; "
                          "fix or uninstall the package that provides it")
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(name: str, **params: Any) -> Method:
    """``get_method(name)(**params)`` with values converted to the fields' types; unknown fields named."""
    cls = get_method(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise MethodError(f"method {name!r} has no parameter {', '.join(unknown)}; its parameters are "
                          f"{', '.join(sorted(fields)) or 'none'}")
    conv = {}
    for k, v in params.items():
        try:
            conv[k] = _convert(fields[k].default, v)
        except ValueError:
            raise MethodError(f"method {name!r}: {k}={v!r}: expected {type(fields[k].default).__name__} "
                              f"(default {fields[k].default!r})") from None
    return cls(**conv)


def _convert(default, v):
    """A command-line string to the type of the field's default (bool, int, float; else kept)."""
    if not isinstance(v, str):
        return v
    if isinstance(default, bool):
        return _bool(v)
    if isinstance(default, (int, float)):
        return type(default)(v)
    if default is None:  # an optional number (e.g. PAI's end_layer)
        if v.lower() == "none":
            return None
        try:
            return int(v)
        except ValueError:
            return float(v)
    return v


def _bool(v: str) -> bool:
    s = v.lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)
