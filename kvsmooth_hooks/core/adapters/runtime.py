"""Runtime pieces adapters share: what a forward is about, padding masks, Hugging Face cache layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


class UnsupportedModelError(UserError, TypeError):
    """The model's architecture has no adapter (or a feature the adapter cannot serve)."""


@dataclass
class ForwardInfo:
    """One forward as the session sees it at :meth:`Adapter.entry_module`.

    batch / q_len: sequences and new tokens; past: cached positions before this forward;
    cache: the cache object (identity tells one generation from another);
    mask: bool ``[B, past + q_len]`` (True = real token) or None when every position is real;
    static: the cache is a static one (``[B, H, max_cache_len, D]``, entries at absolute positions).
    """

    batch: int
    q_len: int
    past: int
    cache: object
    mask: torch.Tensor | None
    device: torch.device
    static: bool = False


def mask_2d(mask, batch: int, total: int, static: bool = False) -> torch.Tensor | None:
    """A padding mask ``[B, total]`` (bool) from what decoders receive: ``[B, T]`` 0/1, a dict of
    per-layer-type masks (Gemma 3 multimodal), or a 4D ``[B, 1, Q, T]`` bool / additive mask (the last
    query's row: with causal or full attention it sees every real position). ``static``: a 4D mask spans
    a static cache's ``max_cache_len`` positions, of which the first ``total`` are written."""
    if isinstance(mask, dict):
        mask = mask.get("full_attention", next((m for m in mask.values() if isinstance(m, torch.Tensor)), None))
    if not isinstance(mask, torch.Tensor):
        return None
    if mask.dim() == 2:
        m = mask.to(torch.bool)
    elif mask.dim() == 4:
        row = mask[:, 0, -1, :]
        m = row if row.dtype == torch.bool else row == 0
        if static:
            m = m[:, :total]
    else:
        return None
    m = m[:, -total:]
    if m.shape[0] != batch:
        m = m.expand(batch, -1)
    return m


def check_cache_layer(cache, index: int):
    """The cache layer object at ``index``; a clear error for cache types the ``cache`` site cannot edit."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise UnsupportedModelError(
            f"cache of type {type(cache).__name__} has no per-layer storage; the 'cache' site needs a "
            "transformers DynamicCache (the default of generate); use site 'kv_proj' otherwise"
        )
    layer = layers[index]
    window = getattr(layer, "sliding_window", None)
    if getattr(layer, "is_sliding", False) and window is not None and window < 3:
        raise UnsupportedModelError(
            f"cache layer {index} is a sliding window of {window} tokens, which keeps {window - 1} entry after "
            "each step: the previous token's key/value is gone before the 'cache' site can read it; use site "
            "'kv_proj' for this model"
        )
    keys = getattr(layer, "keys", None)
    if not isinstance(keys, torch.Tensor) or (not is_static_layer(layer) and type(layer).__name__.startswith(
            ("Static", "Quant", "Quanto", "HQQ", "Fp8"))):
        raise UnsupportedModelError(
            f"cache layer type {type(layer).__name__} is not supported by the 'cache' site (sliding static, "
            "quantized and offloaded caches re-index or re-encode entries); generate with the default "
            "DynamicCache or cache_implementation='static', or use site 'kv_proj'"
        )
    return layer


def is_static_layer(layer) -> bool:
    """A full-length static cache layer (``[B, H, max_cache_len, D]``, entries written at absolute positions)."""
    return type(layer).__name__ == "StaticLayer"  # by name: runs per layer and step, and needs no import


def is_static_cache(cache) -> bool:
    """Whether ``cache`` holds static layers (every layer of a Hugging Face cache has one kind here)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and any(is_static_layer(layer) for layer in layers)
