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
    """Where one projection's output lives.

    module: the nn.Module whose forward output holds the projection, ``[B, T, width]``.
    start/stop: the slice of the last dim that is this projection (``None`` = whole output).
    interleave: ``(per_group, index)`` for fused outputs laid out per head group instead of in
    contiguous blocks: the width is ``[groups, per_group, D]`` and this projection is entry
    ``index`` of every group (GPT-NeoX ``query_key_value``: ``(3, 1)`` for keys, ``(3, 2)`` for
    values; Falcon's new decoder architecture: ``(q_per_kv + 2, -2)`` / ``(q_per_kv + 2, -1)``).
    Applied after ``start``/``stop``. Outputs that are already split into heads (``[B, T, Hkv, D]``, e.g.
    TransformerLens ``hook_k`` / ``hook_v``) are used as they are.
    """

    module: nn.Module
    start: int | None = None
    stop: int | None = None
    interleave: tuple[int, int] | None = None

    def heads(self, output: torch.Tensor, n_kv: int, head_dim: int) -> torch.Tensor:
        """This projection inside ``output [B, T, width]`` as a ``[B, T, Hkv, D]`` view (writes reach ``output``)."""
        if output.dim() == 4:
            return output
        x = output[..., self.start:self.stop]
        if self.interleave is None:  # the slice's own width per head (value heads may differ from key heads)
            return x.unflatten(-1, (n_kv, -1))
        per_group, index = self.interleave
        return x.unflatten(-1, (n_kv, per_group, head_dim))[..., index, :]


class UnsupportedModelError(TypeError):
    """The model's architecture has no adapter (or a feature the adapter cannot serve)."""


class Adapter:
    """Base adapter for HF decoders laid out as ``decoder.layers[i].self_attn.{k,v}_proj``."""

    name: ClassVar[str] = "base"
    #: ``config.model_type`` values this adapter serves.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: attribute path from a decoder layer to its attention module.
    attention_attr: ClassVar[str] = "self_attn"
    #: attribute of the decoder holding its list of layers (``h`` in GPT-2 and Falcon).
    layers_attr: ClassVar[str] = "layers"
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
        """The module whose forward receives ``input_ids``/``inputs_embeds`` and the cache."""
        if hasattr(self.model, "get_decoder"):
            dec = self.model.get_decoder()
            if hasattr(dec, self.layers_attr):
                return dec
        for path in ("model", "model.decoder", "model.language_model", "transformer", "gpt_neox"):
            mod = _get(self.model, path)
            if mod is not None and hasattr(mod, self.layers_attr):
                return mod
        raise UnsupportedModelError(f"{type(self.model).__name__}: cannot find the decoder's `{self.layers_attr}`")

    def layers(self) -> Sequence[nn.Module]:
        return list(getattr(self.decoder(), self.layers_attr))

    def smoothable_layers(self) -> list[int]:
        """Indices of layers with a self-attention KV cache of their own (all layers unless an adapter says)."""
        return list(range(self.n_layers))

    def describe_layer(self, layer: int) -> str:
        """Why ``layer`` cannot be smoothed (for error messages)."""
        return f"layer {layer} has no self-attention KV cache of its own"

    def layer_heads(self, layer: int) -> tuple[int, int, int]:
        """``(query heads, KV heads, key head dim)`` of one layer."""
        return self.n_heads, self.n_kv_heads, self.head_dim

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

    def layer_device(self, layer: int) -> torch.device | None:
        """Where layer ``layer`` runs: accelerate's execution device under ``device_map``, else its parameters' device."""
        mod = self.layers()[layer]
        for m in (mod, self.attention(layer)):
            hook = getattr(m, "_hf_hook", None)
            dev = getattr(hook, "execution_device", None)
            if dev is not None:
                return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
        for p in mod.parameters():
            if p.device.type != "meta":
                return p.device
        return None

    def check_session(self, site: str, needs_row: bool, layers=None, plan=None) -> None:
        """Raise :class:`UnsupportedModelError` if this model cannot serve ``site`` (or attention rows) on
        ``layers`` (the smoothed layer indices; None = all)."""

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

    def name_or_path(self) -> str:
        return str(getattr(self.model.config, "name_or_path", "") or "")

    def model_type(self) -> str:
        return str(getattr(self.config, "model_type", ""))

    def identity(self) -> dict:
        """Model identity recorded with plans and traces."""
        return {
            "class": type(self.model).__name__,
            "name_or_path": self.name_or_path(),
            "model_type": self.model_type(),
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
            if cache is not None:  # encoder-decoder models: the decoder's self-attention part
                return getattr(cache, "self_attention_cache", cache)
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
        window = getattr(layer, "sliding_window", None)
        if getattr(layer, "is_sliding", False) and window is not None and window < 3:
            raise UnsupportedModelError(
                f"cache layer {index} is a sliding window of {window} tokens, which keeps {window - 1} entry after "
                "each step: the previous token's key/value is gone before the 'cache' site can read it; use site "
                "'kv_proj' for this model"
            )
        keys = getattr(layer, "keys", None)
        if not isinstance(keys, torch.Tensor) or type(layer).__name__.startswith(("Static", "Quant", "Quanto", "HQQ", "Fp8")):
            raise UnsupportedModelError(
                f"cache layer type {type(layer).__name__} is not supported by the 'cache' site (static, "
                "quantized and offloaded caches re-index or re-encode entries); generate with the default "
                "DynamicCache, or use site 'kv_proj'"
            )
        return layer


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
