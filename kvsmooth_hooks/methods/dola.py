"""DoLa, decoding by contrasting layers (Chuang et al., ICLR 2024), following github.com/voidism/DoLa
(``transformers-4.28.1/src/transformers/generation/utils.py``: ``dola_greedy_decode``, ``relative_top_filter``;
``modeling_llama.py``: early-exit logits ``lm_head(hidden_states[j])``).

transformers 5 no longer has ``dola_layers`` in ``generate`` (it moved to the hub repository
``transformers-community/dola`` as a ``custom_generate``, which needs a download); this is the original
algorithm over the model's own hidden states and LM head, as hooks:

* premature logits of layer ``j``: the LM head on the input of decoder layer ``j`` (``j = 0``: the embeddings),
  without the final norm, as ``hidden_states[j]`` in the original; the mature logits are the model's own;
* the premature layer, per step: the candidate with the largest Jensen-Shannon divergence from the mature
  distribution, ``JS = 0.5 (KL(M||p_mature) + KL(M||p_j))``, ``M = (p_mature + p_j) / 2``, each KL averaged
  (not summed) over the vocabulary as ``F.kl_div(..., reduction='none').mean(-1)``;
* ``relative_top`` filter: ``f = log_softmax(mature)`` with entries below ``min(max f + log(relative_top),
  f_(1))`` set to -inf; the logits become ``f - log_softmax(premature)``. With ``relative_top = 0`` the raw
  logits are subtracted, as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Call, Method, MethodError
from .registry import register_method

__all__ = ["DoLa", "candidate_layers", "dola_logits", "relative_top_filter"]


def candidate_layers(spec: str, n_layers: int, tied_embeddings: bool = False) -> list[int]:
    """Premature candidates as transformers' ``dola_layers`` (4.43-4.5x ``_dola_decoding``): ``low`` =
    ``range(start, N // 2, 2)`` (N > 40: ``range(start, 20, 2)``), ``high`` = ``range(N // 2, N, 2)`` (N > 40:
    ``range(N - 20, N, 2)``), where ``start`` is 0, or 2 when the LM head is tied to the embeddings (an early exit
    from the embeddings would be the identity; 1 for a 2-layer model); or a list ``0,2,4``. For an untied 32-layer
    model these are the original README's ``0,2,...,14`` and ``16,...,30``."""
    if spec in ("low", "high"):
        start = 0 if not tied_embeddings else 2 if n_layers > 2 else 1 if n_layers == 2 else 0
        if spec == "low":
            out = list(range(start, n_layers // 2, 2)) if n_layers <= 40 else list(range(start, 20, 2))
            return out or [start]
        return list(range(n_layers // 2, n_layers, 2)) if n_layers <= 40 else list(range(n_layers - 20, n_layers, 2))
    try:
        out = [int(x) for x in str(spec).replace(";", ",").split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(not 0 <= j < n_layers for j in out):
        raise MethodError(f"dola: layers={spec!r}: use 'low', 'high' or comma-separated premature layers in "
                          f"0..{n_layers - 1} (the mature layer is the model's output)")
    return out


def relative_top_filter(scores: torch.Tensor, relative_top: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """``[B, V]`` log-probabilities with the implausible tokens set to -inf (``relative_top_filter``)."""
    f = scores.log_softmax(dim=-1)
    min_thresh = f.sort(dim=-1, descending=True).values[..., min_tokens_to_keep - 1]
    thresh = torch.minimum(min_thresh, f.max(dim=-1).values + torch.log(torch.tensor(relative_top)))
    return f.masked_fill(f < thresh[..., None], -float("inf"))


def dola_logits(mature: torch.Tensor, premature: torch.Tensor, relative_top: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mature ``[B, V]``, premature ``[C, B, V]`` (candidates) -> (contrasted logits ``[B, V]``, chosen index ``[B]``).
    The premature layer is chosen per sequence (the original averages the divergence over its batch of one)."""
    p_m, p_p = F.softmax(mature, dim=-1), F.softmax(premature, dim=-1)
    m = 0.5 * (p_m[None] + p_p)
    kl1 = F.kl_div(F.log_softmax(mature, dim=-1)[None], m, reduction="none").mean(-1)  # [C, B]
    kl2 = F.kl_div(F.log_softmax(premature, dim=-1), m, reduction="none").mean(-1)
    chosen = (0.5 * (kl1 + kl2)).argmax(dim=0)  # [B]
    base = premature[chosen, torch.arange(mature.shape[0])]
    final = mature
    if relative_top > 0.0:
        final = relative_top_filter(mature, relative_top)
        base = base.log_softmax(dim=-1).masked_fill(final < -1e3, -1e3)
    return final - base, chosen


@register_method
@dataclass
class DoLa(Method):
    """``layers`` (``low``, ``high`` as transformers' ``dola_layers``, or a list; the original has no default: its
    README uses the low half for open-ended generation, the high half for TruthfulQA) and ``relative_top`` (0.1, the original's default).
    The original's scripts also set ``repetition_penalty=1.2``; that is a generation setting, left to the run."""

    layers: str = "low"
    relative_top: float = 0.1

    name = "dola"
    source = "github.com/voidism/DoLa transformers-4.28.1/src/transformers/generation/utils.py (dola_greedy_decode)"

    def install(self, call: Call) -> None:
        from ..core.adapters import get_adapter

        blocks = get_adapter(call.model).layers()
        head = call.lm.get_output_embeddings()
        if head is None:
            raise MethodError(f"dola: {type(call.lm).__name__} has no output embeddings (LM head)")
        emb = call.lm.get_input_embeddings()
        tied = emb is not None and head.weight.data_ptr() == emb.weight.data_ptr()  # config.tie_word_embeddings in effect
        cands = candidate_layers(self.layers, len(blocks), tied)
        hidden: dict[int, torch.Tensor] = {}
        call.info["premature_layer_dist"] = {j: 0 for j in cands}

        def grab(j):
            def pre(module, args, kwargs):
                if not call.aux:
                    h = args[0] if args else kwargs["hidden_states"]
                    hidden[j] = h[:, -1, :]
            return pre

        for j in sorted(set(cands)):
            call.stack.callback(blocks[j].register_forward_pre_hook(grab(j), with_kwargs=True).remove)

        def contrast(kwargs: dict, logits: torch.Tensor) -> torch.Tensor:
            missing = [j for j in cands if j not in hidden]
            if missing:
                raise MethodError(f"dola: decoder layers {missing} did not run in this forward")
            prem = torch.stack([head(hidden[j].to(head.weight.device)).float() for j in cands])  # [C, B, V]
            hidden.clear()
            out, chosen = dola_logits(logits, prem, self.relative_top)
            for c in chosen.tolist():
                call.info["premature_layer_dist"][cands[c]] += 1
            return out

        call.on_logits(contrast)
