"""GPT-NeoX / Pythia: fused ``query_key_value`` laid out per head as ``[q_h, k_h, v_h]`` (interleaved)."""

from .base import Adapter, ProjSlot


class GPTNeoXAdapter(Adapter):
    """Layers at ``gpt_neox.layers``, attention ``layers[i].attention``; the fused output is ``[H, 3, D]`` per token."""

    name = "gpt_neox"
    model_types = ("gpt_neox",)
    attention_attr = "attention"

    def key_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(self.attention(layer).query_key_value, interleave=(3, 1))

    def value_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(self.attention(layer).query_key_value, interleave=(3, 2))
