"""Falcon: fused ``query_key_value`` in one of three layouts, chosen by the config.

* ``new_decoder_architecture`` (Falcon-40B/180B, Falcon2): per KV group ``[q * (H/Hkv), k, v]``;
* ``multi_query`` (Falcon-7B): ``[q (H*D) | k (D) | v (D)]``, one KV head;
* neither: per head ``[q_h, k_h, v_h]`` like GPT-NeoX.
"""

from .base import ProjSlot
from .discover import HeadLayout
from .generic import GenericAdapter, uses_attention_interface
from .registry import register_adapter


@register_adapter
class FalconAdapter(GenericAdapter):
    """Discovered structure (``transformer.h[i].self_attention``); the fused layout and KV heads from the config."""

    name = "falcon"
    model_types = ("falcon",)

    def heads(self, layer: int) -> HeadLayout:
        c = self.config
        h = int(c.num_attention_heads)
        kv = int(c.num_kv_heads) if c.new_decoder_architecture else (1 if c.multi_query else h)
        d = int(c.hidden_size) // h
        return HeadLayout(h, kv, d, d)

    @property
    def n_heads(self) -> int:
        return self.heads(0).n_heads

    @property
    def n_kv_heads(self) -> int:
        return self.heads(0).n_kv

    @property
    def head_dim(self) -> int:
        return self.heads(0).k_dim

    def _slot(self, layer: int, index: int) -> ProjSlot:
        qkv, c, d = self.attention(layer).query_key_value, self.config, self.head_dim
        if c.new_decoder_architecture:
            return ProjSlot(qkv, interleave=(self.n_heads // self.n_kv_heads + 2, index - 2))
        if c.multi_query:
            start = self.n_heads * d + index * d
            return ProjSlot(qkv, start, start + d)
        return ProjSlot(qkv, interleave=(3, index + 1))

    def key_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 0)

    def value_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 1)

    def cache_head_repeat(self, layer: int) -> int:
        """The new decoder architecture, as long as Falcon wrote its attention inline (transformers <= 5.24), caches
        each KV head once per query head of its group (``[B, H, T, D]``, head ``j`` a copy of KV head
        ``j // (H / Hkv)``); through the attention interface (5.25) it caches each KV head once."""
        if not self.config.new_decoder_architecture or uses_attention_interface(self.attention(layer)):
            return 1
        return self.n_heads // self.n_kv_heads
