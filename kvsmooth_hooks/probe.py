"""Attention-row capture without eager attention.

The sink score needs the newest query's attention probabilities. Forcing ``eager`` with
``output_attentions=True`` would materialise every ``[T, T]`` matrix in prefill; instead the
session registers, for its own lifetime only, an attention implementation under a unique name
(``<base>_kvsmooth<N>``) that calls the model's own implementation (``sdpa``, ``eager``, flash,
flex...) unchanged and then recomputes *one* row per head, ``softmax(q_t K^T * scale + mask)``,
from the same query, keys and mask: ``O(H * T)`` extra work per layer and step. The matching
mask function is registered under the same name, so padding masks still reach the attention.
On exit both registry entries are deleted and each config's implementation is restored.
"""

from __future__ import annotations

import itertools
import sys
from typing import Callable

import torch

_COUNTER = itertools.count(1)


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


class AttentionProbe:
    """A session-scoped attention implementation that reports rows to listeners.

    listeners: ``{id(attention_module): callback(module, query, key, mask, kwargs, weights)}``,
    called after the model's own attention ran, for every forward of that module.
    """

    def __init__(self, configs: list, base: str | None):
        self.configs = configs
        self.base = base or "eager"
        self.key = f"{self.base}_kvsmooth{next(_COUNTER)}"
        self.listeners: dict[int, Callable] = {}
        self._saved: list[tuple[object, str | None]] = []
        self._eager_cache: dict[type, Callable] = {}
        self._base: Callable | None = None

    # ------------------------------------------------------------------ registry
    def install(self) -> None:
        attn_iface, mask_iface = _interfaces()
        if self.base != "eager" and self.base not in attn_iface._global_mapping:
            raise ValueError(
                f"attention implementation '{self.base}' is not registered in transformers' AttentionInterface; "
                "kvsmooth_hooks wraps 'eager', 'sdpa', flash and flex implementations"
            )
        mask_fn = mask_iface._global_mapping.get(self.base.removeprefix("paged|"))
        attn_iface.register(self.key, self)
        if mask_fn is not None:
            mask_iface.register(self.key, mask_fn)
        for cfg in self.configs:
            self._saved.append((cfg, cfg._attn_implementation_internal))
            cfg._attn_implementation_internal = self.key

    def remove(self) -> None:
        attn_iface, mask_iface = _interfaces()
        for cfg, impl in reversed(self._saved):
            if cfg._attn_implementation_internal == self.key:
                cfg._attn_implementation_internal = impl
        self._saved.clear()
        attn_iface._global_mapping.pop(self.key, None)
        mask_iface._global_mapping.pop(self.key, None)

    # ------------------------------------------------------------------ dispatch
    def _base_fn(self, module) -> Callable:
        if self.base != "eager":
            if self._base is None:
                self._base = _interfaces()[0]._global_mapping[self.base]
            return self._base
        fn = self._eager_cache.get(type(module))
        if fn is None:
            fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
            if fn is None:
                raise ValueError(f"{type(module).__name__}: no eager_attention_forward in its modeling file")
            self._eager_cache[type(module)] = fn
        return fn

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        out, weights = self._base_fn(module)(module, query, key, value, attention_mask, **kwargs)
        listener = self.listeners.get(id(module))
        if listener is not None:
            listener(module, query, key, attention_mask, kwargs, weights)
        return out, weights
