"""The newest query row's attention with image logits raised: the shared machinery of PAI and MiddleLayer.

Both reference implementations (``attention.py`` of LALBJ/PAI, ``modify_attention.py`` of
ZhangqiJiang07/middle_layers_indicating_hallucinations) replace LLaMA's attention forward and, on the full
``[B, H, Q, T]`` weights, after ``scores * 1/sqrt(d) + mask`` clamped at the dtype's minimum, change row ``-1``
at the image columns before the float32 softmax. Here the model's own attention implementation runs unchanged
(sdpa stays sdpa) and only row ``-1`` is recomputed with the change: a session-scoped attention implementation
``<base>_pai<id>`` registered in transformers' ``AttentionInterface`` for one ``generate`` call, its
configs restored and the registry entries removed on exit.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from .base import Call, MethodError

__all__ = ["changed_last_row", "install_row_change"]

#: ``bump(scores [B, H, 1, T] float32, masked and clamped; image [B, T] bool) -> scores``
Bump = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def changed_last_row(query, key, value, attention_mask, kwargs: dict, image: torch.Tensor, bump: Bump):
    """Attention output of the last query position with ``bump`` applied to its logits.

    query ``[B, Hq, Q, D]``, key/value ``[B, Hkv, T, D]`` (GQA unrepeated), attention_mask None, bool or additive
    ``[B|1, 1|Hq, Q, T']`` (or a 2-D padding mask), image bool ``[B, T0]`` (T0 <= T: the prompt's image positions).
    Returns ``[B, Hq, D]``.
    """
    if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise MethodError("attention sinks / position biases are not supported by the changed attention row")
    b, hq, _, d = query.shape
    hkv, t = key.shape[1], key.shape[2]
    g = hq // hkv
    scaling = kwargs.get("scaling")
    scaling = d**-0.5 if scaling is None else scaling
    scores = torch.matmul(query[:, :, -1:, :].reshape(b, hkv, g, d), key.transpose(-1, -2))  # [B, Hkv, g, T]
    scores = scores.reshape(b, hq, 1, t).float() * scaling
    if kwargs.get("softcap"):
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    low = torch.finfo(scores.dtype).min
    if attention_mask is not None and attention_mask.dim() == 4:
        m = attention_mask[..., -1:, :t]
        scores = scores.masked_fill(~m, low) if m.dtype == torch.bool else scores + m.float()
    elif attention_mask is not None and attention_mask.dim() == 2:
        scores = scores.masked_fill(~attention_mask[:, None, None, -t:].bool(), low)
    scores = scores.clamp_min(low)  # as the references: weights + mask, then max(weights, finfo.min)
    img = torch.zeros(b, t, dtype=torch.bool, device=scores.device)
    n = min(t, image.shape[1])
    img[:, :n] = image[:, :n].to(scores.device)
    scores = bump(scores, img)
    probs = torch.softmax(scores, dim=-1).to(query.dtype)  # float32 softmax, back to the query dtype
    out = torch.matmul(probs.reshape(b, hkv, g, t), value)  # [B, Hkv, g, D]
    return out.reshape(b, hq, d)


class _Attention:
    """The registered attention function: the base implementation, then the changed last row where active."""

    def __init__(self, base: str, layers: set[int], active: Callable, bump: Bump):
        self.base, self.layers, self.active, self.bump = base, layers, active, bump
        self._eager: dict[type, Callable] = {}

    def _base_fn(self, module) -> Callable:
        from transformers.modeling_utils import AttentionInterface

        if self.base != "eager":
            return AttentionInterface._global_mapping[self.base]
        fn = self._eager.get(type(module))
        if fn is None:
            fn = self._eager[type(module)] = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
        return fn

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        out, weights = self._base_fn(module)(module, query, key, value, attention_mask, **kwargs)
        image = self.active() if id(module) in self.layers else None
        if image is not None:
            row = changed_last_row(query, key, value, attention_mask, kwargs, image, self.bump)
            out = out.clone()
            out[:, -1] = row.to(out.dtype)  # out: [B, Q, Hq, D]
        return out, weights


def install_row_change(call: Call, name: str, layers: range, image: torch.Tensor, bump: Bump,
                       active: Callable[[], bool]) -> None:
    """Change row -1 of every forward's attention in ``layers`` with ``bump`` while ``active()``, for one call."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    from ..core.adapters import get_adapter

    adapter = get_adapter(call.model)
    n = adapter.n_layers
    if not (len(layers) and 0 <= layers[0] and layers[-1] < n):
        raise MethodError(f"{name}: layers {layers.start}..{layers.stop - 1}: need a non-empty range inside this "
                          f"model's layers 0..{n - 1} (start_layer < end_layer <= {n})")
    configs = adapter.attention_configs()
    base = configs[0]._attn_implementation or "eager"
    if base.endswith("_kvsmooth") or "_pai" in base:
        raise MethodError(f"{name}: the attention implementation is already wrapped ({base!r}: a KVSmooth session or "
                          "another attention method); this method replaces attention rows and cannot run inside it")
    if base != "eager" and base not in AttentionInterface._global_mapping:
        raise MethodError(f"{name}: attention implementation {base!r} is not in transformers' AttentionInterface")
    modules = {id(adapter.attention(i)) for i in layers}
    key = f"{base}_pai{id(call)}"
    AttentionInterface.register(key, _Attention(base, modules, lambda: image if active() else None, bump))
    mask_fn = AttentionMaskInterface._global_mapping.get(base)
    if mask_fn is not None:
        AttentionMaskInterface.register(key, mask_fn)
    saved = [(cfg, cfg._attn_implementation_internal) for cfg in configs]

    def undo():
        for cfg, impl in saved:
            cfg._attn_implementation_internal = impl
        AttentionInterface._global_mapping.pop(key, None)
        AttentionMaskInterface._global_mapping.pop(key, None)

    call.stack.callback(undo)
    for cfg in configs:
        cfg._attn_implementation_internal = key


def image_mask(name: str, model, inputs: dict) -> torch.Tensor:
    """``[B, T0]`` bool: the image-token positions of the call's ``input_ids``."""
    from .base import image_token_ids

    ids = inputs.get("input_ids")
    if ids is None:
        raise MethodError(f"{name}: the generate call has no input_ids; the image positions are found from the image "
                          "token in input_ids (inputs_embeds alone do not say where the image is)")
    img = torch.zeros_like(ids, dtype=torch.bool)
    for t in image_token_ids(model):
        img |= ids == t
    if not bool(img.any()):
        raise MethodError(f"{name}: input_ids hold no image token ({image_token_ids(model)}); build the prompt with "
                          "the processor's chat template so that it contains the image")
    return img
