"""TransformerLens ``HookedTransformer``: our notions mapped to its hook points and its own cache.

* layers: ``blocks``; attention: ``blocks[l].attn``; cache index: ``l``;
* key / value "projections": the hook points ``blocks[l].attn.hook_k`` / ``hook_v``
  (``[B, T, Hkv, D]``, new tokens only, *before* rotary embeddings);
* attention rows: ``blocks[l].attn.hook_pattern``;
* forwards: classified at ``blocks[0]`` (``HookedTransformer.generate`` calls ``forward`` directly, so
  hooks on the model itself never run) from the ``past_kv_cache_entry`` it receives; they end at
  ``blocks[-1]``;
* cache: each attention module receives its ``TransformerLensKeyValueCacheEntry`` as
  ``past_kv_cache_entry``; :meth:`layer_kv` returns ``past_keys`` / ``past_values`` transposed to
  ``[B, Hkv, T, D]`` (views: edits reach the cache). These hold keys **before** rotary embeddings
  (RoPE is applied to the whole cached K at every step), unlike Hugging Face caches.

TransformerLens itself is imported lazily (it costs seconds): this file does not import it.
"""

from __future__ import annotations

import torch

from .base import Adapter, ProjSlot
from .runtime import ForwardInfo, mask_2d
from .registry import register_adapter

ENTRY_KWARG = "past_kv_cache_entry"


def is_hooked_transformer(model) -> bool:
    return any(c.__name__ == "HookedTransformer" for c in type(model).__mro__)


@register_adapter
class HookedTransformerAdapter(Adapter):
    name = "transformer_lens"
    model_types = ()
    attention_attr = "attn"
    layers_attr = "blocks"
    cache_at_end = False  # each attention module receives its own cache entry: the cache site hooks each one

    @classmethod
    def accepts(cls, model) -> bool:
        return is_hooked_transformer(model)

    def text_config(self):
        return self.model.cfg

    def decoder(self):
        return self.model

    def entry_module(self):
        return self.layers()[0]

    def exit_module(self):
        return self.layers()[-1]

    def forward_info(self, args: tuple, kwargs: dict, known_past=None) -> ForwardInfo | None:
        """At ``blocks[0]``: the residual stream ``[B, T, d_model]`` and layer 0's cache entry (before it grows)."""
        entry = kwargs.get(ENTRY_KWARG)
        if entry is None:
            return None
        resid = kwargs.get("resid_pre", args[0] if args else None)
        batch, q_len = int(resid.shape[0]), int(resid.shape[1])
        past = int(entry.past_keys.shape[1])
        return ForwardInfo(batch, q_len, past, entry, mask_2d(kwargs.get("attention_mask"), batch, past + q_len),
                           resid.device)

    def find_cache(self, args: tuple, kwargs: dict):
        return kwargs.get(ENTRY_KWARG)

    def layer_kv(self, cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``cache`` is the layer's own entry (what :meth:`find_cache` found in its attention's arguments)."""
        return cache.past_keys.transpose(1, 2), cache.past_values.transpose(1, 2)

    def watch_reorder(self, cache, callback):
        return None  # TransformerLens has no beam search

    def cache_index(self, layer: int) -> int:
        return layer

    def key_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(self.attention(layer).hook_k)

    def value_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(self.attention(layer).hook_v)

    def row_module(self, layer: int):
        """The hook point whose output is layer ``layer``'s attention pattern ``[B, Hq, Q, T]``."""
        return self.attention(layer).hook_pattern

    @property
    def n_heads(self) -> int:
        return int(self.config.n_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "n_key_value_heads", None) or self.config.n_heads)

    @property
    def head_dim(self) -> int:
        return int(self.config.d_head)

    def name_or_path(self) -> str:
        return str(getattr(self.config, "model_name", "") or "")

    def model_type(self) -> str:
        return str(getattr(self.config, "original_architecture", "") or "")

    def attention_configs(self) -> list:
        return []
