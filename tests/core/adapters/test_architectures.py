"""The adapter matrix: every architecture family, both sites, on tiny random models (no downloads)."""

from __future__ import annotations

import pytest
import torch

from helpers import reference_cache_decode, reference_kvproj_decode
from kvsmooth_hooks.core.adapters.generic import uses_attention_interface
from kvsmooth_hooks import KVSmoothConfig, SessionError, UnsupportedModelError, get_adapter, smooth
from tiny_models import FUSED, INLINE, NO_ROWS, TEXT, VLM, build, vlm_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
SITES = ["cache", "kv_proj"]
N = 8  # new tokens


def cfg_for(name, **kw):
    if name in NO_ROWS:
        kw.setdefault("scorer", "key_similarity")
    return KVSmoothConfig(layers="all", **kw)


def inputs(name, model, batch=2, seed=0):
    if name in VLM:
        return vlm_inputs(name, model, batch=batch, seed=seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (batch, 9), generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


def gen(model, inp, n=N):
    return model.generate(**inp, max_new_tokens=n, do_sample=False, output_scores=True, return_dict_in_generate=True)


def n_hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", TEXT + VLM)
def test_hooks_per_layer_only_on_the_language_decoder(name, site):
    model = build(name)
    ad = get_adapter(model)
    before, dec_before = n_hooks(model), n_hooks(ad.decoder())
    with smooth(model, cfg_for(name, site=site)) as s:
        per_layer = 0 if site == "cache" else 1 if name in FUSED else 2  # cache: entries read from the decoder's cache
        # inline attention (Falcon up to transformers 5.24; from 5.25 it uses the attention interface): the row
        # capture's pre- and post-hook
        per_layer += 2 if name in INLINE and not uses_attention_interface(ad.attention(0)) else 0
        assert len(s.handles) == 2 + ad.n_layers * per_layer
        added = n_hooks(model) - before
        assert added == len(s.handles)
        assert n_hooks(ad.decoder()) - dec_before == added  # nothing on the vision tower / projector
    assert n_hooks(model) == before


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", TEXT + VLM)
def test_lambda_zero_is_identity_and_smoothing_changes_output(name, site):
    model = build(name)
    inp = inputs(name, model)
    base = gen(model, inp)
    with smooth(model, cfg_for(name, site=site, lambda_ref=0.0, clip=0.0)) as s:
        same = gen(model, inp)
    assert torch.equal(same.sequences, base.sequences)
    for a, b in zip(same.scores, base.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert s.trace.tensor("lambda").shape == (N - 1, 2, get_adapter(model).n_layers, get_adapter(model).n_kv_heads)
    with smooth(model, cfg_for(name, site=site, lambda_ref=0.9)) as s:
        out = gen(model, inp)
    diff = max(float((a - b).abs().max()) for a, b in zip(out.scores, base.scores))
    assert diff > 1e-3, f"{name}/{site}: smoothing did not change the logits"
    assert float(s.trace.tensor("lambda").max()) > 0
    if name in VLM:  # image tokens are prompt tokens: the whole prompt is prefill, decode steps follow
        assert s.trace.runs[-1].prompt_len == inp["input_ids"].shape[1]


def _padded():
    torch.manual_seed(3)
    a, b = torch.randint(3, 128, (1, 9)), torch.randint(3, 128, (1, 6))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.cat([torch.ones(1, 9), torch.cat([torch.zeros(1, 3), torch.ones(1, 6)], 1)]).long()
    return ids, mask, a, b


#: reference loops read eager rows; Falcon's eager and sdpa paths differ on left padding, so Falcon runs eager here
#: (its sdpa rows are checked against eager ones in tests/core/test_inline.py)
EXACT = [n + "_eager" if n in INLINE else n for n in TEXT if n not in NO_ROWS]


@pytest.mark.parametrize("name", EXACT)
def test_cache_site_matches_reference_loop(name):
    model = build(name)
    ids, mask, _, _ = _padded()
    layers = list(range(get_adapter(model).n_layers))
    with smooth(model, cfg_for(name)) as s:
        out = gen(model, dict(input_ids=ids, attention_mask=mask))
    ref_tokens, _, ref_lams = reference_cache_decode(model, ids, mask, N, layers)
    assert torch.equal(out.sequences[:, ids.shape[1]:], ref_tokens)
    lam = s.trace.tensor("lambda")
    for j, l in enumerate(layers):
        for seq in range(2):
            torch.testing.assert_close(lam[:, seq, j, 0], torch.tensor(ref_lams[l][seq]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", EXACT)
def test_kv_proj_site_matches_reference_loop(name):
    model = build(name)
    ids, mask, _, _ = _padded()
    layers = list(range(get_adapter(model).n_layers))
    with smooth(model, cfg_for(name, site="kv_proj")):
        out = gen(model, dict(input_ids=ids, attention_mask=mask))
    ref_tokens, _ = reference_kvproj_decode(model, ids, mask, N, layers)
    assert torch.equal(out.sequences[:, ids.shape[1]:], ref_tokens)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", TEXT)
def test_left_padded_batch_equals_each_prompt_alone(name, site):
    model = build(name)
    ids, mask, a, b = _padded()
    cfg = cfg_for(name, site=site)
    with smooth(model, cfg):
        both = gen(model, dict(input_ids=ids, attention_mask=mask)).sequences[:, ids.shape[1]:]
        one = gen(model, dict(input_ids=a, attention_mask=torch.ones_like(a))).sequences[:, a.shape[1]:]
        two = gen(model, dict(input_ids=b, attention_mask=torch.ones_like(b))).sequences[:, b.shape[1]:]
    assert torch.equal(both, torch.cat([one, two]))


# ---------------------------------------------------------------------- clear errors
def test_falcon_new_architecture_cache_site_edits_every_copy_of_a_kv_head_alike():
    """Falcon-40B layout: the cache holds each of the 2 KV heads once per query head of its group (4 cached heads);
    after smoothing the copies of one KV head are still equal, and the smoothed entry differs from the plain one."""
    model = build("falcon_new")
    if get_adapter(model).cache_head_repeat(0) == 1:
        pytest.skip("this transformers version caches each KV head of Falcon's new architecture once (5.25 on)")
    inp = inputs("falcon_new", model)
    plain = gen(model, inp).past_key_values
    with smooth(model, cfg_for("falcon_new", site="cache")):
        out = gen(model, inp).past_key_values
    for layer, ref in zip(out.layers, plain.layers):
        assert layer.keys.shape[1] == 4
        for t in (layer.keys, layer.values):
            assert torch.equal(t[:, 0], t[:, 1]) and torch.equal(t[:, 2], t[:, 3])
        assert not torch.allclose(layer.keys, ref.keys)


def test_sliding_window_too_small_for_the_cache_site():
    import transformers as T

    from helpers import no_eos

    torch.manual_seed(0)
    model = no_eos(T.MistralForCausalLM(T.MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                                         num_hidden_layers=1, num_attention_heads=4,
                                                         num_key_value_heads=2, sliding_window=2)).eval())
    ids = torch.randint(3, 128, (1, 6))
    with pytest.raises(UnsupportedModelError, match="sliding window of 2 tokens"):
        with smooth(model, KVSmoothConfig(layers="all")):
            model.generate(ids, max_new_tokens=3, do_sample=False)
    with smooth(model, KVSmoothConfig(layers="all", site="kv_proj")):  # the projection site works
        model.generate(ids, max_new_tokens=3, do_sample=False)


def test_encoder_decoder_language_model_smooths_only_the_decoder_self_attention():
    """InstructBLIP-FlanT5: the T5 decoder's self-attention is hooked (not the encoder, not cross-attention)."""
    import transformers as T

    t5 = T.T5Config(vocab_size=160, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0)
    cfg = T.InstructBlipConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=4, image_size=16, patch_size=8),
                               qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=4, vocab_size=100),
                               text_config=t5.to_dict(), num_query_tokens=4)
    model = T.InstructBlipForConditionalGeneration(cfg).eval()
    ad = get_adapter(model)
    assert ad.decoder() is model.language_model.decoder
    assert [ad.attention(i) for i in range(ad.n_layers)] == [b.layer[0].SelfAttention for b in ad.layers()]
    before = n_hooks(model)
    from kvsmooth_hooks.core.probe import _LISTENERS

    with smooth(model, KVSmoothConfig(layers="all", site="cache")) as s:
        assert n_hooks(model.language_model.decoder) == len(s.handles) == 2  # entries read from the decoder's cache
        assert n_hooks(model.language_model.encoder) == 0 and n_hooks(model.vision_model) == 0
        listened = {id(m) for m in model.modules()} & set(_LISTENERS)  # attention rows: decoder self-attention only
        assert listened == {id(b.layer[0].SelfAttention) for b in ad.layers()}
    assert n_hooks(model) == before


def test_model_without_self_attention_names_its_layer_kinds():
    import transformers as T

    model = T.MambaForCausalLM(T.MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4))
    with pytest.raises(UnsupportedModelError, match=r"MambaForCausalLM: no self-attention layer .*MambaMixer"):
        get_adapter(model)


def test_smooth_prefill_cache_site_refuses_mixed_sliding_and_global_layers():
    model = build("gemma2")  # layer 0 sliding (window 4), layer 1 global; a 9-token prompt
    ids = torch.randint(3, 128, (1, 9))
    with pytest.raises(SessionError, match="sliding-window and global layers"):
        with smooth(model, KVSmoothConfig(layers="all", smooth_prefill=True, scorer="key_similarity")):
            model.generate(ids, max_new_tokens=2, do_sample=False)
    with smooth(model, KVSmoothConfig(layers=[1], smooth_prefill=True, scorer="key_similarity")):
        model.generate(ids, max_new_tokens=2, do_sample=False)
