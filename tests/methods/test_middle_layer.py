"""MiddleLayer (heads-guided attention intervention): the hooked generation equals a hand loop over a full-matrix
eager attention written as the authors' ``modify_attention.py`` (``mean`` and ``topK`` aggregation) on the tiny
LLaVA, Qwen2-VL and InstructBLIP."""

import pytest
import torch

from method_helpers import hooked_generate, no_hooks_left, reference_loop, vlm_case
from kvsmooth_hooks import KVSmoothConfig, smooth
from kvsmooth_hooks.methods import MethodError, MiddleLayer, build_method


def reference_change(beta, aggregation, top_k):
    """``modify_attention.py``'s "shift visual attention" block, as written (per batch element for topK)."""
    def change(w, s, e):
        if aggregation == "mean":
            w[:, :, -1, s:e] = w[:, :, -1, s:e] + beta * w[:, :, -1, s:e].abs().mean(dim=1, keepdim=True)
        else:
            summed = torch.softmax(w, dim=-1, dtype=torch.float32)[:, :, -1, s:e].sum(dim=-1)
            idx = torch.topk(summed, k=top_k, dim=-1).indices
            for i in range(w.shape[0]):
                w[i, :, -1, s:e] = w[i, :, -1, s:e] + beta * w[i, idx[i], -1, s:e].abs().mean(dim=0, keepdim=True)
    return change


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "instructblip"])
@pytest.mark.parametrize("aggregation", ["mean", "topK"])
def test_middle_layer_equals_the_reference_eager_forward(family, aggregation):
    model, inputs = vlm_case(family)
    method = MiddleLayer(beta=2.0, start_layer=1, end_layer=3, aggregation=aggregation, top_k=2)
    seq, logits = hooked_generate(model, inputs, 4, method)
    want = reference_loop(model, inputs, seq, range(1, 3), reference_change(2.0, aggregation, 2), amplify_prefill=True)
    plain = reference_loop(model, inputs, seq, [], reference_change(2.0, aggregation, 2), amplify_prefill=True)
    for k, got in enumerate(logits):
        assert torch.allclose(got, want[k], atol=1e-4), (family, k, (got - want[k]).abs().max())
    assert any((g - w).abs().max() > 1e-3 for g, w in zip(logits, plain))
    assert no_hooks_left(model)


def test_middle_layer_defaults_and_refusals():
    m = build_method("middle-layer")
    assert (m.beta, m.start_layer, m.end_layer, m.aggregation) == (0.5, 5, 19, "mean")
    with pytest.raises(MethodError, match="aggregation"):
        MiddleLayer(aggregation="max")
    model, inputs = vlm_case("llava")
    with pytest.raises(MethodError, match="layers 5..18"):  # the tiny model has 4 layers
        MiddleLayer().generate(model, **inputs, max_new_tokens=2)
    with pytest.raises(MethodError, match="top_k"):
        MiddleLayer(start_layer=0, end_layer=2, aggregation="topK", top_k=9).generate(model, **inputs, max_new_tokens=2)
    with pytest.raises(MethodError, match="KVSmooth"):
        with smooth(model, KVSmoothConfig(layers="1:3")):
            MiddleLayer(start_layer=0, end_layer=2).generate(model, **inputs, max_new_tokens=2)
    assert no_hooks_left(model)
