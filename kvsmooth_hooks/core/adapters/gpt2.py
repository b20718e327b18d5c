"""GPT-2: discovered like any decoder (fused ``c_attn`` Conv1D, ``[q | k | v]``); one exception: with
``reorder_and_upcast_attn`` and eager attention it bypasses transformers' attention interface."""

from .runtime import UnsupportedModelError
from .generic import GenericAdapter
from .registry import register_adapter


@register_adapter
class GPT2Adapter(GenericAdapter):
    name = "gpt2"
    model_types = ("gpt2",)

    def check_session(self, site: str, needs_row: bool, plan=None) -> None:
        if needs_row and getattr(self.config, "reorder_and_upcast_attn", False) and self.config._attn_implementation == "eager":
            raise UnsupportedModelError(
                "GPT-2 with reorder_and_upcast_attn and eager attention bypasses transformers' attention interface, so "
                "attention rows cannot be captured; use attn_implementation='sdpa' or a scorer without rows"
            )
        super().check_session(site, needs_row, plan)
