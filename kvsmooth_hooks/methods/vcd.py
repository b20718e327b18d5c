"""VCD, visual contrastive decoding (Leng et al., CVPR 2024), following github.com/DAMO-NLP-SG/VCD.

At every step the next-token logits ``l`` (original image) are contrasted with the logits ``l'`` of the same
prompt with a distorted image, under the adaptive plausibility constraint (``vcd_utils/vcd_sample.py``)::

    cutoff = log(beta) + max_v l_v
    l_cd   = (1 + alpha) * l - alpha * l'        where l >= cutoff, else -inf

``l'`` comes from a second forward with its own cache, fed the same tokens. The distorted image is the
preprocessed image tensor under the forward diffusion process at step ``noise_step`` of 1000
(``vcd_utils/vcd_add_noise.py``): ``beta_t = sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5``,
``abar_t = prod_{s<=t} (1 - beta_s)``, ``x' = sqrt(abar_t) x + sqrt(1 - abar_t) eps``, ``eps ~ N(0, 1)``.
The contrasted logits replace the model's last-position logits, so the generation's own logits processors and
warpers (and its greedy or sampling choice) apply to them, as in the authors' sampling loop.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from .base import Call, Method, MethodError, image_token_ids
from .registry import register_method

__all__ = ["VCD", "diffusion_noise", "vcd_logits"]


def diffusion_noise(x: torch.Tensor, noise_step: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (any shape, e.g. ``[B, C, H, W]`` pixel values) at step ``noise_step`` of VCD's noise schedule."""
    if not 0 <= int(noise_step) < 1000:
        raise MethodError(f"vcd: noise_step={noise_step}: must be in 0..999 (the schedule has 1000 steps)")
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    abar = torch.cumprod(1 - betas, dim=0)[int(noise_step)]
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    out = abar.sqrt() * x.detach().float().cpu() + (1 - abar).sqrt() * eps
    return out.to(device=x.device, dtype=x.dtype)


def vcd_logits(logits: torch.Tensor, logits_cd: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """``[B, V]`` contrastive logits with the plausibility cut-off (``vcd_sample.py``, "version 2")."""
    cutoff = torch.log(torch.tensor(beta, dtype=logits.dtype)) + logits.max(dim=-1, keepdim=True).values
    diffs = (1 + alpha) * logits - alpha * logits_cd
    return diffs.masked_fill(logits < cutoff, -float("inf"))


@register_method
@dataclass
class VCD(Method):
    """``alpha`` (cd_alpha, 1.0), ``beta`` (cd_beta, 0.1) and ``noise_step`` (500): the defaults of the authors'
    ``experiments/eval/object_hallucination_vqa_*.py``; ``seed``: the noise of an image is drawn from a generator
    seeded with ``seed`` and a checksum of the image tensor (the same image gets the same noise in every arm)."""

    alpha: float = 1.0
    beta: float = 0.1
    noise_step: int = 500
    seed: int = 0

    name = "vcd"
    needs_image = True
    aux_cache = True
    source = "github.com/DAMO-NLP-SG/VCD vcd_utils/vcd_sample.py, vcd_utils/vcd_add_noise.py"

    def __post_init__(self):
        if not 0 < self.beta <= 1:
            raise MethodError(f"vcd: beta={self.beta}: the plausibility cut-off log(beta) needs 0 < beta <= 1")
        diffusion_noise(torch.zeros(1), self.noise_step)  # range check

    def distorted_inputs(self, inputs: dict) -> dict:
        """The call's inputs with every image tensor replaced by its noised copy. Each image gets its own noise,
        seeded with ``seed`` and a checksum of that image's tensor, so a batch gets what each image gets alone."""
        out = dict(inputs)
        for key, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            x = inputs.get(key)
            if x is None:
                continue
            if inputs.get(grid) is not None:  # Qwen2-VL: the patches of all images in one [N, D] tensor
                sizes = [int(n) for n in inputs[grid].prod(-1)]
            else:
                sizes = [1] * x.shape[0]
            parts = []
            for chunk in torch.split(x, sizes, dim=0):
                crc = zlib.crc32(chunk.detach().float().cpu().numpy().tobytes())
                parts.append(diffusion_noise(chunk, self.noise_step, torch.Generator().manual_seed(self.seed * 1_000_003 + crc)))
            out[key] = torch.cat(parts, dim=0)
        return out

    def install(self, call: Call) -> None:
        state = {"cache": None}
        noised = self.distorted_inputs(call.inputs)

        def contrast(kwargs: dict, logits: torch.Tensor) -> torch.Tensor:
            kw = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}
            if call.step == 0:  # the prompt, with the distorted image instead of the encoded original
                kw = prefill_kwargs(call, kw, noised)
            kw.update(cache=state["cache"], use_cache=True)
            out = call.aux_forward(call.lm, **kw)
            state["cache"] = out.cache
            if state["cache"] is None:
                raise MethodError(f"vcd: {type(call.lm).__name__} returned no cache for the contrast forward")
            return vcd_logits(logits, out.logits[:, -1, :].float(), self.alpha, self.beta)

        call.on_logits(contrast)


def prefill_kwargs(call: Call, kw: dict, images: dict) -> dict:
    """The main prefill's keyword arguments with the image replaced by ``images`` (the call's image inputs).

    Models that encode the image inside their forward (LLaVA, Qwen2-VL: generate pre-encodes it into
    ``mm_encoder_outputs``) get the raw image tensors back; models whose ``generate`` hands merged embeddings to
    the language model (InstructBLIP, BLIP-2) get the embeddings rebuilt with :meth:`get_image_features`."""
    if call.lm is call.model:
        kw.pop("mm_encoder_outputs", None)
        kw.update({k: v for k, v in images.items() if k not in kw and k not in ("input_ids", "attention_mask")})
        return kw
    if kw.get("inputs_embeds") is None or "input_ids" not in images:
        raise MethodError(f"{type(call.model).__name__}: the language model's prefill has no inputs_embeds to "
                          "rebuild with the distorted image")
    feats = call.model.get_image_features(**{k: v for k, v in images.items()
                                             if k in ("pixel_values", "qformer_input_ids", "qformer_attention_mask")},
                                          return_dict=True).pooler_output
    ids = images["input_ids"]
    where = torch.zeros_like(ids, dtype=torch.bool)
    for t in image_token_ids(call.model):
        where |= ids == t
    emb = kw["inputs_embeds"].clone()
    emb[where.to(emb.device)] = feats.reshape(-1, feats.shape[-1]).to(emb.dtype)
    kw["inputs_embeds"] = emb
    return kw
