"""What an adapter maps: our notions -> one architecture's modules.

An adapter answers, for one model instance: which module is the language decoder (its forward
receives the KV cache), which modules are its decoder layers and their self-attention, where
the key and value projections are (separate modules, or slices of a fused QKV output), the
head counts, and under which keyword the cache travels (``cache`` from transformers 5.24,
``past_key_values`` before, ``layer_past`` in some older models).

An adapter is an *instance* bound to one model, and it owns every access the session and the
sites make to that model:

* structure: :meth:`decoder`, :meth:`layers`, :meth:`attention`, :meth:`key_slot` / :meth:`value_slot`,
  head counts (:meth:`layer_heads` per layer; ``n_heads`` / ``n_kv_heads`` / ``head_dim`` model-wide);
* forwards: :meth:`entry_module` (its pre-hook classifies each forward from :meth:`forward_info`) and
  :meth:`exit_module` (its hook ends the forward);
* the cache: :meth:`find_cache` (in an attention module's forward arguments), :meth:`layer_kv`
  (one layer's ``[B, Hkv, T, D]`` keys / values, editable in place), :meth:`layers_kv` (several layers at the
  end of a forward, from the decoder's cache: ``cache_at_end``), :meth:`read_kv` / :meth:`write_kv`
  (one position per sequence) and :meth:`watch_reorder` (beam search).

Subclasses override only what differs (see ``lens.py`` for a model with its own cache type).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from .cache_access import CACHE_KWARGS, CacheAccess
from .order import key_untouched_until_value
from .runtime import ForwardInfo, UnsupportedModelError, mask_2d


@dataclass(frozen=True)
class ProjSlot:
    """Where one projection's output lives.

    module: the nn.Module whose forward output holds the projection, ``[B, T, width]``.
    start/stop: the slice of the last dim that is this projection (``None`` = whole output).
    interleave: ``(per_group, index)`` for fused outputs laid out per head group instead of in
    contiguous blocks: the width is ``[groups, per_group, D]`` and this projection is entry
    ``index`` of every group (GPT-NeoX ``query_key_value``: ``(3, 1)`` for keys, ``(3, 2)`` for
    values; Falcon's new decoder architecture: ``(q_per_kv + 2, -2)`` / ``(q_per_kv + 2, -1)``).
    Applied after ``start``/``stop``. Outputs that are already split into heads (``[B, T, Hkv, D]``, e.g.
    TransformerLens ``hook_k`` / ``hook_v``) are used as they are.
    """

    module: nn.Module
    start: int | None = None
    stop: int | None = None
    interleave: tuple[int, int] | None = None

    def heads(self, output: torch.Tensor, n_kv: int, head_dim: int) -> torch.Tensor:
        """This projection inside ``output [B, T, width]`` as a ``[B, T, Hkv, D]`` view (writes reach ``output``)."""
        if output.dim() == 4:
            return output
        x = output if self.start is None and self.stop is None else output[..., self.start:self.stop]
        if self.interleave is None:  # the slice's own width per head (value heads may differ from key heads)
            return x.unflatten(-1, (n_kv, -1))
        per_group, index = self.interleave
        return x.unflatten(-1, (n_kv, per_group, head_dim))[..., index, :]


class Adapter(CacheAccess):
    """Base adapter for HF decoders laid out as ``decoder.layers[i].self_attn.{k,v}_proj``."""

    name: ClassVar[str] = "base"
    #: ``config.model_type`` values this adapter serves.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: attribute path from a decoder layer to its attention module.
    attention_attr: ClassVar[str] = "self_attn"
    #: attribute of the decoder holding its list of layers (``h`` in GPT-2 and Falcon).
    layers_attr: ClassVar[str] = "layers"
    key_attr: ClassVar[str] = "k_proj"
    value_attr: ClassVar[str] = "v_proj"
    #: True if the cache the decoder receives (:attr:`ForwardInfo.cache`) holds every layer's entries, so that a
    #: site can read them all with :meth:`layers_kv` when the forward ends instead of hooking each attention module
    #: (Hugging Face caches). False where each attention module gets its own cache object (TransformerLens).
    cache_at_end: ClassVar[bool] = True

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = self.text_config()
        self._cache_index: dict[int, int] = {}  # layer_kv runs per layer and step: resolve the index once
        self._init_runtime()

    # -------------------------------------------------------------- structure
    def text_config(self):
        """The language model's config (``text_config`` for multimodal models)."""
        cfg = self.model.config
        return getattr(cfg, "text_config", None) or cfg

    def decoder(self) -> nn.Module:
        """The module whose forward receives ``input_ids``/``inputs_embeds`` and the cache."""
        if hasattr(self.model, "get_decoder"):
            dec = self.model.get_decoder()
            if hasattr(dec, self.layers_attr):
                return dec
        for path in ("model", "model.decoder", "model.language_model", "transformer", "gpt_neox"):
            mod = _get(self.model, path)
            if mod is not None and hasattr(mod, self.layers_attr):
                return mod
        raise UnsupportedModelError(f"{type(self.model).__name__}: cannot find the decoder's `{self.layers_attr}`")

    def layers(self) -> Sequence[nn.Module]:
        return list(getattr(self.decoder(), self.layers_attr))

    def smoothable_layers(self) -> list[int]:
        """Indices of layers with a self-attention KV cache of their own (all layers unless an adapter says)."""
        return list(range(self.n_layers))

    def describe_layer(self, layer: int) -> str:
        """Why ``layer`` cannot be smoothed (for error messages)."""
        return f"layer {layer} has no self-attention KV cache of its own"

    def attention(self, layer: int) -> nn.Module:
        return _get(self.layers()[layer], self.attention_attr)

    def cache_index(self, layer: int) -> int:
        """Index of this layer in the cache object (``attn.layer_idx`` in HF models)."""
        if layer not in self._cache_index:
            idx = getattr(self.attention(layer), "layer_idx", None)
            self._cache_index[layer] = layer if idx is None else int(idx)
        return self._cache_index[layer]

    def key_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(getattr(self.attention(layer), self.key_attr))

    def value_slot(self, layer: int) -> ProjSlot:
        return ProjSlot(getattr(self.attention(layer), self.value_attr))

    def key_blend_waits(self, layer: int) -> bool:
        """Whether layer ``layer``'s key projection output is read only after its value projection ran, so the
        ``kv_proj`` site may blend both in the value hook, as one op (:mod:`.order`). False for fused projections."""
        attn, ks, vs = self.attention(layer), self.key_slot(layer), self.value_slot(layer)
        names = {id(m): n for n, m in attn.named_children()}
        k, v = names.get(id(ks.module)), names.get(id(vs.module))
        return ks.module is not vs.module and k is not None and v is not None and key_untouched_until_value(type(attn), k, v)

    def layer_device(self, layer: int) -> torch.device | None:
        """Where layer ``layer`` runs: accelerate's execution device under ``device_map``, else its parameters' device."""
        mod = self.layers()[layer]
        for m in (mod, self.attention(layer)):
            hook = getattr(m, "_hf_hook", None)
            dev = getattr(hook, "execution_device", None)
            if dev is not None:
                return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
        for p in mod.parameters():
            if p.device.type != "meta":
                return p.device
        return None

    def check_session(self, site: str, needs_row: bool, plan=None) -> None:
        """Raise :class:`UnsupportedModelError` if this model cannot serve ``site`` (or attention rows) for
        ``plan`` (its active layers and targets). Subclasses extend it (call ``super()``)."""
        for cfg in self.attention_configs():
            impl = str(getattr(cfg, "_attn_implementation", "") or "")
            if "flex_attention" in impl:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__} uses attn_implementation '{impl}', which kvsmooth_hooks does not "
                    "support (its BlockMask carries no per-position padding the session can read); load the model "
                    "with attn_implementation='sdpa' or 'eager'"
                )

    # -------------------------------------------------------------- sizes
    @property
    def n_layers(self) -> int:
        return len(self.layers())

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def head_dim(self) -> int:
        hd = getattr(self.config, "head_dim", None)
        return int(hd) if hd else int(self.config.hidden_size) // self.n_heads

    def layer_heads(self, layer: int) -> tuple[int, int, int]:
        """``(query heads, KV heads, head dim)`` of layer ``layer`` (uniform by default)."""
        return self.n_heads, self.n_kv_heads, self.head_dim

    def name_or_path(self) -> str:
        return str(getattr(self.model.config, "name_or_path", "") or "")

    def model_type(self) -> str:
        return str(getattr(self.config, "model_type", ""))

    def identity(self) -> dict:
        """Model identity recorded with plans and traces."""
        return {
            "class": type(self.model).__name__,
            "name_or_path": self.name_or_path(),
            "model_type": self.model_type(),
            "adapter": self.name,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
        }

    # -------------------------------------------------------------- runtime: where forwards start and end
    def entry_module(self) -> nn.Module:
        """The module whose forward pre-hook sees every forward first (classification). Default: the decoder."""
        return self.decoder()

    def exit_module(self) -> nn.Module:
        """The module whose forward hook runs when a forward is done (end-of-forward edits). Default: the decoder."""
        return self.decoder()

    def forward_info(self, args: tuple, kwargs: dict, known_past: Callable | None = None) -> ForwardInfo | None:
        """What one forward of :meth:`entry_module` is about; None when it runs without a cache.
        ``known_past(cache)``: the cached length if the caller knows it (a static cache it has followed), else None."""
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: the decoder was called without input_ids or inputs_embeds")
        cache = self._find(kwargs, CACHE_KWARGS)
        if cache is None:
            return None
        if isinstance(cache, (tuple, list)):
            raise UnsupportedModelError(
                f"{type(self.model).__name__} keeps its KV cache as legacy tuples of (key, value) tensors, rebuilt at "
                "every step: neither site can follow a generation through them (the 'cache' site edits a transformers "
                "Cache in place; 'kv_proj' needs one cache object per generation). Load a version of the model whose "
                "attention calls cache.update(...) on a transformers Cache (DynamicCache), as transformers 5 generate "
                "passes one")
        batch, q_len = int(x.shape[0]), int(x.shape[1])
        static = self._is_static(cache)
        # a static cache's length is a device tensor: reading it is a host sync, skipped when the session knows it
        past = known_past(cache) if static and known_past is not None else None
        past = int(cache.get_seq_length()) if past is None else past
        if past == 0 and not static:
            _check_reported_length(self.model, cache)
        return ForwardInfo(batch, q_len, past, cache,
                           mask_2d(kwargs.get("attention_mask"), batch, past + q_len, static), x.device, static)

    def row_module(self, layer: int) -> nn.Module | None:
        """A module whose forward output is layer ``layer``'s attention pattern ``[B, Hq, Q, T]``, or None:
        rows are then recomputed by the session's attention probe (:mod:`kvsmooth_hooks.core.probe`)."""
        return None

    def inline_attention(self, layer: int) -> bool:
        """Whether layer ``layer``'s attention module computes attention in its own forward (not through transformers'
        attention interface): its rows are then read by :mod:`kvsmooth_hooks.core.inline`."""
        return False

    def cache_head_repeat(self, layer: int) -> int:
        """How many copies of each KV head layer ``layer``'s cache holds (1; Falcon's new decoder architecture caches
        every KV head once per query head of its group): the ``cache`` site edits every copy alike."""
        return 1

    def attention_configs(self) -> list:
        """Config objects whose ``_attn_implementation`` the attention modules and mask code read."""
        seen, out = set(), []
        for cfg in [getattr(self.decoder(), "config", None)] + [
            getattr(self.attention(i), "config", None) for i in range(self.n_layers)
        ]:
            if cfg is not None and id(cfg) not in seen:
                seen.add(id(cfg))
                out.append(cfg)
        return out


def _check_reported_length(model, cache) -> None:
    """A cache reporting 0 positions while one of its attention layers holds some would make every decode step look
    like a new prompt (so nothing would be smoothed, silently). Transformers 5.25's ``RecurrentGemma`` does this: its
    cache counts positions on a linear-attention layer that the model never updates, and its own cached decoding
    then differs from a full forward."""
    for i, layer in enumerate(getattr(cache, "layers", ()) or ()):
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4 and keys.shape[-2] > 0:
            raise UnsupportedModelError(
                f"{type(model).__name__}: its cache reports 0 cached positions while cache layer {i} holds "
                f"{keys.shape[-2]}, so decode steps cannot be told from prompts (the model's own cached decoding is "
                "inconsistent: known for RecurrentGemma on transformers 5.25). Use a transformers version where "
                "cache.get_seq_length() counts its attention layers (5.24 for RecurrentGemma)")


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
