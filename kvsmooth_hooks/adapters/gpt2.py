"""GPT-2: fused ``attn.c_attn`` (Conv1D) producing ``[q | k | v]``, layers at ``transformer.h``."""

from .base import Adapter, ProjSlot


class GPT2Adapter(Adapter):
    name = "gpt2"
    model_types = ("gpt2",)
    layers_attr = "h"
    attention_attr = "attn"

    def _width(self) -> int:
        return self.n_heads * self.head_dim

    def key_slot(self, layer: int) -> ProjSlot:
        e = self._width()
        return ProjSlot(self.attention(layer).c_attn, e, 2 * e)

    def value_slot(self, layer: int) -> ProjSlot:
        e = self._width()
        return ProjSlot(self.attention(layer).c_attn, 2 * e, 3 * e)
