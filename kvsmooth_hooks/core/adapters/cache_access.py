"""How adapters reach a Hugging Face KV cache: the ``runtime: the KV cache`` part of :class:`~.base.Adapter`.

Keys and values are ``[B, Hkv, T, D]`` per layer (``T`` = ``max_cache_len`` in a static cache); every
accessor returns tensors that are the cache's own storage (or views of it), so in-place edits reach it.
"""

from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch

from .runtime import UnsupportedModelError, check_cache_layer, is_static_cache

#: Keyword names under which attention modules and decoders receive the KV cache.
CACHE_KWARGS = ("cache", "past_key_values", "layer_past")


def self_attention_part(cache):
    """The part of ``cache`` that holds self-attention entries: an encoder-decoder cache's
    ``self_attention_cache`` (the decoder's own keys / values), any other cache as it is."""
    return getattr(cache, "self_attention_cache", cache)


class CacheAccess:
    """Mixin of :class:`~.base.Adapter`: finding, reading and editing the cache (see the module doc)."""

    def _init_runtime(self) -> None:
        """Per-instance memos of the per-step paths (subclasses with their own ``__init__`` call this)."""
        self._checked = weakref.WeakSet()  # cache layer objects layers_kv already checked
        self._static: tuple = (None, False)  # (weak reference to the last cache seen by forward_info, static?)

    def _is_static(self, cache) -> bool:
        """:func:`is_static_cache`, remembered for the last cache object (it runs once per forward)."""
        ref, static = self._static
        if ref is not None and ref() is cache:
            return static
        static = is_static_cache(cache)
        try:
            self._static = (weakref.ref(cache), static)
        except TypeError:
            pass
        return static

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

    def layers_kv(self, cache, layers: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(keys, values)`` of each of ``layers`` (each ``[B, Hkv, T, D]``, editable in place) from the cache the
        decoder received (:attr:`ForwardInfo.cache`), read when its forward is done (``cache_at_end``). Each cache
        layer object is checked (:func:`check_cache_layer`) the first time it is seen; a layer without entries raises."""
        cache = self_attention_part(cache)
        store = getattr(cache, "layers", None)
        if store is None:
            check_cache_layer(cache, 0)  # raises: no per-layer storage
        out, checked = [], self._checked
        for i in layers:
            entry = store[self.cache_index(i)]
            if entry not in checked:
                if getattr(entry, "keys", None) is None:
                    raise UnsupportedModelError(
                        f"layer {i}'s attention did not write the cache the decoder received ({type(cache).__name__}): "
                        "the 'cache' site cannot find this layer's entries; use site 'kv_proj' for this model")
                check_cache_layer(cache, self.cache_index(i))
                try:
                    checked.add(entry)
                except TypeError:  # a layer type without weak references: checked at every call
                    pass
            out.append((entry.keys, entry.values))
        return out

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
