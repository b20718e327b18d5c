"""Shared pieces of the inference-time method tests: tiny VLM cases and explicit (cache-free or hand-looped)
forwards that the methods' hooked generations are compared against."""

from __future__ import annotations

import torch
from PIL import Image
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

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


def full_forward(model, inputs: dict, ids: torch.Tensor, hidden: bool = False):
    """Last-position logits ``[B, V]`` of one cache-free forward over ``ids`` (prompt + generated tokens) with the
    image tensors of ``inputs``; with ``hidden``, also the language model's ``hidden_states`` tuple."""
    kw = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    kw["input_ids"] = ids
    kw["attention_mask"] = torch.ones_like(ids)
    if "mm_token_type_ids" in inputs:  # Qwen2-VL: the token types of its M-RoPE positions
        kw["mm_token_type_ids"] = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        out = model(**kw, use_cache=False, output_hidden_states=hidden)
    logits = out.logits[:, -1, :].float()
    if not hidden:
        return logits
    inner = getattr(out, "language_model_outputs", None)
    return logits, (inner.hidden_states if inner is not None else out.hidden_states)


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


def step_positions(model, inputs: dict, n: int) -> list:
    """The ``position_ids`` generation passes to the language model at each of ``n`` forwards (None where it
    passes none): hand loops reuse them (Qwen2-VL's M-RoPE decode positions are generation's business)."""
    from kvsmooth_hooks.methods.base import lm_module

    seen = []
    h = lm_module(model).register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("position_ids")),
                                                   with_kwargs=True)
    try:
        hooked_generate(model, inputs, n)
    finally:
        h.remove()
    return seen


def cache_of(out):
    """The cache a forward returned (InstructBLIP nests its language model's output)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.language_model_outputs.cache


class ReferenceAttention:
    """The weights path of the references' ``llama_new_forward`` (PAI ``attention.py``, MiddleLayer
    ``modify_attention.py``) on full ``[B, H, Q, T]`` matrices: scores * scale + mask, clamp at the dtype's minimum,
    ``change(w, img_start, img_end)`` in the chosen layers, float32 softmax, weights @ V."""

    def __init__(self, layers, image, change):
        self.layers, self.image, self.change, self.on = set(layers), image, change, False

    def __call__(self, module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        g = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
        w = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            m = attention_mask[..., : key.shape[2]]
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=w.dtype).masked_fill(~m, torch.finfo(w.dtype).min)
            w = torch.max(w + m, torch.tensor(torch.finfo(w.dtype).min))
        if self.on and module.layer_idx in self.layers:
            where = self.image[0].nonzero()[:, 0]  # one image: img_start_idx .. img_end_idx
            self.change(w, int(where[0]), int(where[-1]) + 1)
        p = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
        return torch.matmul(p, value).transpose(1, 2).contiguous(), p


def image_positions(model, ids):
    cfg = model.config
    tok = getattr(cfg, "image_token_id", None)
    tok = getattr(cfg, "image_token_index", None) if tok is None else tok
    return ids == tok


def reference_loop(model, inputs, seq, layers, change, amplify_prefill):
    """Per-step logits of a hand-written cached loop over ``seq`` with :class:`ReferenceAttention` installed."""
    p = inputs["input_ids"].shape[1]
    ref = ReferenceAttention(layers, image_positions(model, inputs["input_ids"]), change)
    AttentionInterface.register("pai_reference", ref)
    AttentionMaskInterface.register("pai_reference", AttentionMaskInterface._global_mapping["eager"])
    from kvsmooth_hooks import get_adapter
    from kvsmooth_hooks.methods.base import lm_module

    configs = get_adapter(model).attention_configs()
    saved = [c._attn_implementation_internal for c in configs]
    for c in configs:
        c._attn_implementation_internal = "pai_reference"
    steps, positions = [], step_positions(model, inputs, seq.shape[1] - p)
    try:
        with torch.no_grad():
            ref.on = amplify_prefill
            out = model(**inputs, use_cache=True)
            steps.append(out.logits[:, -1].float())
            ref.on = True
            cache, mask = cache_of(out), inputs["attention_mask"]
            for k in range(1, seq.shape[1] - p):
                mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
                out = lm_module(model)(input_ids=seq[:, p + k - 1: p + k], attention_mask=mask, cache=cache,
                                       position_ids=positions[k], use_cache=True)
                steps.append(out.logits[:, -1].float())
                cache = out.cache
    finally:
        for c, s in zip(configs, saved):
            c._attn_implementation_internal = s
        AttentionInterface._global_mapping.pop("pai_reference")
        AttentionMaskInterface._global_mapping.pop("pai_reference")
    return steps
