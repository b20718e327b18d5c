"""Decode-step attention rows of every smoothed layer, normalised and scored in one step.

At batch 1 a GPU decode step is bound by kernel launches, so the ops smoothing adds per layer and
step are what it costs there. Recomputing each layer's row with :func:`~kvsmooth_hooks.core.probe.query_probs`
and scoring it takes about six small ops per layer (logits, scale, softmax, entropy, sum, mean).
Here each layer's attention call writes only the new query's scaled logits ``q_t K^T * scale`` into
its slot of one buffer ``[La, B, Hq, T]`` (one ``baddbmm_`` per layer); at the end of the forward one
mask, one softmax and one scorer call cover all layers, and each coefficient group receives its
layers' scores already stacked. Replacing the model's attention by one that also returns the row
would save the logits op but add a softmax and a matmul per layer in place of a fused sdpa kernel, and
would change the model's own outputs (λ = 0 would no longer be bit-identical), so the row is recomputed.
"""

from __future__ import annotations

import torch

from .scorers.base import ScoreInputs
from .smoothing import head_units


class RowBatch:
    """Newest-query attention logits of several layers in one decode step, scored together.

    layers: the smoothed layers (``.attn``, ``.scorer``, ``.unit``) whose scorer takes stacked rows, in
    slot order; groups: ``[(group, first slot, n layers)]`` for coefficient groups made only of them.
    During a decode forward each layer's attention call :meth:`write` s its logits into ``logits[slot]``
    (``[La, B, Hq, T]``, the model's dtype); :meth:`score` then masks, normalises and scores every slot
    at once, sets each layer's ``unit`` and hands each complete group its stacked units. A call that
    cannot be batched (softcap, position bias, attention sinks, another key length or dtype than the
    first layer's) returns False and the caller falls back to :func:`query_probs`.
    """

    def __init__(self, layers: list, groups: list[tuple]):
        self.layers, self.groups = layers, groups
        self.slots = {id(layer.attn): i for i, layer in enumerate(layers)}
        covered = {id(layer) for group, _, _ in groups for layer in group.layers}
        self.loose = [i for i, layer in enumerate(layers) if id(layer) not in covered]  # read through layer.unit
        self.clear()

    @classmethod
    def for_groups(cls, groups: list) -> "RowBatch | None":
        """Batch the layers whose scorer takes stacked rows (the first such layer's scorer and device), slots
        in group order so that a group is one slice; None if no layer qualifies."""
        cand = [layer for g in groups for layer in g.layers if layer.scorer.stacked_rows]
        if not cand:
            return None
        first = cand[0]
        same = {id(l) for l in cand if type(l.scorer) is type(first.scorer) and l.scorer.params == first.scorer.params
                and l.device == first.device and (l.n_heads, l.n_kv) == (first.n_heads, first.n_kv)}
        layers, spans = [], []
        for g in groups:
            start = len(layers)
            layers += [l for l in g.layers if id(l) in same]
            if len(layers) - start == len(g.layers):
                spans.append((g, start, len(g.layers)))
        return cls(layers, spans)

    def clear(self) -> None:
        self.logits: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.outs: tuple = ()  # per slot: ``[B * Hkv, Hq / Hkv, T]`` views of logits
        self.shape: tuple = ()  # (B, Hkv, T, dtype) of this step
        self.filled = [False] * len(self.layers)

    def write(self, module, query: torch.Tensor, key: torch.Tensor, mask, kwargs: dict) -> bool:
        """Logits of the single new query ``query [B, Hq, 1, D]`` over ``key [B, Hkv, T, D]`` into the
        module's slot (GQA without repeating the keys). Returns False if this call cannot be batched."""
        if torch.is_grad_enabled():  # a forward with gradients: the rows only feed the scores
            with torch.no_grad():
                return self.write(module, query, key, mask, kwargs)
        slot = self.slots.get(id(module))
        b, hq, q_len, d = query.shape
        if slot is None or q_len != 1 or kwargs.get("softcap") or kwargs.get("position_bias") is not None \
                or kwargs.get("s_aux") is not None:
            return False
        _, hkv, t, _ = key.shape
        shape = (b, hkv, t, query.dtype)
        if not self.outs:  # the first layer of this step: one buffer for all slots
            self.logits = query.new_empty((len(self.layers), b, hq, t))
            self.outs = self.logits.view(len(self.layers), b * hkv, hq // hkv, t).unbind(0)
            self.mask, self.shape = mask, shape
        elif shape != self.shape:
            return False
        scaling = kwargs.get("scaling")
        self.outs[slot].baddbmm_(query.reshape(b * hkv, hq // hkv, d), key.reshape(b * hkv, t, d).mT,
                                 beta=0.0, alpha=d**-0.5 if scaling is None else scaling)
        if mask is not self.mask:  # a layer with its own mask (sliding window next to global): mask it now
            _mask_logits(self.logits[slot], mask, t)
        self.filled[slot] = True
        return True

    def complete(self) -> bool:
        return all(self.filled)

    def probs(self) -> torch.Tensor:
        """Float32 ``[La, B, Hq, T]`` attention probabilities of every slot (unfilled slots hold garbage)."""
        logits = self.logits.float()  # the buffer is this step's own: masked in place
        if self.mask is not None:
            logits = _mask_logits(logits, self.mask, logits.shape[-1], inplace=False)
        return torch.softmax(logits, -1)

    def score(self, first_index: torch.Tensor | None) -> None:
        """Score the written slots (one scorer call for all layers), give every group its units ``[B, La, U]``
        (``group.stacked``) when all slots were written, else set each written layer's ``unit [B, U]``; then
        forget this step."""
        if any(self.filled):
            first = self.layers[0]
            raw = first.scorer.score({}, ScoreInputs(row=self.probs(), first_index=first_index))  # [La, B, Hq]
            units = head_units(raw, first.n_kv, first.per_head, first.scorer.head_axis,
                               first.head_reduce).transpose(0, 1)  # [B, La, U]
            complete = self.complete()
            for slot in self.loose if complete else range(len(self.layers)):
                if self.filled[slot]:
                    self.layers[slot].unit = units[:, slot]
            if complete:
                for group, start, n in self.groups:
                    group.stacked = units.narrow(1, start, n)
        self.clear()


def _mask_logits(logits: torch.Tensor, mask: torch.Tensor, t: int, inplace: bool = True) -> torch.Tensor:
    """Apply an attention mask of the newest query (in place, or as one new tensor). logits ``[..., B, Hq, T]``;
    mask bool (True = attend) or additive ``[B|1, 1|Hq, Q, T']``, or a 2-D padding mask ``[B, T']``."""
    if mask.dim() == 2:
        m = mask[:, None, -t:].to(torch.bool)  # [B, 1, T]
    else:
        m = mask[:, :, -1, :t]  # [B|1, 1|Hq, T]
    if m.dtype == torch.bool:  # one op where a new tensor will do (a static cache's unwritten positions)
        return logits.masked_fill_(~m, float("-inf")) if inplace else torch.where(m, logits, float("-inf"))
    return logits.add_(m) if inplace else logits + m
