"""The adapter for any Hugging Face decoder, built from :mod:`.discover` (no model-type list).

Layer indices are positions in the model's own layer list; layers that are not self-attention with
their own cache entry (Mamba / linear-attention mixers, cross-attention-only layers, layers reading
another layer's KV) are reported by :meth:`GenericAdapter.layer_kind` and never smoothed.
"""

from __future__ import annotations

import inspect

from torch import nn

from .base import Adapter, ProjSlot
from .runtime import UnsupportedModelError
from .discover import DecoderStructure, HeadLayout, LayerInfo, discover, kv_slots


def uses_attention_interface(attn: nn.Module) -> bool:
    """Whether ``attn``'s forward dispatches through transformers' attention registry (where attention rows
    are captured), read from its source; True when the source cannot be read."""
    try:
        src = inspect.getsource(type(attn).forward)
    except (OSError, TypeError):
        return True
    return any(t in src for t in ("ALL_ATTENTION_FUNCTIONS", "attention_interface", "get_interface"))


class GenericAdapter(Adapter):
    """Any decoder whose structure :func:`~.discover.discover` can read."""

    name = "generic"

    def __init__(self, model: nn.Module):
        self.model = model
        self.structure: DecoderStructure = discover(model)
        self.config = self.text_config()
        attn = [l for l in self.structure.layers if l.kind == "attention"]
        self._heads = {l.index: l.heads for l in attn}

    # ------------------------------------------------------------------ structure
    def text_config(self):
        cfg = getattr(self.structure.decoder, "config", None)
        if cfg is None:
            return super().text_config()
        return cfg

    def decoder(self) -> nn.Module:
        return self.structure.decoder

    def layers(self):
        return [l.module for l in self.structure.layers]

    def info(self, layer: int) -> LayerInfo:
        return self.structure.layers[layer]

    def layer_kind(self, layer: int) -> str:
        """``attention`` for layers that can be smoothed, else what the layer is (see :class:`LayerInfo`)."""
        return self.structure.layers[layer].kind

    def describe_layer(self, layer: int) -> str:
        info = self.structure.layers[layer]
        if info.kind == "shared_kv":
            src = f" of layer {info.reads}" if info.reads is not None else ""
            return f"layer {layer} reuses the KV cache{src} (shared KV): it is smoothed through that layer"
        if info.kind == "cross_attention":
            return f"layer {layer} is a cross-attention layer (it attends to encoder / image states, no own KV cache)"
        return f"layer {layer} is a {info.kind} layer, not self-attention (it keeps no KV cache)"

    def attention(self, layer: int) -> nn.Module:
        info = self.structure.layers[layer]
        if info.attention is None:
            raise UnsupportedModelError(self.describe_layer(layer))
        return info.attention

    def cache_index(self, layer: int) -> int:
        info = self.structure.layers[layer]
        return layer if info.cache_index is None else info.cache_index

    def heads(self, layer: int) -> HeadLayout:
        h = self._heads.get(layer)
        if h is None:
            raise UnsupportedModelError(
                f"{type(self.attention(layer)).__name__} (layer {layer}): cannot read its head counts")
        return h

    def layer_heads(self, layer: int) -> tuple[int, int, int]:
        h = self.heads(layer)
        return h.n_heads, h.n_kv, h.k_dim

    def key_slot(self, layer: int) -> ProjSlot:
        return kv_slots(self.attention(layer), self.heads(layer))[0]

    def value_slot(self, layer: int) -> ProjSlot:
        return kv_slots(self.attention(layer), self.heads(layer))[1]

    def check_session(self, site: str, needs_row: bool, plan=None) -> None:
        super().check_session(site, needs_row, plan)
        layers = self.smoothable_layers() if plan is None else plan.active_layers()
        kv = {i: self.heads(i).n_kv for i in layers}
        if len(set(kv.values())) > 1:
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: the selected layers have different KV head counts ({kv}); one session "
                "smooths layers of one head count: select layers with equal counts (config 'layers')"
            )
        latent = [i for i in layers if self.heads(i).latent]
        if latent and plan is not None and not bool((plan.key[latent] == plan.value[latent]).all()):
            raise UnsupportedModelError(
                f"{type(self.attention(latent[0])).__name__} (layer {latent[0]}) is multi-head latent attention: one "
                "compressed latent produces both the keys and the values of every head, so keys and values can only "
                "be smoothed together; use targets ['key', 'value'] on these layers"
            )
        for i in layers:
            attn = self.attention(i)
            if needs_row and not uses_attention_interface(attn):
                raise UnsupportedModelError(
                    f"{type(attn).__name__} (layer {i}) computes attention inline, not through transformers' attention "
                    "interface, so attention rows cannot be captured: use a scorer that reads no row "
                    "(key_similarity, constant, random)"
                )
            if site == "kv_proj":
                kv_slots(attn, self.heads(i))

    def find_cache(self, args: tuple, kwargs: dict):
        """The cache among an attention module's arguments; for encoder-decoder models its self-attention part."""
        cache = super().find_cache(args, kwargs)
        return getattr(cache, "self_attention_cache", cache)

    def smoothable_layers(self) -> list[int]:
        return self.structure.attention_layers()

    # ------------------------------------------------------------------ sizes (max over layers)
    def _first(self) -> HeadLayout:
        hs = [h for h in self._heads.values() if h is not None]
        if not hs:
            raise UnsupportedModelError(f"{type(self.model).__name__}: no attention layer with readable head counts")
        return hs[0]

    @property
    def n_heads(self) -> int:
        return max(h.n_heads for h in self._heads.values() if h is not None)

    @property
    def n_kv_heads(self) -> int:
        return max(h.n_kv for h in self._heads.values() if h is not None)

    @property
    def head_dim(self) -> int:
        return max(h.k_dim for h in self._heads.values() if h is not None)

    def model_type(self) -> str:
        return str(getattr(self.config, "model_type", "") or getattr(self.model.config, "model_type", ""))

    def attention_configs(self) -> list:
        seen, out = set(), []
        cfgs = [getattr(self.decoder(), "config", None)]
        cfgs += [getattr(self.structure.layers[i].attention, "config", None) for i in self.smoothable_layers()]
        for cfg in cfgs:
            if cfg is not None and id(cfg) not in seen and hasattr(cfg, "_attn_implementation_internal"):
                seen.add(id(cfg))
                out.append(cfg)
        return out
