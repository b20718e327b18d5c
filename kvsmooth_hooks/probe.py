"""Attention-row capture without eager attention.

The sink score needs the newest query's attention probabilities. Forcing ``eager`` with
``output_attentions=True`` would materialise every ``[T, T]`` matrix in prefill; instead the
session registers, for its own lifetime only, an attention implementation under a unique name
(``<base>_kvsmooth<N>``) that calls the model's own implementation (``sdpa``, ``eager``, flash,
flex...) unchanged and then recomputes *one* row per head, ``softmax(q_t K^T * scale + mask)``,
from the same query, keys and mask: ``O(H * T)`` extra work per layer and step. The matching
mask function is registered under the same name, so padding masks still reach the attention.
On exit both registry entries are deleted and each config's implementation is restored.

Decode steps take a cheaper path (:class:`RowBatch`): each layer's attention call writes the new
query's scaled logits ``q_t K^T * scale`` into its slot of one buffer ``[La, B, Hq, T]`` (one
``baddbmm`` per layer), and the session turns all slots into probabilities at once (mask, softmax:
a fixed handful of ops per step instead of several per layer). At batch 1 a GPU decode step is bound
by kernel launches, so ops per layer are what smoothing costs there.
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


class RowBatch:
    """Newest-query attention logits of several layers in one decode step, normalised together.

    ``slots``: ``{id(attention_module): slot}``. While :attr:`active`, :meth:`write` puts one layer's
    logits into ``logits[slot]`` (``[La, B, Hq, T]``, the model's dtype); :meth:`probs` masks and
    normalises every slot at once. A call that cannot be batched (softcap, position bias, attention
    sinks, a key length or dtype other than the first layer's) returns False and the caller falls back
    to :func:`query_probs`; :attr:`filled` says which slots were written.
    """

    def __init__(self, slots: dict[int, int]):
        self.slots = slots
        self.active = False
        self.clear()

    def clear(self) -> None:
        self.logits: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.filled = [False] * len(self.slots)

    def begin(self) -> None:
        """Start a decode step: forget the previous step's logits and accept writes."""
        self.clear()
        self.active = True

    def complete(self) -> bool:
        return all(self.filled)

    def write(self, module, query: torch.Tensor, key: torch.Tensor, mask, kwargs: dict) -> bool:
        """Logits of the single new query ``query [B, Hq, 1, D]`` over ``key [B, Hkv, T, D]`` into the
        module's slot (GQA without repeating the keys). Returns False if this call cannot be batched."""
        slot = self.slots.get(id(module))
        if slot is None or not self.active or query.shape[2] != 1:
            return False
        if kwargs.get("softcap") or kwargs.get("position_bias") is not None or kwargs.get("s_aux") is not None:
            return False
        b, hq, _, d = query.shape
        hkv, t = key.shape[1], key.shape[2]
        if self.logits is None:
            self.logits = query.new_empty((len(self.slots), b, hq, t))
            self.mask = mask
        elif self.logits.shape[1:] != (b, hq, t) or self.logits.dtype != query.dtype:
            return False
        out = self.logits[slot].view(b * hkv, hq // hkv, t)
        scaling = kwargs.get("scaling")
        out.baddbmm_(
            query.reshape(b * hkv, hq // hkv, d),
            key.reshape(b * hkv, t, d).transpose(1, 2),
            beta=0.0,
            alpha=d**-0.5 if scaling is None else scaling,
        )
        if mask is not self.mask:  # a layer with its own mask (sliding window next to global): mask it now
            _mask_logits(self.logits[slot], mask, t)
        self.filled[slot] = True
        return True

    def probs(self) -> torch.Tensor:
        """Float32 ``[La, B, Hq, T]`` attention probabilities of every slot (unfilled slots hold garbage)."""
        logits = self.logits.float()  # the buffer is this step's own: masked in place
        if self.mask is not None:
            _mask_logits(logits, self.mask, logits.shape[-1])
        self.active = False
        return torch.softmax(logits, -1)


def _mask_logits(logits: torch.Tensor, mask: torch.Tensor, t: int) -> torch.Tensor:
    """Apply an attention mask of the newest query in place. logits ``[..., B, Hq, T]``; mask bool
    (True = attend) or additive ``[B|1, 1|Hq, Q, T']``, or a 2-D padding mask ``[B, T']``."""
    if mask.dim() == 2:
        return logits.masked_fill_(~mask[:, None, -t:].to(torch.bool), float("-inf"))
    m = mask[:, :, -1, :t]  # [B|1, 1|Hq, T]
    if m.dtype == torch.bool:
        return logits.masked_fill_(~m, float("-inf"))
    return logits.add_(m)


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
        self.rows: RowBatch | None = None  # decode-step batching, set by the session

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
        if self.rows is not None and weights is None and self.rows.write(module, query, key, attention_mask, kwargs):
            return out, weights
        listener = self.listeners.get(id(module))
        if listener is not None:
            listener(module, query, key, attention_mask, kwargs, weights)
        return out, weights
