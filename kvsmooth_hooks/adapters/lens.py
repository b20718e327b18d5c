"""TransformerLens ``HookedTransformer``: our notions mapped to its hook points.

* layers: ``blocks``; attention: ``blocks[l].attn``; cache index: ``l``;
* key / value "projections": the hook points ``blocks[l].attn.hook_k`` / ``hook_v``
  (``[B, T, Hkv, D]``, new tokens only, *before* rotary embeddings);
* attention rows: ``blocks[l].attn.hook_pattern``;
* cache: the model's own ``TransformerLensKeyValueCache`` entries (``past_keys`` / ``past_values``,
  ``[B, T, Hkv, D]``), which hold keys **before** rotary embeddings (RoPE is applied to the whole
  cached K at every step), unlike Hugging Face caches.

The session for these models is :class:`kvsmooth_hooks.lens.LensSession`; ``smooth(model, cfg)``
picks it. TransformerLens itself is imported lazily (it costs seconds): this file does not import it.
"""

from __future__ import annotations

from .base import Adapter, ProjSlot


def is_hooked_transformer(model) -> bool:
    return any(c.__name__ == "HookedTransformer" for c in type(model).__mro__)


class HookedTransformerAdapter(Adapter):
    name = "transformer_lens"
    model_types = ()
    attention_attr = "attn"
    layers_attr = "blocks"

    @classmethod
    def accepts(cls, model) -> bool:
        return is_hooked_transformer(model)

    def text_config(self):
        return self.model.cfg

    def decoder(self):
        return self.model

    def cache_index(self, layer: int) -> int:
        return layer

    def key_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(self.attention(layer).hook_k)

    def value_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(self.attention(layer).hook_v)

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
