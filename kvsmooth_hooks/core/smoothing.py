"""The KVSmooth arithmetic as pure tensor functions (no hooks, no models).

Notation (KVSmooth, arXiv 2602.04268, Sec. 3): for the token decoded at step t,
``e_t`` is its sink score, the window holds the last M scores of the same layer (and
sequence), ``p_t`` is the percentile rank of ``e_t`` in that window, ``lambda_t`` is
``p_t`` clipped to ``[lambda_ref - clip, lambda_ref + clip]`` (and to [0, 1]), and the cache
entry becomes ``K_hat_t = (1 - lambda_t) K_t + lambda_t K_hat_{t-1}`` (same for V).

Shapes use ``B`` = batch (sequences), ``U`` = score units (1 per layer, or one per KV head),
``H`` = KV heads, ``M`` = window length, ``D`` = head dim.
"""

from __future__ import annotations

import torch

__all__ = [
    "new_window",
    "push_window",
    "fifo_rank",
    "linear_position",
    "coefficient_bounds",
    "coefficient",
    "ema_update",
    "attention_entropy",
    "head_units",
    "reduce_heads",
]


def new_window(batch: int, units: int, length: int, device=None) -> torch.Tensor:
    """An empty score window ``[B, U, M]``; empty slots are NaN and never count in a rank."""
    return torch.full((batch, units, length), float("nan"), device=device, dtype=torch.float32)


def push_window(window: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """FIFO push: drop the oldest score, append ``score``.

    window: ``[B, U, M]``; score: ``[B, U]`` -> ``[B, U, M]`` (newest last).
    """
    return torch.cat((window[..., 1:], score.unsqueeze(-1).to(window.dtype)), dim=-1)


def fifo_rank(window: torch.Tensor, score: torch.Tensor, length: torch.Tensor | int | None = None,
              filled: bool = False) -> torch.Tensor:
    """Percentile rank ``#{q in window : q < e} / M`` of ``score`` in its window.

    window: ``[B, U, M]`` (already holding ``score`` as its newest entry); score: ``[B, U]``;
    length: the window length M (int, or ``[U]`` per unit when units use only their last
    ``length[u]`` slots). By default divides by M even while the window is still filling, as the spec
    says; ``filled=True`` divides by the number of scores stored so far instead (``rank_divisor: filled``).
    Returns ``[B, U]`` in [0, 1).
    """
    below = window < score.unsqueeze(-1)
    stored = ~window.isnan() if filled else None
    m = window.shape[-1]
    if length is None or isinstance(length, int):
        if length is not None and length != m:
            below = below[..., -length:]
            stored = stored[..., -length:] if filled else None
        count = below.sum(-1, dtype=torch.float32)
        if filled:
            return count / stored.sum(-1, dtype=torch.float32).clamp_min(1.0)
        return count / below.shape[-1]
    inside = torch.arange(m, device=window.device) >= (m - length.to(window.device)).unsqueeze(-1)  # [U, M]
    count = (below & inside).sum(-1).to(torch.float32)
    if filled:
        return count / (stored & inside).sum(-1).to(torch.float32).clamp_min(1.0)
    return count / length.to(window.device, torch.float32)


def linear_position(window: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Position of ``score`` between the window's min and max, in [0, 1] (0.5 if they are equal).

    window: ``[B, U, M]`` (NaN = empty); score: ``[B, U]`` -> ``[B, U]``.
    """
    lo = torch.where(window.isnan(), float("inf"), window).amin(-1)
    hi = torch.where(window.isnan(), float("-inf"), window).amax(-1)
    span = hi - lo
    pos = (score - lo) / torch.where(span > 0, span, 1.0)
    return torch.where(span > 0, pos, torch.full_like(pos, 0.5)).clamp(0.0, 1.0)


def coefficient_bounds(lambda_ref: torch.Tensor, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max(0, lambda_ref - clip), min(1, lambda_ref + clip))``, elementwise."""
    return (lambda_ref - clip).clamp(min=0.0), (lambda_ref + clip).clamp(max=1.0)


def coefficient(rank: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``lambda = clip(rank, lower, upper)`` (``min(max(rank, lower), upper)``); rank ``[B, H]``, bounds
    broadcastable to it."""
    return torch.clamp(rank, lower, upper)


def ema_update(current: torch.Tensor, previous: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``(1 - lam) * current + lam * previous``, computed as ``current + lam * (previous - current)``.

    current, previous: ``[B, H, D]`` (or ``[B, H*D]`` with lam expanded); lam: ``[B, H, 1]``.
    With ``lam == 0`` the result equals ``current`` bit for bit (for finite inputs), which is
    what makes disabled heads and the ``off`` preset exact no-ops.
    """
    return current + lam.to(current.dtype) * (previous - current)


def attention_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of attention rows: ``H = -sum_j p_j ln p_j``.

    probs: ``[..., T]`` (rows summing to 1; masked positions 0) -> ``[...]`` float32.
    """
    return torch.special.entr(probs.to(torch.float32)).sum(-1)


def reduce_heads(x: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Reduce the last dim (heads) of float32 ``x [..., H]`` by ``how``: mean, max, min or median (the
    interpolated median, ``torch.quantile(x, 0.5)``)."""
    if how == "mean":
        return x.mean(-1)
    if how == "max":
        return x.amax(-1)
    if how == "min":
        return x.amin(-1)
    if how == "median":
        return torch.quantile(x, 0.5, dim=-1)
    raise ValueError(f"head_reduce '{how}' is not one of mean, max, min, median")


def head_units(raw: torch.Tensor, n_kv: int, per_head: bool, head_axis: str = "query", reduce: str = "mean") -> torch.Tensor:
    """Per-head scores reduced to score units: all heads reduced to one unit (``per_head`` False), or
    per KV head (query heads of one KV head reduced when ``head_axis`` is ``"query"``). ``reduce``:
    the reduction (``head_reduce``: mean, the default, max, min, median).

    raw: ``[..., Hq]`` or ``[..., Hkv]`` -> float32 ``[..., U]`` (U = 1 or Hkv); leading dims are kept,
    so one call reduces every layer of a stacked ``[La, B, Hq]``.
    """
    raw = raw.to(torch.float32)  # no copy for the float32 scores the built-in scorers give
    if not per_head:
        return reduce_heads(raw, reduce).unsqueeze(-1)
    if head_axis == "query":
        return reduce_heads(raw.unflatten(-1, (n_kv, -1)), reduce)
    return raw
