"""The adapter for any Hugging Face decoder, built from :mod:`.discover` (no model-type list).

Layer indices are positions in the model's own layer list; layers that are not self-attention with
their own cache entry (Mamba / linear-attention mixers, cross-attention-only layers, layers reading
another layer's KV) are reported by :meth:`GenericAdapter.layer_kind` and never smoothed.
"""

from __future__ import annotations

import functools
import inspect
import re

from torch import nn

from ..inline import computes_attention_inline
from ..registry import SITES
from .base import CACHE_KWARGS, Adapter, ProjSlot
from .cache_access import self_attention_part
from .discover import DecoderStructure, HeadLayout, LayerInfo, discover, kv_slots
from .runtime import ForwardInfo, UnsupportedModelError

#: names under which attention modules receive the cache (FSMT: ``layer_state``)
ATTENTION_CACHE_KWARGS = CACHE_KWARGS + ("layer_state", "past_key_value")


@functools.lru_cache(maxsize=None)
def _signature(cls: type) -> inspect.Signature | None:
    try:
        return inspect.signature(cls.forward)
    except (TypeError, ValueError):
        return None


def named_arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """A forward's arguments by name (positional ones bound to ``module.forward``'s signature)."""
    sig = _signature(type(module)) if args else None
    if sig is None:
        return kwargs
    try:
        bound = sig.bind_partial(module, *args, **kwargs).arguments
    except TypeError:
        return kwargs
    out = {}
    for k, v in list(bound.items())[1:]:  # drop self
        if sig.parameters[k].kind == inspect.Parameter.VAR_KEYWORD:
            out.update(v)
        else:
            out[k] = v
    return out


def takes_cache(module: nn.Module) -> bool:
    """Whether ``module.forward`` has a parameter through which a KV cache can reach it."""
    sig = _signature(type(module))
    return sig is not None and any(n in sig.parameters for n in ATTENTION_CACHE_KWARGS)


def uses_attention_interface(attn: nn.Module) -> bool:
    """Whether ``attn``'s forward dispatches through transformers' attention registry (where attention rows
    are captured), read from its source; True when the source cannot be read."""
    try:
        src = inspect.getsource(type(attn).forward)
    except (OSError, TypeError):
        return True
    return any(t in src for t in ("ALL_ATTENTION_FUNCTIONS", "attention_interface", "get_interface"))


#: ``config._attn_implementation == "sdpa"`` / ``in ("eager", "sdpa")``: the names the forward compares with
_BRANCH = re.compile(r"_attn_implementation\s*(?:==|!=|in|not in)\s*([\(\[][^\)\]]*[\)\]]|[\"'][\w|-]+[\"'])")


def branches_on_implementation(attn: nn.Module, impl: str) -> bool:
    """Whether ``attn``'s forward compares the implementation's name with ``impl`` (AXK2, HY-V4 and DeepSeek-V3.2 apply
    their sparse indexer's mask only ``in ("eager", "sdpa")``; GPT-2 upcasts only ``== "eager"``): renaming it to
    ``<impl>_kvsmooth`` would change the model's output, so its rows are read inline (:mod:`kvsmooth_hooks.core.inline`)."""
    try:
        src = inspect.getsource(type(attn).forward)
    except (OSError, TypeError):
        return False
    return any(re.search(rf"[\"']{re.escape(impl)}[\"']", m.group(1)) for m in _BRANCH.finditer(src))


