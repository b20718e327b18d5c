"""PAI: the hooked generation equals a hand loop over a full-matrix eager attention written as the authors'
``llama_new_forward`` (amplify row -1 of the masked logits at image keys), and the refined logits equal
``CFGLogits`` over that loop and a cache-free text-only forward; tiny LLaVA, Qwen2-VL and InstructBLIP."""

import math

import pytest
import torch

from helpers import tiny_llama
from method_helpers import (close_with_infs, greedy_choice, hooked_generate, image_positions, no_hooks_left,
                            reference_loop, vlm_case)
from kvsmooth_hooks import KVSmoothConfig, get_adapter, smooth
from kvsmooth_hooks.methods import PAI, MethodError

FAMILIES = ["llava", "qwen2_vl", "instructblip"]


def text_only_logits(model, ids):
    """Cache-free logits of the conversation without its image (and frame) tokens."""
    cfg = model.config
    drop = [v for v in (getattr(cfg, "image_token_id", None), getattr(cfg, "image_token_index", None),
                        getattr(cfg, "vision_start_token_id", None), getattr(cfg, "vision_end_token_id", None))
            if isinstance(v, int)]
    keep = ~torch.isin(ids[0], torch.tensor(drop))
    text = ids[:, keep]
    with torch.no_grad():
        lm = model.language_model if hasattr(model, "language_model") and hasattr(model.language_model, "lm_head") \
            else model
        return lm(input_ids=text, use_cache=False).logits[:, -1].float()


def pai_change(alpha):
    """``attention.py``: ``w[:, :, -1, s:e] = w[:, :, -1, s:e].abs() * alpha + w[:, :, -1, s:e]``."""
    def change(w, s, e):
        w[:, :, -1, s:e] = w[:, :, -1, s:e].abs() * alpha + w[:, :, -1, s:e]
    return change


def reference_cfg(s_logits, u_logits, gamma):
    s, u = torch.log_softmax(s_logits, -1), torch.log_softmax(u_logits, -1)
    out = gamma * (s - u) + u
    return out.masked_fill(s < math.log(0.1) + s.max(-1, keepdim=True).values, -math.inf)


@pytest.mark.parametrize("family", FAMILIES)
def test_pai_attention_equals_the_reference_eager_forward(family):
    model, inputs = vlm_case(family)
    n = get_adapter(model).n_layers
    pai = PAI(alpha=0.5, start_layer=1, use_cfg=False)
    seq, logits = hooked_generate(model, inputs, 4, pai)
    want = reference_loop(model, inputs, seq, range(1, n), pai_change(0.5), amplify_prefill=True)
    plain = reference_loop(model, inputs, seq, [], pai_change(0.5), amplify_prefill=True)
    for k, got in enumerate(logits):
        assert torch.allclose(got, want[k], atol=1e-4), (family, k, (got - want[k]).abs().max())
    assert any((g - w).abs().max() > 1e-3 for g, w in zip(logits, plain))  # amplification does something
    assert no_hooks_left(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_pai_refinement_equals_cfglogits_over_explicit_forwards(family):
    model, inputs = vlm_case(family)
    n = get_adapter(model).n_layers
    pai = PAI()  # alpha 0.2, gamma 1.1, layers 2..n-1, both parts on
    seq, logits = hooked_generate(model, inputs, 4, pai)
    main = reference_loop(model, inputs, seq, range(2, n), pai_change(0.2), amplify_prefill=False)  # the prefill quirk
    p = inputs["input_ids"].shape[1]
    for k, got in enumerate(logits):
        want = reference_cfg(main[k], text_only_logits(model, seq[:, : p + k]), 1.1)
        assert close_with_infs(got, want), (family, k)
        assert torch.equal(seq[:, p + k], greedy_choice(model, want))
    assert no_hooks_left(model)


def test_pai_refuses_what_it_cannot_serve():
    with pytest.raises(MethodError, match="text-only"):
        PAI().generate(tiny_llama(layers=2), input_ids=torch.tensor([[1, 5, 6]]), max_new_tokens=2)
    model, inputs = vlm_case("llava")
    no_image = dict(inputs, input_ids=inputs["input_ids"].masked_fill(image_positions(model, inputs["input_ids"]), 14))
    with pytest.raises(MethodError, match="no image token"):
        PAI().generate(model, **no_image, max_new_tokens=2)
    with pytest.raises(MethodError, match="end_layer"):
        PAI(start_layer=3, end_layer=2).generate(model, **inputs, max_new_tokens=2)
    with pytest.raises(MethodError, match="KVSmooth"):
        with smooth(model, KVSmoothConfig(layers="1:3")):
            PAI().generate(model, **inputs, max_new_tokens=2)
    assert no_hooks_left(model)
