"""Architecture adapters: one small file per family, plus this registry.

``get_adapter(model)`` picks the adapter from ``config.model_type`` (the language config for
multimodal models). To add an architecture, write ``adapters/<family>.py`` with an
:class:`Adapter` subclass listing its ``model_types`` and add it to :data:`ADAPTERS` below.
"""

from __future__ import annotations

from .base import CACHE_KWARGS, Adapter, ProjSlot
from .runtime import ForwardInfo, UnsupportedModelError
from .falcon import FalconAdapter
from .gpt2 import GPT2Adapter
from .gpt_neox import GPTNeoXAdapter
from .lens import HookedTransformerAdapter
from .llama import LlamaFamilyAdapter
from .phi3 import Phi3Adapter

#: Registry, in lookup order.
ADAPTERS: list[type[Adapter]] = [
    HookedTransformerAdapter,
    LlamaFamilyAdapter,
    GPT2Adapter,
    GPTNeoXAdapter,
    FalconAdapter,
    Phi3Adapter,
]


def supported_model_types() -> list[str]:
    return sorted({t for a in ADAPTERS for t in a.model_types})


def get_adapter(model) -> Adapter:
    """The adapter for ``model``, or :class:`UnsupportedModelError` naming the supported types."""
    for adapter in ADAPTERS:
        if getattr(adapter, "accepts", None) and adapter.accepts(model):
            return adapter(model)
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a Hugging Face PreTrainedModel (no .config); kvsmooth_hooks "
            f"supports model types {supported_model_types()}"
        )
    types = [getattr(cfg, "model_type", None)]
    text = getattr(cfg, "text_config", None)
    if text is not None:
        types.insert(0, getattr(text, "model_type", None))
    for adapter in ADAPTERS:
        if any(t in adapter.model_types for t in types if t):
            return adapter(model)
    if getattr(text if text is not None else cfg, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} uses an encoder-decoder language model (model_type '{types[0]}', e.g. T5 in "
            "InstructBLIP-FlanT5); kvsmooth_hooks smooths decoder-only self-attention caches: use a decoder-only "
            f"variant (OPT or Vicuna/Llama language model). Supported model types: {supported_model_types()}"
        )
    raise UnsupportedModelError(
        f"{type(model).__name__} (model_type '{types[-1]}') has no kvsmooth_hooks adapter; supported "
        f"model types: {supported_model_types()} (and TransformerLens HookedTransformer). Adding one is a short file: "
        "see docs/adapters.md"
    )


__all__ = ["ADAPTERS", "Adapter", "CACHE_KWARGS", "ForwardInfo", "ProjSlot", "UnsupportedModelError", "get_adapter", "supported_model_types"]
