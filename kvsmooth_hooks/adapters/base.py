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
  (one layer's ``[B, Hkv, T, D]`` keys / values, editable in place), :meth:`read_kv` / :meth:`write_kv`
  (one position per sequence) and :meth:`watch_reorder` (beam search).

Subclasses override only what differs (see ``lens.py`` for a model with its own cache type).
"""

from __future__ import annotations

from dataclasses import dataclass
import weakref
from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from .runtime import ForwardInfo, UnsupportedModelError, check_cache_layer, is_static_cache, mask_2d

#: Keyword names under which attention modules and decoders receive the KV cache.
CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


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
        x = output[..., self.start:self.stop]
        if self.interleave is None:  # the slice's own width per head (value heads may differ from key heads)
            return x.unflatten(-1, (n_kv, -1))
        per_group, index = self.interleave
        return x.unflatten(-1, (n_kv, per_group, head_dim))[..., index, :]


class Adapter:
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

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = self.text_config()
        self._cache_index: dict[int, int] = {}  # layer_kv runs per layer and step: resolve the index once

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

    def forward_info(self, args: tuple, kwargs: dict) -> ForwardInfo | None:
        """What one forward of :meth:`entry_module` is about; None when it runs without a cache."""
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: the decoder was called without input_ids or inputs_embeds")
        cache = self._find(kwargs, CACHE_KWARGS)
        if cache is None:
            return None
        batch, q_len = int(x.shape[0]), int(x.shape[1])
        past, static = int(cache.get_seq_length()), is_static_cache(cache)
        return ForwardInfo(batch, q_len, past, cache,
                           mask_2d(kwargs.get("attention_mask"), batch, past + q_len, static), x.device, static)

    def row_module(self, layer: int) -> nn.Module | None:
        """A module whose forward output is layer ``layer``'s attention pattern ``[B, Hq, Q, T]``, or None:
        rows are then recomputed by the session's attention probe (:mod:`kvsmooth_hooks.probe`)."""
        return None

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

    # -------------------------------------------------------------- runtime: the KV cache
    def find_cache(self, args: tuple, kwargs: dict):
        """The cache object among an attention module's forward arguments, or None."""
        return self._find(kwargs, CACHE_KWARGS)

    @staticmethod
    def _find(kwargs: dict, names: tuple[str, ...]):
        for name in names:
            cache = kwargs.get(name)
            if cache is not None:
                return cache
        return None

    def layer_kv(self, cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s cached ``(keys, values)``, each ``[B, Hkv, T, D]`` and editable in place
        (writes reach the cache). Raises :class:`UnsupportedModelError` for caches that cannot be edited."""
        entry = check_cache_layer(cache, self.cache_index(layer))
        return entry.keys, entry.values

    def read_kv(self, cache, layer: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, Hkv, D]`` at one position per sequence (``positions [B]`` long)."""
        keys, values = self.layer_kv(cache, layer)
        idx = positions.to(keys.device).view(-1, 1, 1, 1).expand(-1, keys.shape[1], 1, keys.shape[3])
        return keys.gather(2, idx).squeeze(2), values.gather(2, idx).squeeze(2)

    def write_kv(self, cache, layer: int, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Overwrite keys / values ``[B, Hkv, D]`` at one position per sequence (``positions [B]`` long)."""
        k, v = self.layer_kv(cache, layer)
        idx = positions.to(k.device).view(-1, 1, 1, 1).expand(-1, k.shape[1], 1, k.shape[3])
        k.scatter_(2, idx, keys.unsqueeze(2).to(k.dtype))
        v.scatter_(2, idx, values.unsqueeze(2).to(v.dtype))

    def watch_reorder(self, cache, callback: Callable[[torch.Tensor], None]) -> Callable[[], None] | None:
        """Call ``callback(beam_idx)`` after ``cache`` reorders its sequences (beam search).
        Returns a function that undoes the wrapping, or None if this cache never reorders."""
        if "reorder_cache" in vars(cache) or not hasattr(cache, "reorder_cache"):
            return None
        original = cache.reorder_cache

        def reorder_cache(beam_idx, _orig=original):
            _orig(beam_idx)
            callback(beam_idx)

        cache.reorder_cache = reorder_cache
        ref = weakref.ref(cache)

        def undo():
            c = ref()
            if c is not None and "reorder_cache" in vars(c):
                del c.reorder_cache

        return undo


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
