"""GPT-NeoX / Pythia: fused ``attention.query_key_value``, interleaved per head as ``[q_h | k_h | v_h]``."""

from .base import Adapter, ProjSlot


class GPTNeoXAdapter(Adapter):
    name = "gpt_neox"
    model_types = ("gpt_neox",)
    attention_attr = "attention"

    def key_slot(self, layer: int) -> ProjSlot:
        d = self.head_dim
        return ProjSlot(self.attention(layer).query_key_value, d, 2 * d, groups=self.n_heads)

    def value_slot(self, layer: int) -> ProjSlot:
        d = self.head_dim
        return ProjSlot(self.attention(layer).query_key_value, 2 * d, 3 * d, groups=self.n_heads)
