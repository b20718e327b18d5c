"""DoLa: the hooked generation's logits equal the original ``dola_greedy_decode`` step computed from the
explicit ``hidden_states`` of a cache-free forward (early exit ``lm_head(hidden_states[j])``), on tiny text
Llama, LLaVA, Qwen2-VL and InstructBLIP."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_llama
from method_helpers import close_with_infs, full_forward, hooked_generate, no_hooks_left, vlm_case
from kvsmooth_hooks import KVSmoothConfig, smooth
from kvsmooth_hooks.methods import DoLa, MethodError
from kvsmooth_hooks.methods.base import lm_module
from kvsmooth_hooks.methods.dola import candidate_layers


def reference_step(hidden_states, final_logits, cands, head, relative_top):
    """``dola_greedy_decode`` (dynamic premature layer) for a batch of one, as written in the original."""
    dict_outputs = {j: head(hidden_states[j][:, -1:, :]).float() for j in cands}
    stacked = torch.stack([dict_outputs[i][:, -1, :] for i in cands], dim=0)
    sm = F.softmax(final_logits, dim=-1)
    sp = F.softmax(stacked, dim=-1)
    m = 0.5 * (sm[None, :, :] + sp)
    kl1 = F.kl_div(F.log_softmax(final_logits, dim=-1)[None, :, :], m, reduction="none").mean(-1)
    kl2 = F.kl_div(F.log_softmax(stacked, dim=-1), m, reduction="none").mean(-1)
    js = (0.5 * (kl1 + kl2)).mean(-1)
    premature = cands[int(js.argmax())]
    base = dict_outputs[premature][:, -1, :]
    final = final_logits
    if relative_top > 0.0:
        normalized = final.log_softmax(dim=-1)
        sorted_logits, _ = torch.sort(normalized, descending=True)
        thresh = torch.min(sorted_logits[..., 0], normalized.max(dim=-1).values + np.log(relative_top)).unsqueeze(-1)
        normalized[normalized < thresh] = -float("inf")
        final = normalized
        base = base.log_softmax(dim=-1)
        mask = final[0] < -1e3
        base[0][mask] = -1e3
    return final - base, premature


def text_case():
    model = tiny_llama(layers=6)
    return model, {"input_ids": torch.tensor([[1, 17, 33, 5, 90, 41, 7]]), "attention_mask": torch.ones(1, 7, dtype=torch.long)}


@pytest.mark.parametrize("family", ["text", "llava", "qwen2_vl", "instructblip"])
@pytest.mark.parametrize("layers,relative_top", [("low", 0.1), ("high", 0.1), ("0,1,3", 0.0)])
def test_dola_equals_the_original_step_over_explicit_hidden_states(family, layers, relative_top):
    model, inputs = text_case() if family == "text" else vlm_case(family)
    dola = DoLa(layers=layers, relative_top=relative_top)
    head = lm_module(model).get_output_embeddings()
    with dola(model, inputs) as call:
        kw = dict(inputs, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
        if family != "text":
            kw["suppress_tokens"] = [int(model.config.image_token_id if hasattr(model.config, "image_token_id")
                                         else model.config.image_token_index)]
        out = model.generate(**kw)
    seq, logits = out.sequences, [s.float() for s in out.logits]
    n = model.config.get_text_config().num_hidden_layers
    lm = lm_module(model)
    cands = candidate_layers(layers, n, lm.get_output_embeddings().weight is lm.get_input_embeddings().weight)
    p, chosen = inputs["input_ids"].shape[1], []
    for k, got in enumerate(logits):
        final, hs = full_forward(model, inputs, seq[:, : p + k], hidden=True)
        assert len(hs) == n + 1
        want, prem = reference_step(hs, final, cands, head, relative_top)
        chosen.append(prem)
        assert close_with_infs(got, want), (family, k)
        if family == "text":
            assert torch.equal(seq[:, p + k], want.argmax(-1))
    assert sum(call.info["premature_layer_dist"].values()) == len(logits)
    assert {j for j, c in call.info["premature_layer_dist"].items() if c} == set(chosen)
    assert no_hooks_left(model)


def test_dola_layers_and_refusals():
    assert candidate_layers("low", 32) == [0, 2, 4, 6, 8, 10, 12, 14]  # the README's 7B setting
    assert candidate_layers("high", 32) == [16, 18, 20, 22, 24, 26, 28, 30]
    assert candidate_layers("low", 30, tied_embeddings=True) == [2, 4, 6, 8, 10, 12, 14]  # SmolLM2: no identity exit
    assert candidate_layers("low", 80) == list(range(0, 20, 2)) and candidate_layers("high", 80) == list(range(60, 80, 2))
    with pytest.raises(MethodError, match="layers"):
        candidate_layers("0,40", 32)
    model, inputs = text_case()
    with pytest.raises(MethodError, match="layers"):
        DoLa(layers="7").generate(model, **inputs, max_new_tokens=2)
    assert no_hooks_left(model)


def test_dola_composes_with_kvsmooth():
    model, inputs = text_case()
    cfg = KVSmoothConfig(lambda_ref=0.9, layers="1:5")
    with smooth(model, cfg) as session:
        seq, logits = hooked_generate(model, inputs, 5, DoLa())
    with smooth(model, cfg):
        plain = hooked_generate(model, inputs, 5)[1]
    assert len(session.trace.runs) == 1
    assert not all(close_with_infs(a, b) for a, b in zip(logits, plain))
    assert no_hooks_left(model)
