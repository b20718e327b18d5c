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

from dataclasses import dataclass

import torch

from ..core.adapters import get_adapter
from .base import Call, Method, frame_token_ids
from .registry import register_method
from .row_attention import image_mask, install_row_change

__all__ = ["PAI", "cfg_logits"]


def cfg_logits(logits: torch.Tensor, text_logits: torch.Tensor, gamma: float, cutoff: float = 0.1) -> torch.Tensor:
    """``[B, V]``: ``CFGLogits.__call__`` of the reference (log-probabilities out)."""
    s = torch.log_softmax(logits, dim=-1)
    u = torch.log_softmax(text_logits, dim=-1)
    out = gamma * (s - u) + u
    return out.masked_fill(s < torch.log(torch.tensor(cutoff)) + s.max(dim=-1, keepdim=True).values, -float("inf"))


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
    composes_with_kvsmooth = False
    needs_image = True
    aux_cache = True
    source = "github.com/LALBJ/PAI attention.py (llama_new_forward, llama_modify), CFG.py (CFGLogits), chair_eval.py"

    def install(self, call: Call) -> None:
        img = image_mask(self.name, call.model, call.inputs)
        if self.use_attn:
            n = get_adapter(call.model).n_layers
            alpha = self.alpha

            def amplify(scores, image):  # w + alpha |w| at the image columns
                return torch.where(image[:, None, None, :], scores + alpha * scores.abs(), scores)

            # off in the text-only pass and, with the refinement on, at the prefill (the reference's llama_modify)
            install_row_change(call, self.name, range(self.start_layer, n if self.end_layer is None else self.end_layer),
                               img, amplify, lambda: not call.aux and not (self.use_cfg and call.step == 0))
        if self.use_cfg:
            self._install_cfg(call, img)

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
