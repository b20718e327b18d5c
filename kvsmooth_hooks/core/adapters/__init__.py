"""Architecture adapters: structure discovery for any Hugging Face decoder, plus the few true exceptions.

``get_adapter(model)`` returns, in order: an adapter whose ``accepts(model)`` is true (TransformerLens
``HookedTransformer`` and ``TransformerBridge``),
an explicit adapter listing the model's ``model_type`` (Falcon's fused layouts, GPT-2's eager-upcast
path), else :class:`GenericAdapter`, which reads the decoder, its layers, their self-attention
modules, key/value projections and head counts from the modules (:mod:`.discover`). A model it
cannot read raises :class:`UnsupportedModelError` naming the missing piece.
"""

from __future__ import annotations

from .base import CACHE_KWARGS, Adapter, ProjSlot
from .runtime import ForwardInfo, UnsupportedModelError
from .bridge import TransformerBridgeAdapter
from .falcon import FalconAdapter
from .generic import GenericAdapter
from .gpt2 import GPT2Adapter
from .lens import HookedTransformerAdapter

#: Explicit adapters, in lookup order; everything else goes to :class:`GenericAdapter`.
ADAPTERS: list[type[Adapter]] = [
    HookedTransformerAdapter,
    TransformerBridgeAdapter,
    GPT2Adapter,
    FalconAdapter,
]


def supported_model_types() -> list[str]:
    """Model types with an explicit adapter (all others are discovered)."""
    return sorted({t for a in ADAPTERS for t in a.model_types})


def get_adapter(model) -> Adapter:
    """The adapter for ``model``, or :class:`UnsupportedModelError` naming what is missing."""
    for adapter in ADAPTERS:
        if getattr(adapter, "accepts", None) and adapter.accepts(model):
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


__all__ = ["ADAPTERS", "Adapter", "CACHE_KWARGS", "ForwardInfo", "GenericAdapter", "ProjSlot", "UnsupportedModelError",
           "get_adapter", "supported_model_types"]
