"""Shared pieces of the inference-time method tests: tiny VLM cases and explicit (cache-free or hand-looped)
forwards that the methods' hooked generations are compared against."""

from __future__ import annotations

import torch
from PIL import Image

from tiny_vlms import build_tiny_vlm

PROMPT = "Describe the image in detail."


def vlm_case(family: str, batch: int = 1):
    """``(model, inputs)``: a tiny VLM and processor inputs for one (or ``batch`` different) images."""
    model, proc = build_tiny_vlm(family)
    colours = [(120, 30, 200), (10, 200, 40), (250, 250, 0)]
    size = 16 if family != "llava" else 32
    images = [Image.new("RGB", (size, size), colours[i % 3]) for i in range(batch)]
    if family == "instructblip":
        inputs = proc(images=images, text=[PROMPT] * batch, return_tensors="pt")
    else:
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
        text = proc.apply_chat_template(conv, add_generation_prompt=True)
        inputs = proc(images=images, text=[text] * batch, return_tensors="pt")
    inputs = dict(inputs)
    if family == "qwen2_vl":  # what the real Qwen2-VL processor returns beside input_ids (the tests' stand-in does not)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.image_token_id).long()
    return model, inputs


def image_ids(model) -> list[int]:
    """Token ids a random tiny model must not generate (an image token in the text breaks image forwards)."""
    cfg = model.config
    return sorted({v for k in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                               "vision_end_token_id") if isinstance(v := getattr(cfg, k, None), int)})


def full_forward(model, inputs: dict, ids: torch.Tensor, **extra) -> torch.Tensor:
    """Last-position logits ``[B, V]`` of one cache-free forward over ``ids`` (prompt + generated tokens) with the
    image tensors of ``inputs``."""
    kw = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    kw["input_ids"] = ids
    kw["attention_mask"] = torch.ones_like(ids)
    if "mm_token_type_ids" in inputs:  # Qwen2-VL: the token types of its M-RoPE positions
        kw["mm_token_type_ids"] = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        return model(**kw, use_cache=False, **extra).logits[:, -1, :].float()


def hooked_generate(model, inputs: dict, n: int, method=None, **gen):
    """Greedy generation with per-step logits (the logits generation chose from)."""
    kw = dict(inputs, max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True, **gen)
    if image_ids(model):
        kw.setdefault("suppress_tokens", image_ids(model))
    out = method.generate(model, **kw) if method is not None else model.generate(**kw)
    return out.sequences, [s.float() for s in out.logits]


def greedy_choice(model, logits: torch.Tensor) -> torch.Tensor:
    """The token greedy generation takes from ``logits [B, V]`` (image tokens suppressed)."""
    logits = logits.clone()
    logits[:, image_ids(model)] = -float("inf")
    return logits.argmax(-1)


def close_with_infs(a: torch.Tensor, b: torch.Tensor, atol=1e-4) -> bool:
    """Equal -inf patterns and finite entries within ``atol``."""
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    return bool(torch.equal(fa, fb)) and torch.allclose(a[fa], b[fb], atol=atol, rtol=1e-4)


def our_hooks(module) -> int:
    """Forward hooks and pre-hooks on any submodule whose function comes from this package (transformers adds
    output recorders of its own on a model's first generation)."""
    return sum(getattr(h, "__module__", "").startswith("kvsmooth_hooks")
               for m in module.modules() for d in (m._forward_hooks, m._forward_pre_hooks) for h in d.values())


def no_hooks_left(module) -> bool:
    """None of our hooks, and no wrapped attention implementation."""
    impls = {str(m.config._attn_implementation) for m in module.modules() if hasattr(getattr(m, "config", None),
                                                                                  "_attn_implementation")}
    return our_hooks(module) == 0 and not any("_pai" in i or "_kvsmooth" in i for i in impls)
