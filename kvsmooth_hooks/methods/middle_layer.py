"""MiddleLayer: heads-guided attention intervention from "Devils in Middle Layers of Large Vision-Language
Models" (Jiang et al., CVPR 2025), following github.com/ZhangqiJiang07/middle_layers_indicating_hallucinations
``modify_attention.py`` (``llama_new_forward``, ``llama_head_guide``) and ``chair_eval.py``.

In the guided layers, row ``-1`` of every forward's masked, clamped attention logits ``w [B, H, Q, T]`` is raised
at the image columns by an amount shared by all heads:

* ``mean``: ``w[:, :, -1, img] += beta * mean_h |w[:, h, -1, img]|``;
* ``topK``: the K heads with the largest softmax attention mass on the image (``sum_img softmax(w)[:, h, -1]``)
  per sequence; ``w[b, :, -1, img] += beta * mean_{h in topK(b)} |w[b, h, -1, img]|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Call, Method, MethodError
from .registry import register_method
from .row_attention import image_mask, install_row_change

__all__ = ["MiddleLayer", "head_guided"]


def head_guided(scores: torch.Tensor, image: torch.Tensor, beta: float, aggregation: str, top_k: int) -> torch.Tensor:
    """scores ``[B, H, 1, T]`` float32 (masked, clamped), image ``[B, T]`` bool -> scores with the image columns raised."""
    mag = scores.abs()
    if aggregation == "mean":
        shift = mag.mean(dim=1, keepdim=True)  # [B, 1, 1, T]
    else:
        mass = (torch.softmax(scores, dim=-1) * image[:, None, None, :]).sum(-1)[..., 0]  # [B, H]
        top = mass.topk(top_k, dim=-1).indices  # [B, K]
        shift = torch.gather(mag, 1, top[:, :, None, None].expand(-1, -1, 1, mag.shape[-1])).mean(1, keepdim=True)
    return torch.where(image[:, None, None, :], scores + beta * shift, scores)


@register_method
@dataclass
class MiddleLayer(Method):
    """``beta`` 0.5 (``--alpha`` in ``chair_eval.py``), layers 5..18 inclusive (``--guide-range 5,18``, to which
    the script adds 1: ``[5, 19)``, the run logged as ``layers_5-19``), ``aggregation`` ``mean`` (or ``topK``, with
    ``top_k`` heads; the script has no top-K default)."""

    beta: float = 0.5
    start_layer: int = 5
    end_layer: int = 19
    aggregation: str = "mean"
    top_k: int = 4

    name = "middle-layer"
    composes_with_kvsmooth = False
    needs_image = True
    source = "github.com/ZhangqiJiang07/middle_layers_indicating_hallucinations modify_attention.py, chair_eval.py"

    def __post_init__(self):
        if self.aggregation not in ("mean", "topK"):
            raise MethodError(f"middle-layer: aggregation={self.aggregation!r}: use 'mean' or 'topK'")

    def install(self, call: Call) -> None:
        img = image_mask(self.name, call.model, call.inputs)
        beta, agg, k = self.beta, self.aggregation, self.top_k

        def guide(scores, image):
            if agg == "topK" and k > scores.shape[1]:
                raise MethodError(f"middle-layer: top_k={k} but the model has {scores.shape[1]} heads")
            return head_guided(scores, image, beta, agg, k)

        install_row_change(call, self.name, range(self.start_layer, self.end_layer), img, guide, lambda: not call.aux)
