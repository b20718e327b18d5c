"""Real-model checks on SmolLM2-135M-Instruct (marked slow; run in CI)."""

import pytest
import torch

from helpers import reference_cache_decode, reference_kvproj_decode
from kvsmooth_hooks import KVSmoothConfig, smooth
from kvsmooth_hooks.models import chat_inputs

pytestmark = pytest.mark.slow
N = 24


@pytest.fixture(scope="module")
def inputs(smollm2):
    model, tok = smollm2
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # exactly N tokens, like the reference loops
    yield chat_inputs(tok, ["Describe a photo of a kitchen with a cat.", "Name three animals."])
    model.generation_config.eos_token_id = eos


def valid_positions(inputs, n):
    mask = inputs["attention_mask"]
    return torch.cat([mask, torch.ones(mask.shape[0], n - 1, dtype=mask.dtype)], 1).bool()


def generate(model, inputs, n=N):
    return model.generate(**inputs, max_new_tokens=n, do_sample=False, return_dict_in_generate=True)


def test_cache_site_matches_reference_on_smollm2(smollm2, inputs):
    model, _ = smollm2
    layers = list(range(3, 29))
    with smooth(model, KVSmoothConfig()) as s:
        out = generate(model, inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ref_tokens, ref_cache, ref_lams = reference_cache_decode(model, ids, mask, N, layers)
    assert torch.equal(out.sequences[:, ids.shape[1]:], ref_tokens)
    valid = valid_positions(inputs, N)
    for l in range(30):
        for name in ("keys", "values"):
            diff = (getattr(out.past_key_values.layers[l], name) - getattr(ref_cache.layers[l], name)).abs().amax(dim=(1, 3))
            assert diff[valid].max() < 1e-4, (l, name)
    lam = s.trace.tensor("lambda")
    assert torch.allclose(lam[:, 0, 0, 0], torch.tensor(ref_lams[3][0]), atol=1e-6)


def test_kv_proj_site_matches_reference_on_smollm2(smollm2, inputs):
    model, _ = smollm2
    layers = list(range(3, 29))
    with smooth(model, KVSmoothConfig(site="kv_proj")):
        out = generate(model, inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ref_tokens, ref_cache = reference_kvproj_decode(model, ids, mask, N, layers)
    assert torch.equal(out.sequences[:, ids.shape[1]:], ref_tokens)
    valid = valid_positions(inputs, N)
    for l in (3, 15, 28):
        diff = (out.past_key_values.layers[l].keys - ref_cache.layers[l].keys).abs().amax(dim=(1, 3))
        assert diff[valid].max() < 1e-4


def test_off_preset_and_head_granularity_on_smollm2(smollm2, inputs):
    model, _ = smollm2
    base = generate(model, inputs, n=12)
    with smooth(model, KVSmoothConfig.preset("off")):
        off = generate(model, inputs, n=12)
    assert torch.equal(base.sequences, off.sequences)
    with smooth(model, KVSmoothConfig(granularity="head")) as s:
        generate(model, inputs, n=20)
    lam = s.trace.tensor("lambda")  # [S, B, La, 3 KV heads]
    assert lam.shape[-1] == 3
    assert not torch.equal(lam[..., 0], lam[..., 1])  # per-KV-head coefficients differ on a real model
