"""Architecture adapters: structure discovery for any Hugging Face decoder, plus the few true exceptions.

``get_adapter(model)`` returns, in order: an adapter whose ``accepts(model)`` is true (TransformerLens
``HookedTransformer`` and ``TransformerBridge``),
an explicit adapter listing the model's ``model_type`` (Falcon's fused layouts, GPT-2's eager-upcast
path), else :class:`GenericAdapter`, which reads the decoder, its layers, their self-attention
modules, key/value projections and head counts from the modules (:mod:`.discover`). A model it
cannot read raises :class:`UnsupportedModelError` naming the missing piece.

To add an adapter: one file here (or in your package, listed in the entry-point group
``kvsmooth_hooks.adapters``) with an :class:`Adapter` subclass decorated by ``@register_adapter``
(:mod:`.registry`).
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import CACHE_KWARGS, Adapter, ProjSlot
from .generic import GenericAdapter
from .registry import ADAPTERS, ENTRY_POINT_GROUP, get_adapter, register_adapter, supported_model_types
from .runtime import ForwardInfo, UnsupportedModelError

for _module in pkgutil.iter_modules(__path__):  # every adapter file registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ADAPTERS", "ENTRY_POINT_GROUP", "Adapter", "CACHE_KWARGS", "ForwardInfo", "GenericAdapter", "ProjSlot",
           "UnsupportedModelError", "get_adapter", "register_adapter", "supported_model_types"]
