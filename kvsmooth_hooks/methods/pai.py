"""PAI, "Paying more attention to image" (Liu et al., ECCV 2024), following github.com/LALBJ/PAI.

Two parts, each switchable as in the authors' scripts (``--use-attn``, ``--use-cfg``):

* attention amplification (``attention.py``, ``llama_new_forward``): in layers ``start_layer <= l < end_layer``,
  the *last query row* of every forward gets its pre-softmax attention logits to image keys raised,
  ``w <- w + alpha * |w|`` (logits already scaled by ``1/sqrt(d)`` and masked), then softmax as usual.
  Only that row changes (the newest token at decode steps, the prompt's last token at the prefill);
* logit refinement against a text-only pass (``CFG.py``, ``CFGLogits``): with ``s = log_softmax(l)`` of the
  image-conditioned logits and ``u = log_softmax(l_text)`` of the same conversation without the image tokens,
  ``gamma * (s - u) + u``, set to -inf where ``s < log(0.1) + max s``. The text-only pass has its own cache and
  no amplification.

Reproduced detail: the authors' ``llama_modify`` switches amplification off while ``use_cfg`` is set and
``CFGLogits`` switches it on only after its first text-only pass, so with the refinement on the prefill (the
first generated token) is not amplified. The image positions are the image-token positions of ``input_ids``
(LLaVA's image token, Qwen2-VL's ``<|image_pad|>``, InstructBLIP's query-token placeholders).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .base import Call, Method, MethodError, frame_token_ids, image_token_ids, register_method

__all__ = ["PAI", "amplified_last_row", "cfg_logits"]


def amplified_last_row(query, key, value, attention_mask, kwargs: dict, image: torch.Tensor, alpha: float):
    """Attention output of the last query position with image logits amplified.

    query ``[B, Hq, Q, D]``, key/value ``[B, Hkv, T, D]`` (GQA unrepeated), attention_mask None, bool or additive
    ``[B|1, 1|Hq, Q, T']``, image bool ``[B, T0]`` (T0 <= T: the prompt's image positions). Returns ``[B, Hq, D]``.
    """
    if kwargs.get("s_aux") is not None or kwargs.get("position_bias") is not None:
        raise MethodError("pai: attention sinks / position biases are not supported by the amplified row")
    b, hq, _, d = query.shape
    hkv, t = key.shape[1], key.shape[2]
    g = hq // hkv
    scaling = kwargs.get("scaling")
    scaling = d**-0.5 if scaling is None else scaling
    scores = torch.matmul(query[:, :, -1:, :].reshape(b, hkv, g, d), key.transpose(-1, -2))  # [B, Hkv, g, T]
    scores = scores.reshape(b, hq, 1, t).float() * scaling
    if kwargs.get("softcap"):
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    img = torch.zeros(b, t, dtype=torch.bool, device=scores.device)
    n = min(t, image.shape[1])
    img[:, :n] = image[:, :n].to(scores.device)
    scores = torch.where(img[:, None, None, :], scores + alpha * scores.abs(), scores)
    if attention_mask is not None and attention_mask.dim() == 4:
        m = attention_mask[..., -1:, :t]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    elif attention_mask is not None and attention_mask.dim() == 2:
        scores = scores.masked_fill(~attention_mask[:, None, None, -t:].bool(), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(query.dtype)  # the reference: float32 softmax, back to the query dtype
    out = torch.matmul(probs.reshape(b, hkv, g, t), value)  # [B, Hkv, g, D]
    return out.reshape(b, hq, d)


def cfg_logits(logits: torch.Tensor, text_logits: torch.Tensor, gamma: float, cutoff: float = 0.1) -> torch.Tensor:
    """``[B, V]``: ``CFGLogits.__call__`` of the reference (log-probabilities out)."""
    s = torch.log_softmax(logits, dim=-1)
    u = torch.log_softmax(text_logits, dim=-1)
    out = gamma * (s - u) + u
    return out.masked_fill(s < torch.log(torch.tensor(cutoff)) + s.max(dim=-1, keepdim=True).values, -float("inf"))


class _Attention:
    """The registered attention function: the base implementation, then the amplified last row where active."""

    def __init__(self, base: str, layers: dict[int, int], active):
        self.base, self.layers, self.active = base, layers, active
        self._eager: dict[type, object] = {}

    def _base_fn(self, module):
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
            row = amplified_last_row(query, key, value, attention_mask, kwargs, image[0], image[1])
            out = out.clone()
            out[:, -1] = row.to(out.dtype)  # out: [B, Q, Hq, D]
        return out, weights


@register_method
@dataclass
class PAI(Method):
    """``alpha`` 0.2, ``start_layer`` 2, ``end_layer`` None (= the number of layers; the authors' 32 on LLaVA-1.5's
    32), ``gamma`` 1.1: the settings of the README's CHAIR and POPE commands (``chair_eval.py``'s argparse default
    for gamma is 2). ``use_attn`` / ``use_cfg`` switch the two parts (both on in those commands)."""

    alpha: float = 0.2
    gamma: float = 1.1
    start_layer: int = 2
    end_layer: int | None = None
    use_attn: bool = True
    use_cfg: bool = True

    name = "pai"
    needs_image = True
    aux_cache = True
    source = "github.com/LALBJ/PAI attention.py (llama_new_forward, llama_modify), CFG.py (CFGLogits), chair_eval.py"

    def image_mask(self, model, inputs: dict) -> torch.Tensor:
        ids = inputs.get("input_ids")
        if ids is None:
            raise MethodError("pai: the generate call has no input_ids; PAI finds the image positions from the image "
                              "token in input_ids (inputs_embeds alone do not say where the image is)")
        img = torch.zeros_like(ids, dtype=torch.bool)
        for t in image_token_ids(model):
            img |= ids == t
        if not bool(img.any()):
            raise MethodError(f"pai: input_ids hold no image token ({image_token_ids(model)}); build the prompt with "
                              "the processor's chat template so that it contains the image")
        return img

    def install(self, call: Call) -> None:
        img = self.image_mask(call.model, call.inputs)
        if self.use_attn:
            self._install_attention(call, img)
        if self.use_cfg:
            self._install_cfg(call, img)

    def _install_attention(self, call: Call, img: torch.Tensor) -> None:
        from transformers.masking_utils import AttentionMaskInterface
        from transformers.modeling_utils import AttentionInterface

        from ..core.adapters import get_adapter

        adapter = get_adapter(call.model)
        n = adapter.n_layers
        end = n if self.end_layer is None else self.end_layer
        if not 0 <= self.start_layer < end <= n:
            raise MethodError(f"pai: start_layer={self.start_layer}, end_layer={self.end_layer}: need "
                              f"0 <= start_layer < end_layer <= {n} (this model's layers)")
        configs = adapter.attention_configs()
        base = configs[0]._attn_implementation or "eager"
        if base.endswith("_kvsmooth") or "_pai" in base:
            raise MethodError("pai: the attention implementation is already wrapped (a KVSmooth session or another "
                              f"PAI call: {base!r}); PAI replaces attention rows and cannot run inside those")
        if base not in ("eager",) and base not in AttentionInterface._global_mapping:
            raise MethodError(f"pai: attention implementation {base!r} is not in transformers' AttentionInterface")
        layers = {id(adapter.attention(i)): i for i in range(self.start_layer, end)}

        def active():
            if call.aux or (self.use_cfg and call.step == 0):  # text-only pass; the reference's prefill quirk
                return None
            return img, self.alpha

        key = f"{base}_pai{id(call)}"
        AttentionInterface.register(key, _Attention(base, layers, active))
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

    def _install_cfg(self, call: Call, img: torch.Tensor) -> None:
        ids = call.inputs["input_ids"]
        mask = call.inputs.get("attention_mask")
        keep = ~img
        for t in frame_token_ids(call.model):
            keep &= ids != t
        if mask is not None:
            keep &= mask.bool()
        rows = [ids[i][keep[i]] for i in range(ids.shape[0])]
        width = max(len(r) for r in rows)
        pad = call.model.generation_config.pad_token_id or 0
        text = torch.full((len(rows), width), int(pad), dtype=ids.dtype, device=ids.device)
        text_mask = torch.zeros_like(text)
        for i, r in enumerate(rows):  # left padding, as generation pads
            text[i, width - len(r):] = r
            text_mask[i, width - len(r):] = 1
        decoder, head = call.lm.get_decoder(), call.lm.get_output_embeddings()
        state = {"cache": None, "mask": text_mask}

        def refine(kwargs: dict, logits: torch.Tensor) -> torch.Tensor:
            if call.step == 0:
                tokens = text
            else:
                tokens = kwargs["input_ids"][:, -1:]
                state["mask"] = torch.cat([state["mask"], state["mask"].new_ones(len(rows), 1)], dim=1)
            out = call.aux_forward(decoder, input_ids=tokens.to(text.device), attention_mask=state["mask"],
                                   cache=state["cache"], use_cache=True)
            state["cache"] = out.cache
            text_logits = head(out.last_hidden_state[:, -1, :]).float()
            return cfg_logits(logits, text_logits, self.gamma)

        call.on_logits(refine)
