"""The method registry: ``METHODS``, :func:`register_method`, :func:`get_method`, :func:`build_method` (+ the
entry-point group ``kvsmooth_hooks.methods`` for methods in other packages)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..core.registry import PluginTable
from .base import Method, MethodError

__all__ = ["METHODS", "ENTRY_POINT_GROUP", "register_method", "get_method", "build_method", "is_method"]

ENTRY_POINT_GROUP = "kvsmooth_hooks.methods"
#: name -> Method class; ``METHODS.broken``: entry-point plugins that could not be loaded, with the reason
METHODS = PluginTable("method", Method, ENTRY_POINT_GROUP)


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``cls.name`` (``--arms NAME``, :func:`build_method`)."""
    return METHODS.register(cls)


def is_method(name: str) -> bool:
    """Whether ``name`` is a registered method (built in or a plugin)."""
    return METHODS.lookup(name) is not None


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; the error lists the known ones and names broken plugins."""
    cls = METHODS.lookup(name)
    if name in METHODS.broken:
        raise MethodError(f"method {name!r}: the plugin of entry-point group {ENTRY_POINT_GROUP!r} "
                          f"{METHODS.broken[name]}; fix or uninstall the package that provides it")
    if cls is None:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return cls


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
