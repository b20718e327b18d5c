"""Falcon: fused ``self_attention.query_key_value``; layers at ``transformer.h``.

Falcon computes attention inline (not through transformers' attention interface), so scorers that read
attention rows are refused; ``key_similarity``, ``constant`` and ``random`` work at both sites.
Layouts: multi-query ``[q (H*D) | k (D) | v (D)]`` and multi-head ``[q_h | k_h | v_h]`` per head. The
``new_decoder_architecture`` (Falcon-40B/180B) broadcasts grouped keys to every query head inside the
cache, so cache entries and projections disagree on the head count: it is refused with a clear error.
"""

from .base import Adapter, ProjSlot, UnsupportedModelError


class FalconAdapter(Adapter):
    name = "falcon"
    model_types = ("falcon",)
    layers_attr = "h"
    attention_attr = "self_attention"
    attention_interface = False

    def __init__(self, model):
        super().__init__(model)
        if getattr(self.config, "new_decoder_architecture", False):
            raise UnsupportedModelError(
                "Falcon with new_decoder_architecture=True (Falcon-40B/180B layout) is not supported: its cache "
                "stores keys broadcast to every query head; Falcon-7B-style multi-query and multi-head layouts are"
            )

    @property
    def n_kv_heads(self) -> int:
        return 1 if getattr(self.config, "multi_query", False) else self.n_heads

    def _slot(self, layer: int, which: int) -> ProjSlot:
        mod = self.attention(layer).query_key_value
        d, h = self.head_dim, self.n_heads
        if self.n_kv_heads == 1:
            start = h * d + which * d
            return ProjSlot(mod, start, start + d)
        return ProjSlot(mod, (1 + which) * d, (2 + which) * d, groups=h)

    def key_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 0)

    def value_slot(self, layer: int) -> ProjSlot:
        return self._slot(layer, 1)
