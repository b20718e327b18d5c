"""VCD: the hooked generation's logits equal the authors' formula over two explicit forwards (original and
distorted image), on the tiny LLaVA, Qwen2-VL and InstructBLIP; composition with KVSmooth; refusals."""

import math

import pytest
import torch

from helpers import tiny_llama
from method_helpers import close_with_infs, greedy_choice, full_forward, hooked_generate, no_hooks_left, vlm_case
from kvsmooth_hooks import KVSmoothConfig, smooth
from kvsmooth_hooks.methods import VCD, MethodError, build_method
from kvsmooth_hooks.methods.base import lm_module
from kvsmooth_hooks.methods.vcd import diffusion_noise

FAMILIES = ["llava", "qwen2_vl", "instructblip"]


def reference_cd(l, l_cd, alpha, beta):
    """``vcd_sample.py``: cutoff = log(beta) + max l; (1+alpha) l - alpha l_cd where l >= cutoff."""
    out = torch.empty_like(l)
    for b in range(l.shape[0]):
        cutoff = math.log(beta) + float(l[b].max())
        for v in range(l.shape[1]):
            out[b, v] = (1 + alpha) * l[b, v] - alpha * l_cd[b, v] if l[b, v] >= cutoff else -math.inf
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_vcd_logits_equal_formula_over_two_explicit_forwards(family):
    model, inputs = vlm_case(family)
    vcd = VCD(alpha=1.0, beta=0.1, noise_step=500)
    seq, logits = hooked_generate(model, inputs, 4, vcd)
    noised = vcd.distorted_inputs(inputs)
    p = inputs["input_ids"].shape[1]
    for k, got in enumerate(logits):
        ids = seq[:, : p + k]
        want = reference_cd(full_forward(model, inputs, ids), full_forward(model, noised, ids), 1.0, 0.1)
        assert close_with_infs(got, want), (family, k)
        assert torch.equal(seq[:, p + k], greedy_choice(model, want))  # greedy picks the contrasted argmax
    assert no_hooks_left(model)


def test_vcd_changes_the_generation_and_the_noise_matters():
    model, inputs = vlm_case("llava")
    base, _ = hooked_generate(model, inputs, 6)
    seq, _ = hooked_generate(model, inputs, 6, VCD())
    assert not torch.equal(base, seq)
    x = inputs["pixel_values"]
    assert not torch.equal(VCD(seed=0).distorted_inputs(inputs)["pixel_values"], VCD(seed=1).distorted_inputs(inputs)["pixel_values"])
    assert torch.equal(VCD().distorted_inputs(inputs)["pixel_values"], VCD().distorted_inputs(inputs)["pixel_values"])
    assert torch.equal(x, inputs["pixel_values"])  # the original is untouched


def test_diffusion_noise_follows_the_schedule():
    x = torch.randn(2, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    got = diffusion_noise(x, 500, g1)
    # vcd_add_noise.py, written out: betas on a sigmoid ramp, alpha-bar the running product
    betas = [1 / (1 + math.exp(-(-6 + 12 * i / 999))) * (0.5e-2 - 1e-5) + 1e-5 for i in range(1000)]
    abar = 1.0
    for b in betas[:501]:
        abar *= 1 - b
    eps = torch.randn(x.shape, generator=g2)
    assert torch.allclose(got, math.sqrt(abar) * x + math.sqrt(1 - abar) * eps, atol=1e-5)
    assert 0.7 < abar < 0.8  # at step 500 the sigmoid ramp is still gentle: about 3/4 of the signal variance left
    with pytest.raises(MethodError, match="noise_step"):
        VCD(noise_step=1000)


def test_vcd_with_kvsmooth_contrasts_the_smoothed_model_with_the_plain_distorted_one():
    model, inputs = vlm_case("llava")
    cfg = KVSmoothConfig(lambda_ref=0.9, layers="1:3")
    vcd = VCD()
    with smooth(model, cfg) as session:
        seq, logits = hooked_generate(model, inputs, 4, vcd)
    assert session.trace.runs and len(session.trace.runs) == 1  # the contrast forwards were not a second run
    # explicit: the smoothed model in a hand loop over the same tokens, the distorted image cache-free unsmoothed
    noised, p = vcd.distorted_inputs(inputs), inputs["input_ids"].shape[1]
    smoothed = []
    with smooth(model, cfg), torch.no_grad():
        out = model(**inputs, use_cache=True)
        smoothed.append(out.logits[:, -1].float())
        cache, mask = out.cache, inputs["attention_mask"]
        for k in range(1, len(logits)):
            mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
            out = model(input_ids=seq[:, p + k - 1: p + k], attention_mask=mask, cache=cache, use_cache=True)
            smoothed.append(out.logits[:, -1].float())
            cache = out.cache
    unsmoothed = hooked_generate(model, inputs, 4, vcd)[1]
    for k, got in enumerate(logits):
        want = reference_cd(smoothed[k], full_forward(model, noised, seq[:, : p + k]), 1.0, 0.1)
        assert close_with_infs(got, want), k
    assert not all(close_with_infs(a, b) for a, b in zip(logits, unsmoothed))  # smoothing did something
    assert no_hooks_left(model)


def test_vcd_refuses_what_it_cannot_serve():
    text = tiny_llama(layers=2)
    ids = torch.tensor([[1, 5, 6, 7]])
    with pytest.raises(MethodError, match="text-only"):
        VCD().generate(text, input_ids=ids, max_new_tokens=2)
    model, inputs = vlm_case("llava")
    with pytest.raises(MethodError, match="pixel_values"):
        VCD().generate(model, input_ids=inputs["input_ids"], max_new_tokens=2)
    with pytest.raises(MethodError, match="num_beams"):
        VCD().generate(model, **inputs, max_new_tokens=2, num_beams=2)
    with pytest.raises(MethodError, match="beta"):
        VCD(beta=0.0)
    with pytest.raises(MethodError, match="no parameter"):
        build_method("vcd", gamma=1)
    assert build_method("vcd", alpha="0.5", noise_step="999") == VCD(alpha=0.5, noise_step=999)


def test_hooks_removed_when_generation_raises():
    model, inputs = vlm_case("llava")
    lm = lm_module(model)

    def boom(*a, **k):
        raise RuntimeError("boom")

    h = lm.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        VCD().generate(model, **inputs, max_new_tokens=2)
    h.remove()
    assert no_hooks_left(model)


def test_around_generate_inside_and_outside_a_session():
    model, inputs = vlm_case("llava")
    direct, _ = hooked_generate(model, inputs, 3, VCD())
    with VCD().around_generate(model):
        via, _ = hooked_generate(model, inputs, 3)
    assert torch.equal(direct, via) and "generate" not in vars(model)
    cfg = KVSmoothConfig(lambda_ref=0.9, layers="1:3")
    with smooth(model, cfg):
        composed, _ = hooked_generate(model, inputs, 3, VCD())
    with smooth(model, cfg) as session, VCD().around_generate(model):
        wrapped, _ = hooked_generate(model, inputs, 3)
    assert torch.equal(composed, wrapped) and len(session.trace.runs) == 1
    assert "generate" not in vars(model) and no_hooks_left(model)


def test_contrast_forwards_stay_hidden_from_a_session_on_the_inner_language_model():
    model, inputs = vlm_case("instructblip")
    with smooth(model.language_model, KVSmoothConfig(lambda_ref=0.9, layers="1:3")) as session:
        seq, _ = hooked_generate(model, inputs, 4, VCD())
    assert len(session.trace.runs) == 1 and seq.shape[1] == inputs["input_ids"].shape[1] + 4
    assert no_hooks_left(model)
