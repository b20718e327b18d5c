"""Coefficient groups: layers sharing a policy and window length get their coefficients from one
batched step. Shapes: ``B`` sequences, ``La`` layers of the group, ``U`` score units per layer (1, or
``H`` at head granularity), ``H`` KV heads, ``M`` window length.
"""

from __future__ import annotations

import torch

from .plan import SmoothingPlan
from .smoothing import coefficient, coefficient_bounds, fifo_rank, linear_position, new_window, push_window


class CoefficientGroup:
    """Layers sharing policy and window length; their coefficients come from one batched step.

    ``record``: the last traced step's ``score`` / ``rank`` / ``lambda`` (and ``dk`` / ``dv``), ``[B, La, H]``."""

    def __init__(self, plan: SmoothingPlan, layers: list):
        self.layers = layers
        idx = [l.index for l in layers]
        self.policy = plan.policy[idx[0]]
        self.filled = plan.config.rank_divisor == "filled"  # rank while the window fills: / stored scores, not / M
        self.per_head = layers[0].per_head
        window = plan.window[idx]  # [La, H]
        self.lengths = window if self.per_head else window[:, :1]  # [La, U]
        self.window_len = int(self.lengths.max())
        self.uniform = bool((self.lengths == self.window_len).all())
        enabled = plan.enabled[idx]
        on = enabled.to(torch.float32)
        lo, hi = coefficient_bounds(plan.lambda_ref[idx], plan.clip[idx])
        # disabled heads get the band [0, 0]: lambda is 0 there without a masking op per step
        self._cpu = {
            "lo": lo * on,
            "hi": hi * on,
            "lambda_ref": plan.lambda_ref[idx].clamp(0.0, 1.0) * on,
            "kmask": (enabled & plan.key[idx]).to(torch.float32),
            "vmask": (enabled & plan.value[idx]).to(torch.float32),
            "lengths": self.lengths,
        }
        self.smooth_key = bool(self._cpu["kmask"].any())
        self.smooth_value = bool(self._cpu["vmask"].any())
        # a target mask equal to the enabled mask leaves lambda as it is: no multiply per step
        self.key_is_lam = bool(torch.equal(self._cpu["kmask"], on))
        self.value_is_lam = bool(torch.equal(self._cpu["vmask"], on))
        self.n_kv = enabled.shape[1]
        self.mixed_heads = any(layer.n_kv != self.n_kv for layer in layers)  # some layers have fewer KV heads than H
        self._dev: dict = {}
        for slot, layer in enumerate(layers):
            layer.join(self, slot)
        self.reset(0, None)

    def consts(self, device) -> dict[str, torch.Tensor]:
        c = self._dev.get(device)
        if c is None:
            c = self._dev[device] = {k: v.to(device) for k, v in self._cpu.items()}
        return c

    def reset(self, batch: int, device) -> None:
        units = self.n_kv if self.per_head else 1
        self.window = None
        if batch and self.policy != "fixed":
            self.window = new_window(batch, len(self.layers) * units, self.window_len, device).view(
                batch, len(self.layers), units, self.window_len
            )
        self.lam: torch.Tensor | None = None  # [B, La, H] of the current step
        self.lam_step = -1
        self.record: dict[str, torch.Tensor] | None = None
        self.stacked: torch.Tensor | None = None  # [B, La, U] scores of this step, stacked by a RowBatch

    def reorder(self, idx: torch.Tensor) -> None:
        self.window = select_batch(self.window, idx)
        self.lam = select_batch(self.lam, idx)
        self.stacked = select_batch(self.stacked, idx)

    def step(self, valid: torch.Tensor | None = None, tracing: bool = True) -> torch.Tensor:
        """Coefficients from the layers' newest unit scores. Returns ``lam [B, La, H]``.

        valid: ``[B]`` bool; sequences marked False (padding positions in a smoothed prompt)
        leave their windows unchanged and get lambda 0. The layers' scores are :attr:`stacked` when a
        RowBatch set it for this step (no stacking op), else their ``unit`` s stacked.
        """
        unit, self.stacked = self.stacked, None
        if unit is None and len(self.layers) > 1:
            unit = torch.stack([l.unit for l in self.layers], 1)
        elif unit is None:
            unit = self.layers[0].unit[:, None]
        b = unit.shape[0]
        c = self.consts(unit.device)
        if self.policy == "fixed":
            rank = torch.zeros_like(unit)
            lam = c["lambda_ref"].expand(b, -1, -1)
        else:
            window = push_window(self.window, unit)
            if valid is not None:
                window = torch.where(valid.to(window.device)[:, None, None, None], window, self.window)
            self.window = window
            if self.policy == "fifo_rank":
                rank = fifo_rank(window, unit, self.window_len if self.uniform else c["lengths"], filled=self.filled)
                lam = coefficient(rank, c["lo"], c["hi"])
            else:  # linear: position between the window's min and max, scaled into the clip band
                rank = linear_position(window, unit)
                lam = c["lo"] + rank * (c["hi"] - c["lo"])
        if valid is not None:
            lam = lam * valid.to(lam.device)[:, None, None]
        self.lam = lam
        if tracing:
            h = self.n_kv
            self.record = {"score": unit.expand(b, -1, h), "rank": rank.expand(b, -1, h), "lambda": lam}
        return lam


def select_batch(t, idx):
    """``t`` with its batch rows (dim 0) taken in the order ``idx`` (a beam reorder); non-tensors and 0-dim tensors
    as they are."""
    return t.index_select(0, idx.to(t.device)) if isinstance(t, torch.Tensor) and t.dim() > 0 else t


def build_groups(plan: SmoothingPlan, layers: dict, immediate) -> list[CoefficientGroup]:
    """Group layers by (policy, window length, device); layers for which ``immediate(layer)`` is true get a
    group of their own (their coefficient is needed inside their own hook)."""
    buckets: dict[tuple, list] = {}
    for i, layer in layers.items():
        key = ("own", i) if immediate(layer) else (plan.policy[i], int(plan.window[i].max()), str(layer.device))
        buckets.setdefault(key, []).append(layer)
    return [CoefficientGroup(plan, ls) for ls in buckets.values()]
