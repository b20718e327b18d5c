"""Attention-row capture without eager attention.

The sink score needs the newest query's attention probabilities. Forcing ``eager`` with
``output_attentions=True`` would materialise every ``[T, T]`` matrix in prefill; instead the
session registers, for its own lifetime only, an attention implementation under a unique name
(``<base>_kvsmooth``, shared by every session on the same base) that calls the model's own implementation (``sdpa``, ``eager``, flash,
flex...) unchanged and then recomputes *one* row per head, ``softmax(q_t K^T * scale + mask)``,
from the same query, keys and mask: ``O(H * T)`` extra work per layer and step. The matching
mask function is registered under the same name, so padding masks still reach the attention.
On exit both registry entries are deleted and each config's implementation is restored.
At decode steps the session batches the rows of all layers instead (:mod:`kvsmooth_hooks.core.rowbatch`).
"""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Callable

import torch


def eager_only(fn: Callable) -> Callable:
    """``fn`` kept out of ``torch.compile`` graphs: the session's per-forward bookkeeping (forward kind,
    positions, trace) would otherwise be guarded on and recompiled at every step. A plain call otherwise."""
    return torch.compiler.disable(fn, recursive=True)


def _interfaces():
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    return AttentionInterface, AttentionMaskInterface


def query_probs(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict,
    rows: slice = slice(-1, None),
) -> torch.Tensor:
    """Attention probabilities of selected query positions, GQA- and padding-aware.

    query: ``[B, Hq, Q, D]`` (post-RoPE), key: ``[B, Hkv, T, D]`` (the cache, unrepeated),
    attention_mask: None, bool ``[B|1, 1|Hq, Q, T']`` (True = attend) or additive float.
    Returns float32 ``[B, Hq, R, T]`` for the R query positions in ``rows``.
    """
    b, hq, q_len, d = query.shape
    hkv, t = key.shape[1], key.shape[2]
    q = query[:, :, rows, :]
    r = q.shape[2]
    scaling = kwargs.get("scaling")
    scaling = d**-0.5 if scaling is None else scaling
    # GQA without repeat_kv: the g query heads of one KV head attend to it as one block of g*R rows,
    # "b (kv g) r d -> b kv (g r) d" (plain reshapes: this runs once per layer and decode step)
    scores = torch.matmul(q.reshape(b, hkv, (hq // hkv) * r, d), key.transpose(-1, -2))  # [B, Hkv, g*R, T]
    scores = scores.reshape(b, hq, r, t).to(torch.float32) * scaling
    softcap = kwargs.get("softcap")
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    bias = kwargs.get("position_bias")
    if bias is not None:
        scores = scores + bias[..., rows, :t].to(torch.float32)
    if attention_mask is not None and attention_mask.dim() == 4:
        m = attention_mask[..., rows, :t]
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, float("-inf"))
        else:
            scores = scores + m.to(torch.float32)
    elif attention_mask is not None and attention_mask.dim() == 2:  # flash-style padding mask [B, T]
        scores = scores.masked_fill(~attention_mask[:, None, None, -t:].to(torch.bool), float("-inf"))
    if q_len > 1 and (attention_mask is None or attention_mask.dim() == 2):  # causal skipped by sdpa
        qpos = torch.arange(q_len, device=scores.device)[rows] + (t - q_len)
        scores = scores.masked_fill(torch.arange(t, device=scores.device) > qpos[:, None], float("-inf"))
    sinks = kwargs.get("s_aux")
    if sinks is not None:  # attention sinks take part in the normalisation, not in the row
        logits = torch.cat((scores, sinks.to(torch.float32).view(1, -1, 1, 1).expand(b, -1, r, 1)), -1)
        return torch.softmax(logits, -1)[..., :t]
    return torch.softmax(scores, dim=-1)


# The tables below never keep a model alive: a session attached and never removed is collected with its model.
#: ``id(attention module) -> weak reference to its listener`` for every attached session (one table: several models may
#: share one config object, hence one implementation name, and each model's modules must still reach their session).
#: The probe holds its listeners; an entry disappears with its listener.
_LISTENERS: dict[int, weakref.ref] = {}
#: implementation name -> number of probes using it.
_KEY_USERS: dict[str, int] = {}
#: ``id(config) -> [config, implementation before any probe, number of probes]``; released by the probe's
#: ``remove()`` or, for a probe collected without it, by its finalizer (configs hold no reference to their model).
_CONFIGS: dict[int, list] = {}


def _forget(mid: int, ref: weakref.ref) -> None:
    if _LISTENERS.get(mid) is ref:
        del _LISTENERS[mid]


def _release(key: str, configs: list) -> None:
    """Undo one probe's :meth:`AttentionProbe.install`: restore each config's implementation when its last probe
    goes, unregister ``key`` when its last user goes."""
    for cfg in configs:
        entry = _CONFIGS.get(id(cfg))
        if entry is None or entry[0] is not cfg:
            continue
        entry[2] -= 1
        if entry[2] <= 0:
            del _CONFIGS[id(cfg)]
            if str(cfg._attn_implementation_internal).endswith("_kvsmooth"):
                cfg._attn_implementation_internal = entry[1]
    _KEY_USERS[key] -= 1
    if _KEY_USERS[key] == 0:
        del _KEY_USERS[key]
        attn_iface, mask_iface = _interfaces()
        attn_iface._global_mapping.pop(key, None)
        mask_iface._global_mapping.pop(key, None)


class _Dispatch:
    """The registered attention function of one name: the base implementation, then the row listener."""

    def __init__(self, base: str):
        self.base = base
        self._fn: Callable | None = None
        self._eager_cache: dict[type, Callable] = {}

    def _base_fn(self, module) -> Callable:
        if self.base != "eager":
            if self._fn is None:
                self._fn = _interfaces()[0]._global_mapping[self.base]
            return self._fn
        fn = self._eager_cache.get(type(module))
        if fn is None:
            fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if fn is None:
                raise ValueError(f"{type(module).__name__}: no eager_attention_forward in its modeling file")
            self._eager_cache[type(module)] = fn
        return fn

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        out, weights = self._base_fn(module)(module, query, key, value, attention_mask, **kwargs)
        ref = _LISTENERS.get(id(module))
        listener = ref() if ref is not None else None
        if listener is not None:
            listener(module, query, key, attention_mask, kwargs, weights)
        return out, weights


class AttentionProbe:
    """A session-scoped attention implementation that reports rows to listeners.

    listeners: ``{id(attention_module): callback(module, query, key, mask, kwargs, weights)}``,
    called after the model's own attention ran, for every forward of that module. The implementation
    is registered as ``<base>_kvsmooth`` while any probe uses it; each config object remembers its
    original implementation until the last probe that changed it is removed, so sessions on models that
    share a config can be attached and removed in any order.
    """

    def __init__(self, configs: list, base: str | None):
        self.configs = configs
        self.base = (base or "eager").removesuffix("_kvsmooth")  # a shared config another probe already set
        self.key = f"{self.base}_kvsmooth"
        self._mine: dict[int, Callable] = {}  # the listeners, held here; _LISTENERS refers to them weakly
        self._release: weakref.finalize | None = None

    def listen(self, module, callback: Callable) -> None:
        mid = id(module)
        self._mine[mid] = callback
        _LISTENERS[mid] = weakref.ref(callback, functools.partial(_forget, mid))

    # ------------------------------------------------------------------ registry
    def install(self) -> None:
        attn_iface, mask_iface = _interfaces()
        if self.base != "eager" and self.base not in attn_iface._global_mapping:
            raise ValueError(
                f"attention implementation '{self.base}' is not registered in transformers' AttentionInterface; "
                "kvsmooth_hooks wraps 'eager', 'sdpa' and flash implementations"
            )
        if _KEY_USERS.get(self.key, 0) == 0:
            attn_iface.register(self.key, _Dispatch(self.base))
            mask_fn = mask_iface._global_mapping.get(self.base.removeprefix("paged|"))
            if mask_fn is not None:
                mask_iface.register(self.key, mask_fn)
        _KEY_USERS[self.key] = _KEY_USERS.get(self.key, 0) + 1
        for cfg in self.configs:
            entry = _CONFIGS.get(id(cfg))
            if entry is None:
                entry = _CONFIGS[id(cfg)] = [cfg, cfg._attn_implementation_internal, 0]
            entry[2] += 1
            cfg._attn_implementation_internal = self.key
        self._release = weakref.finalize(self, _release, self.key, list(self.configs))  # also if never removed

    def active(self) -> bool:
        """Whether every config still runs this probe's implementation (``set_attn_implementation`` changes it)."""
        return all(cfg._attn_implementation_internal == self.key for cfg in self.configs)

    def remove(self) -> None:
        for mid, callback in self._mine.items():
            ref = _LISTENERS.get(mid)
            if ref is not None and ref() is callback:
                del _LISTENERS[mid]
        self._mine.clear()
        self.configs = []
        if self._release is not None:
            self._release()  # runs _release once (a finalizer is called at most once)
            self._release = None