class GenericAdapter(Adapter):
    """Any decoder whose structure :func:`~.discover.discover` can read."""

    name = "generic"

    def __init__(self, model: nn.Module):
        self.model = model
        self.structure: DecoderStructure = discover(model)
        self.config = self.text_config()
        attn = [l for l in self.structure.layers if l.kind == "attention"]
        self._heads = {l.index: l.heads for l in attn}
        self._init_runtime()

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
        if len(set(kv.values())) > 1 and plan is not None and plan.granularity == "head":
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: the selected layers have different KV head counts ({kv}); at granularity "
                "'head' one session needs one count: use granularity 'layer', or select layers with equal counts"
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
            if not takes_cache(attn) and not takes_cache(self.decoder()):
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} generates without a KV cache ({type(attn).__name__}.forward takes none): "
                    "it recomputes every position at each step, so there are no cached keys and values to smooth"
                )
            if SITES[site].hooks_projections and getattr(attn, "ngram", None):
                raise UnsupportedModelError(
                    f"{type(attn).__name__} (layer {i}) projects the main and n-gram prediction streams together, so its "
                    "key/value projections do not hold one entry per generated token; use site 'cache'"
                )
            if needs_row and self.row_module(i) is None and self.inline_attention(i) and not computes_attention_inline(attn):
                raise UnsupportedModelError(
                    f"{type(attn).__name__} (layer {i}) computes attention neither through transformers' attention "
                    "interface nor with a softmax or scaled_dot_product_attention call of its own, so attention rows "
                    "cannot be captured: use a scorer that reads no row (key_similarity, constant, random)"
                )
            if SITES[site].hooks_projections:
                kv_slots(attn, self.heads(i))

    def inline_attention(self, layer: int) -> bool:
        attn = self.attention(layer)
        impl = str(getattr(getattr(attn, "config", None) or self.config, "_attn_implementation", "") or "sdpa")
        return not uses_attention_interface(attn) or branches_on_implementation(attn, impl.removesuffix("_kvsmooth"))

    def find_cache(self, args: tuple, kwargs: dict):
        """The cache among an attention module's arguments (positional ones bound by the attention modules'
        signature); for encoder-decoder models its self-attention part."""
        cache = self._find(kwargs, ATTENTION_CACHE_KWARGS)
        if cache is None and args:
            attn = self.attention(self.smoothable_layers()[0])
            cache = self._find(named_arguments(attn, args, kwargs), ATTENTION_CACHE_KWARGS)
        return self_attention_part(cache)

    def forward_info(self, args: tuple, kwargs: dict, known_past=None) -> ForwardInfo | None:
        """As the base, with positional arguments bound by name (decoders called as ``encoder(hidden, mask, ...)``)."""
        named = named_arguments(self.entry_module(), args, kwargs)
        if named.get("input_ids") is None and named.get("inputs_embeds") is None and named.get("hidden_states") is not None:
            named = {**named, "inputs_embeds": named["hidden_states"]}
        ids, k = named.get("input_ids"), getattr(self.entry_module(), "num_codebooks", None)
        if isinstance(k, int) and k > 1 and named.get("inputs_embeds") is None and ids is not None and ids.dim() == 2 \
                and ids.shape[0] % k == 0:  # Musicgen: ids [B * codebooks, T], summed into one stream per sequence
            named = {**named, "input_ids": ids.view(-1, k, ids.shape[-1])[:, 0]}
        info = super().forward_info((), named, known_past)
        if info is not None:  # BLIP's text decoder gets a DynamicCache at the prefill, then an EncoderDecoderCache around
            info.cache = self_attention_part(info.cache)  # it: one run, identified by the self-attention part
        return info

    def smoothable_layers(self) -> list[int]:
        return self.structure.attention_layers()

    # ------------------------------------------------------------------ sizes (max over layers)
    def _all(self) -> list[HeadLayout]:
        hs = [h for h in self._heads.values() if h is not None]
        if not hs:
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: cannot read the head counts of its attention modules "
                f"({type(self.attention(self.smoothable_layers()[0])).__name__}: no num_heads / head_dim attributes); "
                "an explicit adapter is needed"
            )
        return hs

    @property
    def n_heads(self) -> int:
        return max(h.n_heads for h in self._all())

    @property
    def n_kv_heads(self) -> int:
        return max(h.n_kv for h in self._all())

    @property
    def head_dim(self) -> int:
        return max(h.k_dim for h in self._all())

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
