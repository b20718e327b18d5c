"""A matrix over tiny random models of every supported decoder family (no downloads)."""

import pytest
import torch

from archs import DECODERS
from helpers import reference_cache_decode
from kvsmooth_hooks import KVSmoothConfig, SessionError, get_adapter, smooth

ROWLESS = {"falcon_mq"}  # attention computed inline: scorers that need no attention row only


@pytest.fixture(scope="module", params=sorted(DECODERS))
def arch(request):
    return request.param, DECODERS[request.param]()


def scorer_for(name):
    return "key_similarity" if name in ROWLESS else "row_entropy"


def prompts():
    torch.manual_seed(4)
    ids = torch.randint(3, 128, (2, 8))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


def gen(model, ids, mask, n=8):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                          output_logits=True, return_dict_in_generate=True)


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_hooks_identity_and_change(arch, site):
    name, model = arch
    ad = get_adapter(model)
    ids, mask = prompts()
    base = gen(model, ids, mask)
    with smooth(model, KVSmoothConfig(layers="all", site=site, scorer=scorer_for(name))) as s:
        per_layer = 1 if site == "cache" or ad.key_slot(0).module is ad.value_slot(0).module else 2
        assert hook_count(model) == per_layer * ad.n_layers + 2
        out = gen(model, ids, mask)
    assert hook_count(model) == 0
    assert any(not torch.equal(a, b) for a, b in zip(out.logits, base.logits)), "smoothing changed nothing"
    with smooth(model, KVSmoothConfig.preset("off", layers="all", site=site)):
        off = gen(model, ids, mask)
    assert torch.equal(off.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(off.logits, base.logits))
    assert s.trace.tensor("lambda").shape == (7, 2, ad.n_layers, ad.n_kv_heads)


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_left_padding_equals_alone(arch, site):
    name, model = arch
    ids, mask = prompts()
    cfg = KVSmoothConfig(layers="all", site=site, scorer=scorer_for(name))
    with smooth(model, cfg):
        both = gen(model, ids, mask).sequences
        alone = gen(model, ids[1:, 3:], mask[1:, 3:]).sequences
    assert torch.equal(both[1, 8:], alone[0, 5:])


def test_cache_site_exact_against_reference(arch):
    name, model = arch
    if name in ROWLESS:
        with pytest.raises(SessionError, match="does not go through transformers' attention interface"):
            smooth(model, KVSmoothConfig(layers="all"))
        return
    ids, mask = prompts()
    n_layers = get_adapter(model).n_layers
    with smooth(model, KVSmoothConfig(layers="all")):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                             return_dict_in_generate=True)
    ref_tokens, ref_cache, _ = reference_cache_decode(model, ids, mask, 12, list(range(n_layers)))
    assert torch.equal(out.sequences[:, 8:], ref_tokens)
    for l in range(n_layers):
        a, b = out.past_key_values.layers[l], ref_cache.layers[l]
        t = a.keys.shape[2]
        valid = torch.cat([mask, torch.ones(2, 11, dtype=mask.dtype)], 1)[:, -t:].bool()
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            assert (x - y).abs().amax(dim=(1, 3))[valid].max() < 1e-4, (name, l)


def test_fused_kv_proj_rewrites_only_k_and_v(arch):
    """kv_proj on fused QKV: the query part of the projection output is never touched."""
    name, model = arch
    ad = get_adapter(model)
    slot = ad.key_slot(1)
    if slot.module is ad.value_slot(1).module is None or ad.key_slot(1).module is not ad.value_slot(1).module:
        pytest.skip("separate key/value projections")
    seen = {}

    def spy(mod, args, out):
        seen.setdefault("outs", []).append(out.detach().clone())

    ids, mask = prompts()
    h = slot.module.register_forward_hook(spy)  # registered first: sees the raw output
    try:
        with smooth(model, KVSmoothConfig(layers=[1], site="kv_proj", scorer="constant", lambda_ref=0.5)):
            h2 = slot.module.register_forward_hook(lambda m, a, o: seen.setdefault("after", []).append(o.detach().clone()))
            try:
                gen(model, ids, mask, n=3)
            finally:
                h2.remove()
    finally:
        h.remove()
    raw, after = seen["outs"][-1], seen["after"][-1]  # last decode step
    kh = ad.key_slot(1).heads(raw, ad.n_kv_heads, ad.head_dim)
    vh = ad.value_slot(1).heads(raw, ad.n_kv_heads, ad.head_dim)
    mask_kv = torch.zeros_like(raw, dtype=torch.bool)
    ad.key_slot(1).heads(mask_kv, ad.n_kv_heads, ad.head_dim).fill_(True)
    ad.value_slot(1).heads(mask_kv, ad.n_kv_heads, ad.head_dim).fill_(True)
    assert torch.equal(after[~mask_kv], raw[~mask_kv])  # queries untouched
    assert not torch.equal(ad.key_slot(1).heads(after, ad.n_kv_heads, ad.head_dim), kh)
    assert not torch.equal(ad.value_slot(1).heads(after, ad.n_kv_heads, ad.head_dim), vh)
