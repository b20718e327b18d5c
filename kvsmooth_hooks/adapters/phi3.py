"""Phi-3: fused ``self_attn.qkv_proj`` producing ``[q (H*D) | k (Hkv*D) | v (Hkv*D)]``."""

from .base import Adapter, ProjSlot


class Phi3Adapter(Adapter):
    name = "phi3"
    model_types = ("phi3", "phimoe")

    def _slot(self, layer: int, which: int) -> ProjSlot:
        q, kv = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        start = q + which * kv
        return ProjSlot(self.attention(layer).qkv_proj, start, start + kv)

    def key_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 0)

    def value_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 1)
