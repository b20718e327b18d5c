"""Inference-time methods as plug-ins beside the KVSmooth session: one file per method (see docs/methods.md).

``build_method("vcd", alpha=1.0).generate(model, **inputs, max_new_tokens=64)``; registry :data:`METHODS`,
:func:`register_method`, entry-point group ``kvsmooth_hooks.methods``.
"""

from .base import Call, Method, MethodError  # noqa: F401
from .registry import ENTRY_POINT_GROUP, METHODS, build_method, get_method, register_method  # noqa: F401
from .vcd import VCD  # noqa: F401
from .pai import PAI  # noqa: F401
from .dola import DoLa  # noqa: F401
from .middle_layer import MiddleLayer  # noqa: F401

__all__ = ["Method", "Call", "MethodError", "METHODS", "ENTRY_POINT_GROUP", "register_method", "get_method",
           "build_method", "VCD", "PAI", "DoLa", "MiddleLayer"]
