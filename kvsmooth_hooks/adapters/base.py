"""What an adapter maps: our notions -> one architecture's modules.

An adapter answers, for one model instance: which module is the language decoder (its forward
receives the KV cache), which modules are its decoder layers and their self-attention, where
the key and value projections are (separate modules, or slices of a fused QKV output), the
head counts, and under which keyword the cache travels (``cache`` from transformers 5.24,
``past_key_values`` before, ``layer_past`` in some older models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import nn

#: Keyword names under which attention modules and decoders receive the KV cache.
CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


@dataclass(frozen=True)
class ProjSlot:
    """Where one projection's output lives inside a module's forward output ``[B, T, width]``.

    module: the nn.Module whose output holds the projection.
    start/stop: the slice of the last dim that is this projection (``None`` = the whole output).
    groups: for interleaved fused QKV layouts, the output is first viewed as ``[B, T, groups, width/groups]``
        and the slice is taken inside every group (GPT-NeoX: one group per head, ``[q_h | k_h | v_h]``).
    """

    module: nn.Module
    start: int | None = None
    stop: int | None = None
    groups: int | None = None

    def heads(self, out: torch.Tensor, n_kv: int, head_dim: int) -> torch.Tensor:
        """A *view* ``[B, T, n_kv, head_dim]`` of this projection inside ``out`` (writes go through)."""
        b, t = out.shape[:2]
        x = out if self.groups is None else out.view(b, t, self.groups, -1)
        return x[..., self.start:self.stop].view(b, t, n_kv, head_dim)


class UnsupportedModelError(TypeError):
    """The model's architecture has no adapter (or a feature the adapter cannot serve)."""


class Adapter:
    """Base adapter for HF decoders laid out as ``decoder.layers[i].self_attn.{k,v}_proj``."""

    name: ClassVar[str] = "base"
    #: ``config.model_type`` values this adapter serves.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: attribute of the decoder holding its layers (a ModuleList).
    layers_attr: ClassVar[str] = "layers"
    #: attribute path from a decoder layer to its attention module.
    attention_attr: ClassVar[str] = "self_attn"
    #: whether the attention calls transformers' AttentionInterface (needed for attention-row scorers).
    attention_interface: ClassVar[bool] = True
    key_attr: ClassVar[str] = "k_proj"
    value_attr: ClassVar[str] = "v_proj"

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = self.text_config()

    # -------------------------------------------------------------- structure
    def text_config(self):
        """The language model's config (``text_config`` for multimodal models)."""
        cfg = self.model.config
        return getattr(cfg, "text_config", None) or cfg

    def decoder(self) -> nn.Module:
        """The language decoder: the module holding the decoder layers (``layers_attr``), whose forward
        receives ``input_ids``/``inputs_embeds`` and the cache. Vision towers are never searched."""
        roots = []
        if hasattr(self.model, "get_decoder"):
            try:
                roots.append(self.model.get_decoder())
            except (AttributeError, ValueError, NotImplementedError):
                pass
        roots.append(self.model)
        for root in roots:
            found = _find_owner(root, self.layers_attr)
            if found is not None:
                return found
        raise UnsupportedModelError(
            f"{type(self.model).__name__}: cannot find the language decoder's `{self.layers_attr}` "
            f"(adapter '{self.name}')"
        )

    def layers(self) -> Sequence[nn.Module]:
        return list(getattr(self.decoder(), self.layers_attr))

    def attention(self, layer: int) -> nn.Module:
        return _get(self.layers()[layer], self.attention_attr)

    def cache_index(self, layer: int) -> int:
        """Index of this layer in the cache object (``attn.layer_idx`` in HF models)."""
        idx = getattr(self.attention(layer), "layer_idx", None)
        return layer if idx is None else int(idx)

    def key_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(getattr(self.attention(layer), self.key_attr))

    def value_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(getattr(self.attention(layer), self.value_attr))

    # -------------------------------------------------------------- sizes
    @property
    def n_layers(self) -> int:
        return len(self.layers())

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def head_dim(self) -> int:
        hd = getattr(self.config, "head_dim", None)
        return int(hd) if hd else int(self.config.hidden_size) // self.n_heads

    def identity(self) -> dict:
        """Model identity recorded with plans and traces."""
        return {
            "class": type(self.model).__name__,
            "name_or_path": str(getattr(self.model.config, "name_or_path", "") or ""),
            "model_type": str(getattr(self.config, "model_type", "")),
            "adapter": self.name,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
        }

    # -------------------------------------------------------------- runtime
    def attention_configs(self) -> list:
        """Config objects whose ``_attn_implementation`` the attention modules and mask code read."""
        seen, out = set(), []
        for cfg in [getattr(self.decoder(), "config", None)] + [
            getattr(self.attention(i), "config", None) for i in range(self.n_layers)
        ]:
            if cfg is not None and id(cfg) not in seen:
                seen.add(id(cfg))
                out.append(cfg)
        return out

    @staticmethod
    def find_cache(kwargs: dict, args: tuple = ()):
        """The cache object among a forward's keyword arguments (any known name), or None."""
        for name in CACHE_KWARGS:
            cache = kwargs.get(name)
            if cache is not None:
                return cache
        return None

    @staticmethod
    def check_cache_layer(cache, index: int):
        """The cache layer object at ``index``; a clear error for cache types we cannot edit."""
        layers = getattr(cache, "layers", None)
        if layers is None:
            raise UnsupportedModelError(
                f"cache of type {type(cache).__name__} has no per-layer storage; the 'cache' site needs a "
                "transformers DynamicCache (the default of generate); use site 'kv_proj' otherwise"
            )
        layer = layers[index]
        keys = getattr(layer, "keys", None)
        if not isinstance(keys, torch.Tensor) or type(layer).__name__.startswith(("Static", "Quant", "Quanto", "HQQ", "Fp8")):
            raise UnsupportedModelError(
                f"cache layer type {type(layer).__name__} is not supported by the 'cache' site (static, "
                "quantized and offloaded caches re-index or re-encode entries); generate with the default "
                "DynamicCache, or use site 'kv_proj'"
            )
        return layer


_DESCEND = ("model", "language_model", "decoder", "transformer", "gpt_neox", "text_model")


def _find_owner(module: nn.Module, attr: str, depth: int = 4):
    """The first module (breadth-first through known wrapper names) with a ModuleList at ``attr``."""
    level = [module]
    for _ in range(depth):
        nxt = []
        for m in level:
            if isinstance(getattr(m, attr, None), nn.ModuleList):
                return m
            nxt += [c for name in _DESCEND if isinstance(c := getattr(m, name, None), nn.Module)]
        level = nxt
    return None


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
