"""GPT-2 (and DistilGPT-2): fused ``c_attn`` (a Conv1D) whose output is ``[q | k | v]``, ``E`` columns each."""

from .base import Adapter, ProjSlot


class GPT2Adapter(Adapter):
    """Layers at ``transformer.h``, attention ``h[i].attn``, keys/values = columns ``[E:2E]`` / ``[2E:3E]`` of ``c_attn``."""

    name = "gpt2"
    model_types = ("gpt2",)
    attention_attr = "attn"
    layers_attr = "h"

    def key_slot(self, layer: int) -> ProjSlot:
        e = self.n_heads * self.head_dim
        return ProjSlot(self.attention(layer).c_attn, e, 2 * e)

    def value_slot(self, layer: int) -> ProjSlot:
        e = self.n_heads * self.head_dim
        return ProjSlot(self.attention(layer).c_attn, 2 * e, 3 * e)

    def check_session(self, site: str, needs_row: bool) -> None:
        super().check_session(site, needs_row)
        if needs_row and getattr(self.config, "reorder_and_upcast_attn", False) and self.config._attn_implementation == "eager":
            from .base import UnsupportedModelError

            raise UnsupportedModelError(
                "GPT-2 with reorder_and_upcast_attn and eager attention bypasses transformers' attention interface, so "
                "attention rows cannot be captured; use attn_implementation='sdpa' or a scorer without rows"
            )
