"""Falcon: fused ``query_key_value`` in one of three layouts, chosen by the config.

* ``new_decoder_architecture`` (Falcon-40B/180B, Falcon2): per KV group ``[q * (H/Hkv), k, v]``;
* ``multi_query`` (Falcon-7B): ``[q (H*D) | k (D) | v (D)]``, one KV head;
* neither: per head ``[q_h, k_h, v_h]`` like GPT-NeoX.
"""

from .base import ProjSlot
from .runtime import UnsupportedModelError
from .discover import HeadLayout
from .generic import GenericAdapter
from .registry import register_adapter


class _SecondOutput:
    """Hooks registered here receive ``module``'s second output (its attention probabilities) as their output."""

    def __init__(self, module):
        self.module = module

    def register_forward_hook(self, hook):
        return self.module.register_forward_hook(lambda mod, args, out: hook(mod, args, out[1]))


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

    def row_module(self, layer: int):
        """With eager attention, Falcon's attention module returns its probabilities ``[B, H, Q, T]`` as the second
        output: the session reads rows there (Falcon computes attention inline, outside transformers' interface)."""
        return _SecondOutput(self.attention(layer)) if self.config._attn_implementation == "eager" else None

    def check_session(self, site: str, needs_row: bool, plan=None) -> None:
        super(GenericAdapter, self).check_session(site, needs_row, plan)
        if needs_row and self.config._attn_implementation != "eager":
            raise UnsupportedModelError(
                "Falcon computes attention inline (not through transformers' attention interface); its attention "
                f"probabilities exist only with eager attention, not '{self.config._attn_implementation}': load it with "
                "attn_implementation='eager' for row scorers, or use a scorer that reads no row (key_similarity, "
                "constant, random)"
            )
        if site == "cache" and self.config.new_decoder_architecture and self.n_kv_heads != self.n_heads:
            raise UnsupportedModelError(
                "Falcon's new decoder architecture caches every KV head repeated per query head "
                f"({self.n_heads} cached heads for {self.n_kv_heads} KV heads), so per-KV-head cache edits do not "
                "line up with the cache; use site 'kv_proj' for this model"
            )
