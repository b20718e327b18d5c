"""Phi-3 / Phi-3.5 / Phi-4-mini: fused ``qkv_proj`` whose output is ``[q (H*D) | k (Hkv*D) | v (Hkv*D)]``."""

from .base import Adapter, ProjSlot


class Phi3Adapter(Adapter):
    """Llama layout, except keys and values are contiguous slices of ``self_attn.qkv_proj``."""

    name = "phi3"
    model_types = ("phi3",)

    def _slot(self, layer: int, index: int) -> ProjSlot:
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        start = q + index * kv
        return ProjSlot(self.attention(layer).qkv_proj, start, start + kv)

    def key_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 0)

    def value_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 1)
