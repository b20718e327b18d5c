"""Inference-time methods as plug-ins beside the KVSmooth session: one file per method (see docs/methods.md).

``build_method("vcd", alpha=1.0).generate(model, **inputs, max_new_tokens=64)``. ``METHODS`` maps a name to a
:class:`~.base.Method` subclass; add one with ``@register_method`` in a file of this folder (imported
automatically) or in your own module, or from another package through the entry-point group
``kvsmooth_hooks.methods`` (``name = "package.module:Class"``).
"""

from __future__ import annotations

from .base import Call, Method, MethodError
from .registry import ENTRY_POINT_GROUP, METHODS, build_method, get_method, is_method, register_method

import importlib  # noqa: E402
import pkgutil  # noqa: E402

for _module in pkgutil.iter_modules(__path__):  # every method file registers itself (one file per method)
    importlib.import_module(f"{__name__}.{_module.name}")

from .dola import DoLa  # noqa: E402
from .middle_layer import MiddleLayer  # noqa: E402
from .pai import PAI  # noqa: E402
from .vcd import VCD  # noqa: E402

__all__ = ["Method", "Call", "MethodError", "METHODS", "ENTRY_POINT_GROUP", "register_method", "get_method",
           "build_method", "is_method", "VCD", "PAI", "DoLa", "MiddleLayer"]
