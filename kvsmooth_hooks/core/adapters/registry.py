"""The adapter registry: explicit adapters, registered with one call, like sites and scorers.

``@register_adapter`` on an :class:`~.base.Adapter` subclass (in a file of this folder, which the package imports
whole, or in your own package) adds it; other packages can also list it in the entry-point group
``kvsmooth_hooks.adapters`` (``name = "package.module:MyAdapter"``), loaded on the first :func:`get_adapter`.
An adapter is chosen when its ``accepts(model)`` is true, else when it lists the model's ``model_type``;
everything else goes to :class:`~.generic.GenericAdapter`.
"""

from __future__ import annotations

import warnings

from ..registry import entry_point_classes
from .base import Adapter
from .generic import GenericAdapter
from .runtime import UnsupportedModelError

__all__ = ["ADAPTERS", "ENTRY_POINT_GROUP", "BROKEN", "register_adapter", "get_adapter", "supported_model_types"]

#: explicit adapters, in registration order
ADAPTERS: list[type[Adapter]] = []
ENTRY_POINT_GROUP = "kvsmooth_hooks.adapters"
#: entry-point name -> why it could not be loaded
BROKEN: dict[str, str] = {}
_loaded = False


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``cls`` an explicit adapter (it needs ``accepts`` or ``model_types``)."""
    if not (getattr(cls, "model_types", ()) or "accepts" in vars(cls)):
        raise TypeError(f"{cls.__name__}: an adapter needs model_types or an accepts(model) classmethod")
    if cls not in ADAPTERS:
        ADAPTERS.append(cls)
    return cls


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    good, broken = entry_point_classes(ENTRY_POINT_GROUP, Adapter)
    for cls in good.values():
        register_adapter(cls)
    BROKEN.update(broken)
    for name, why in broken.items():
        warnings.warn(f"adapter plugin {name!r} ({ENTRY_POINT_GROUP}): {why}; it is skipped", stacklevel=3)


def supported_model_types() -> list[str]:
    """Model types with an explicit adapter (all others are discovered)."""
    _load_entry_points()
    return sorted({t for a in ADAPTERS for t in a.model_types})


def get_adapter(model) -> Adapter:
    """The adapter for ``model``, or :class:`UnsupportedModelError` naming what is missing."""
    _load_entry_points()
    for adapter in ADAPTERS:
        if "accepts" in vars(adapter) and adapter.accepts(model):
            return adapter(model)
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a Hugging Face PreTrainedModel (no .config) nor a TransformerLens "
            "HookedTransformer; kvsmooth_hooks hooks those"
        )
    types = [getattr(cfg, "model_type", None)]
    text = getattr(cfg, "text_config", None)
    if text is not None:
        types.insert(0, getattr(text, "model_type", None))
    for adapter in ADAPTERS:
        if any(t in adapter.model_types for t in types if t):
            return adapter(model)
    return GenericAdapter(model)
