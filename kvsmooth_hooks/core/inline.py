"""Attention rows of modules that compute attention inline (not through transformers' attention interface).

Falcon, Bloom, GPT-Neo, MPT, Git, BLIP's text decoder and most remote-code models (InternLM2, Qwen-VL, ...)
write their attention in their own ``forward``: ``softmax(q K^T * scale + mask)`` or a direct
:func:`torch.nn.functional.scaled_dot_product_attention` call. The session's attention probe never sees
those, so for each such module :class:`InlineRows` enters a :class:`torch.overrides.TorchFunctionMode` in a
forward pre-hook and leaves it in a forward hook (``always_call``: also when the forward raises). While the
mode is active, every torch call of that module's forward runs unchanged (the model's outputs do not change
by a bit) and the mode looks at two of them:

* ``softmax`` over the last axis whose output is ``[B, Hq, Q, T]`` or ``[B * Hq, Q, T]`` with ``T`` the
  positions the cache holds after this forward (or ``T + 1``: a learned attention sink appended to the logits,
  which takes part in the normalisation and is dropped): the attention probabilities, handed on as they are;
* ``scaled_dot_product_attention(q [B, H, Q, D], k [B, Hk, T, D], attn_mask, is_causal, scale)``: the query,
  keys, mask and scale are handed on, and the row is recomputed from them
  (:func:`~kvsmooth_hooks.core.probe.query_probs`, or the decode-step :class:`~kvsmooth_hooks.core.rowbatch.RowBatch`).

The first match of each forward is the row. Nothing global is changed: the mode lives on the torch-function
mode stack only while the module runs, and the hooks are the session's handles. A forward that ran neither
raises a clear error (a scorer that reads no row works on such a model).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, _get_current_function_mode

from .errors import SessionError

_SOFTMAX = frozenset({torch.softmax, F.softmax, torch.Tensor.softmax, torch.special.softmax})
_SDPA = F.scaled_dot_product_attention
#: words in an attention class's source that say it computes its own softmax or calls sdpa
_MARKERS = ("softmax", "scaled_dot_product_attention")


def computes_attention_inline(attn: torch.nn.Module) -> bool:
    """Whether ``attn``'s class (or its modeling file) calls a softmax or ``scaled_dot_product_attention``
    itself, read from the source; True when the source cannot be read (the forward then says so if not)."""
    try:
        src = inspect.getsource(type(attn))
    except (OSError, TypeError):
        return True
    if any(m in src.lower() for m in _MARKERS):
        return True
    try:  # a helper of the modeling file (ProphetNet's ``softmax``, a shared ``attention`` function)
        return any(m in inspect.getsource(inspect.getmodule(type(attn))).lower() for m in _MARKERS)
    except (OSError, TypeError):
        return True


class _RowMode(TorchFunctionMode):
    """Active while one attention module runs: passes every call through, reports the first attention row."""

    def __init__(self, owner: "InlineRows", batch: int, total: int):
        super().__init__()
        self.owner, self.batch, self.total, self.found = owner, batch, total, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.found:
            if func is _SDPA:
                self._sdpa(args, kwargs)
            elif func in _SOFTMAX and isinstance(out, torch.Tensor):
                self._softmax(args, kwargs, out)
        return out

    def _heads(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x`` as ``[B, H, Q, T]``: 4-D with the session's batch, or 3-D ``[B * H, Q, T]``."""
        if x.dim() == 4 and x.shape[0] == self.batch:
            return x
        if x.dim() == 3 and x.shape[0] % self.batch == 0:
            return x.view(self.batch, x.shape[0] // self.batch, *x.shape[1:])
        return None

    def _softmax(self, args, kwargs, out: torch.Tensor) -> None:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if not isinstance(dim, int) or dim % out.dim() != out.dim() - 1 or out.shape[-1] not in (self.total, self.total + 1):
            return
        probs = self._heads(out)
        if probs is None or probs.shape[1] != self.owner.n_heads:
            return
        probs = probs[..., : self.total]  # T + 1: an attention sink appended to the logits (GPT-OSS, HY-V4) is dropped
        self.found = True
        self.owner.listener(self.owner.module, None, None, None, {}, probs)

    def _sdpa(self, args, kwargs) -> None:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        a = {**dict(zip(names, args)), **kwargs}
        query, key = self._heads(a["query"]), self._heads(a["key"])
        if query is None or key is None or key.shape[2] != self.total or query.shape[1] != self.owner.n_heads:
            return
        mask, q_len = a.get("attn_mask"), query.shape[2]
        if mask is not None and mask.dim() < 4:
            mask = mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))
        if mask is None and q_len > 1 and not a.get("is_causal", False):  # bidirectional: query_probs assumes causal
            mask = torch.ones(1, 1, q_len, self.total, dtype=torch.bool, device=query.device)
        self.found = True
        self.owner.listener(self.owner.module, query, key, mask, {"scaling": a.get("scale")}, None)


class InlineRows:
    """Row capture for one attention module that computes attention inline.

    module: the attention module; n_heads: its query heads ``Hq``; listener: the session's row listener,
    ``listener(module, query, key, mask, kwargs, weights)`` with either ``weights [B, Hq, Q, T]`` or
    ``query [B, Hq, Q, D]`` / ``key [B, Hk, T, D]`` / mask; session: read for the running forward's ``kind``
    (None outside the session's forwards: nothing is captured then), ``state.batch`` and ``total`` (positions
    the cache holds after the forward).
    """

    def __init__(self, module: torch.nn.Module, n_heads: int, listener: Callable, session):
        self.module, self.n_heads, self.listener, self.session = module, n_heads, listener, session
        self._mode: _RowMode | None = None

    def expect(self) -> tuple[int, int] | None:
        s = self.session
        return None if s.kind is None else (s.state.batch, s.total)

    def register(self) -> list:
        return [self.module.register_forward_pre_hook(self._enter),
                self.module.register_forward_hook(self._exit, always_call=True)]

    def _enter(self, module, args) -> None:
        self._leave()  # a forward that never reached its hook (cannot happen with always_call; harmless)
        expected = self.expect()
        if expected is not None:
            self._mode = _RowMode(self, *expected)
            self._mode.__enter__()

    def _leave(self) -> bool:
        mode, self._mode = self._mode, None
        if mode is None:
            return True
        if _get_current_function_mode() is not mode:
            raise SessionError(f"kvsmooth: another torch function mode was left active inside {type(self.module).__name__}"
                               ".forward; the attention-row capture cannot be removed safely")
        mode.__exit__(None, None, None)
        return mode.found

    def _exit(self, module, args, output) -> None:
        found = self._leave()
        if output is not None and not found:  # output None: the forward raised, its error is the one to see
            raise SessionError(
                f"kvsmooth: {type(module).__name__} computes attention inline, and this forward ran neither a softmax "
                "over the cached positions nor scaled_dot_product_attention, so its attention row could not be read; "
                "use a scorer that reads no row (key_similarity, constant, random)"
            )
