"""One model per structural kind (hybrid, shared KV, cross-attention, encoder-decoder, MLA, Falcon, KV head counts
that differ between layers): discovery
reads the structure, and both sites equal reference decode loops written here without the package.

The references find attention modules and projections by the models' own attribute names, capture eager
attention rows with plain forward hooks, and edit caches / projection outputs by hand: KVSmooth's five steps
(row entropy, FIFO window of 15, percentile rank, clip to lambda_ref +- 0.2, blend with the previous entry).
"""

from __future__ import annotations

import pytest
import torch

from helpers import CACHE_KW, reference_lambda
from kvsmooth_hooks import KVSmoothConfig, PlanError, UnsupportedModelError, get_adapter, smooth
from kvsmooth_hooks.tiny_configs import build

pytestmark = pytest.mark.usefixtures("one_thread")
N = 6  # new tokens
LAM, WINDOW, CLIP = 0.9, 15, 0.2


def _model(name, attn=None):
    model = build(name, attn_implementation=attn)
    g = model.generation_config
    g.eos_token_id, g.pad_token_id, g.forced_eos_token_id = None, 0, None
    if getattr(model.config, "is_encoder_decoder", False) and g.decoder_start_token_id is None:
        g.decoder_start_token_id = 0
    return model


# ------------------------------------------------------------------------------------------ structure per model
def _jamba(model):  # hybrid: layer 0 Mamba, layer 1 attention
    layers = model.model.layers
    attn = {i: l.self_attn for i, l in enumerate(layers) if hasattr(l, "self_attn")}
    proj = {i: [(a.k_proj, None), (a.v_proj, None)] for i, a in attn.items()}
    return attn, proj


def _gemma3n(model):  # layers 2, 3 reuse the KV of layers 0, 1
    layers = model.model.layers
    attn = {i: l.self_attn for i, l in enumerate(layers) if not l.self_attn.is_kv_shared_layer}
    proj = {i: [(a.k_proj, None), (a.v_proj, None)] for i, a in attn.items()}
    return attn, proj


def _mllama(model):  # layer 1 is a cross-attention layer
    layers = model.model.language_model.layers
    attn = {i: l.self_attn for i, l in enumerate(layers) if hasattr(l, "self_attn")}
    proj = {i: [(a.k_proj, None), (a.v_proj, None)] for i, a in attn.items()}
    return attn, proj


def _t5(model):  # encoder-decoder: the decoder's self-attention (block.layer[0]), not its cross-attention
    blocks = model.decoder.block
    attn = {i: b.layer[0].SelfAttention for i, b in enumerate(blocks)}
    proj = {i: [(a.k, None), (a.v, None)] for i, a in attn.items()}
    return attn, proj


def _deepseek(model):  # MLA: the cache and the projection hold the compressed latent and the shared rotary key
    attn = {i: l.self_attn for i, l in enumerate(model.model.layers)}
    proj = {i: [(a.kv_a_proj_with_mqa, None)] for i, a in attn.items()}
    return attn, proj


def _falcon(model):  # multi-query: query_key_value = [q (H*D) | k (D) | v (D)]
    c = model.config
    d = c.hidden_size // c.num_attention_heads
    q = c.num_attention_heads * d
    attn = {i: l.self_attention for i, l in enumerate(model.transformer.h)}
    proj = {i: [(a.query_key_value, slice(q, q + 2 * d))] for i, a in attn.items()}
    return attn, proj


def _mimo(model):  # KV heads differ between layers (2, then 4), and value heads are narrower than key heads
    attn = {i: l.self_attn for i, l in enumerate(model.model.layers)}
    proj = {i: [(a.k_proj, None), (a.v_proj, None)] for i, a in attn.items()}
    return attn, proj


KINDS = {
    "hybrid": ("JambaForCausalLM", _jamba),
    "shared_kv": ("Gemma3nForCausalLM", _gemma3n),
    "cross_attention": ("MllamaForConditionalGeneration", _mllama),
    "encoder_decoder": ("T5ForConditionalGeneration", _t5),
    "mla": ("DeepseekV3ForCausalLM", _deepseek),
    "falcon": ("FalconForCausalLM", _falcon),
    "mixed_kv_heads": ("MiMoV2FlashForCausalLM", _mimo),
}


# ------------------------------------------------------------------------------------------ reference loops
def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 100, (2, 7), generator=g)
    return ids, torch.ones_like(ids)


def _forward(model, ids, mask, tok, cache):
    kw = {"use_cache": True}
    if cache is not None:
        kw[CACHE_KW] = cache
    if getattr(model.config, "is_encoder_decoder", False):
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=tok, **kw)
    return model(input_ids=tok, attention_mask=mask, **kw)


def _self_cache(cache):
    return getattr(cache, "self_attention_cache", cache)



@torch.no_grad()
def reference(model, structure, site):
    """Greedy decoding with KVSmooth written out; returns (tokens [B, N], final self-attention cache)."""
    attn, proj = structure(model)
    if model.config._attn_implementation != "eager":
        model.set_attn_implementation("eager")
    rows, windows, prev, lam = {}, {}, {}, {}
    state = {"decode": False}
    hooks = [m.register_forward_hook(lambda mod, a, out, l=l: rows.__setitem__(l, out[-1][:, :, -1].float()))
             for l, m in attn.items()]

    def proj_hook(l, slc):
        def hook(mod, args, out):
            x = out if slc is None else out[..., slc]
            key = (l, id(mod))
            if state["decode"]:
                for s in range(x.shape[0]):
                    x[s, -1] = (1 - lam[l][s]) * x[s, -1] + lam[l][s] * prev[key][s]
            prev[key] = x[:, -1].clone()
            return out

        return hook

    if site == "kv_proj":
        hooks += [m.register_forward_hook(proj_hook(l, slc)) for l, ps in proj.items() for m, slc in ps]
    try:
        ids, mask = _inputs(model)
        b = ids.shape[0]
        enc = getattr(model.config, "is_encoder_decoder", False)
        tok = torch.full((b, 1), model.generation_config.decoder_start_token_id, dtype=torch.long) if enc else ids
        out = _forward(model, ids, mask, tok, None)
        cache = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
        tokens = [nxt]
        for _ in range(N - 1):
            if site == "kv_proj":  # coefficients from the previous forward's rows
                for l in attn:
                    lam[l] = reference_lambda(windows, l, rows[l], LAM, WINDOW, CLIP)
                state["decode"] = True
            if not enc:
                mask = torch.cat([mask, mask.new_ones(b, 1)], -1)
            out = _forward(model, ids, mask, nxt[:, None], cache)
            if site == "cache":
                for l, m in attn.items():
                    lam_l = reference_lambda(windows, l, rows[l], LAM, WINDOW, CLIP)
                    layer = _self_cache(cache).layers[m.layer_idx]
                    for t in (layer.keys, layer.values):
                        for s in range(b):
                            t[s, :, -1] = (1 - lam_l[s]) * t[s, :, -1] + lam_l[s] * t[s, :, -2]
            nxt = out.logits[:, -1].argmax(-1)
            tokens.append(nxt)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(tokens, 1), _self_cache(cache), attn


def _generate(model, **kw):
    ids, mask = _inputs(model)
    with smooth(model, KVSmoothConfig(layers="all", lambda_ref=LAM, window=WINDOW, clip=CLIP, **kw)) as s:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False,
                             return_dict_in_generate=True)
    toks = out.sequences[:, -N:]
    return toks, _self_cache(out.past_key_values), s


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_site_matches_reference_loop(kind, site):
    name, structure = KINDS[kind]
    model = _model(name, "eager" if kind == "falcon" else None)  # the reference reads eager rows (sdpa: test_inline.py)
    toks, cache, session = _generate(model, site=site)
    ref_toks, ref_cache, attn = reference(model, structure, site)
    assert sorted(session.state.layers) == sorted(attn)  # exactly the layers with their own KV cache
    assert torch.equal(toks, ref_toks)
    for l, m in attn.items():
        mine, theirs = cache.layers[m.layer_idx], ref_cache.layers[m.layer_idx]
        assert torch.allclose(mine.keys, theirs.keys, atol=1e-4), (kind, site, l)
        assert torch.allclose(mine.values, theirs.values, atol=1e-4), (kind, site, l)


def test_smoothing_changes_tokens_or_cache_for_every_kind():
    """The reference comparison above is not vacuous: lambda 0.9 moves the cache away from the unhooked run."""
    for kind, (name, structure) in KINDS.items():
        model = _model(name)
        ids, mask = _inputs(model)
        plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False,
                               return_dict_in_generate=True)
        _, cache, _ = _generate(model, site="cache", scorer="key_similarity")
        attn, _ = structure(model)
        l = next(iter(attn.values())).layer_idx
        assert not torch.allclose(_self_cache(plain.past_key_values).layers[l].keys, cache.layers[l].keys), kind


def test_discovery_reports_each_layer_kind():
    ad = get_adapter(_model("JambaForCausalLM"))
    assert [l.kind for l in ad.structure.layers] == ["JambaMambaMixer", "attention"]
    ad = get_adapter(_model("Gemma3nForCausalLM"))
    assert [(l.kind, l.reads) for l in ad.structure.layers] == [("attention", None), ("attention", None),
                                                                 ("shared_kv", 0), ("shared_kv", 1)]
    ad = get_adapter(_model("MllamaForConditionalGeneration"))
    assert [l.kind for l in ad.structure.layers] == ["attention", "cross_attention", "attention"]
    assert ad.decoder() is ad.model.model.language_model
    ad = get_adapter(_model("T5ForConditionalGeneration"))
    assert ad.decoder() is ad.model.decoder and ad.attention(0) is ad.model.decoder.block[0].layer[0].SelfAttention
    ad = get_adapter(_model("DeepseekV3ForCausalLM"))
    h = ad.heads(0)
    assert h.latent and h.n_kv == 1 and h.k_dim == ad.model.config.kv_lora_rank


@pytest.mark.parametrize("name,layer,kind", [("JambaForCausalLM", 0, "JambaMambaMixer"),
                                             ("Gemma3nForCausalLM", 2, "reuses the KV cache of layer 0"),
                                             ("MllamaForConditionalGeneration", 1, "cross-attention")])
def test_selecting_a_layer_without_own_cache_names_its_kind(name, layer, kind):
    model = _model(name)
    with pytest.raises(PlanError, match=rf"layers: layer {layer} .*{kind}"):
        smooth(model, KVSmoothConfig(layers=[layer]))
    with pytest.raises(PlanError, match=rf"overrides\[0\]\.layers: layer {layer} "):
        smooth(model, KVSmoothConfig(layers="all", overrides=[{"layers": [layer], "lambda_ref": 0.5}]))


def test_mla_latent_blend_equals_blending_decompressed_keys_and_values():
    """Why smoothing MLA's cached latent is KVSmooth on its keys and values: they are linear in it (no bias)."""
    model = _model("DeepseekV3ForCausalLM")
    attn = model.model.layers[0].self_attn
    assert attn.kv_b_proj.bias is None
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 1, 2, attn.kv_lora_rank, generator=g)
    rot = torch.randn(2, 1, 2, attn.qk_rope_head_dim, generator=g)
    lam = 0.7
    with torch.no_grad():
        k, v = attn.expand_kv(lat, rot)  # [B, H, 2, Dk], [B, H, 2, Dv]
        ks, vs = attn.expand_kv(torch.lerp(lat[:, :, 1:], lat[:, :, :1], lam), torch.lerp(rot[:, :, 1:], rot[:, :, :1], lam))
    assert torch.allclose(ks[:, :, 0], torch.lerp(k[:, :, 1], k[:, :, 0], lam), atol=1e-5)
    assert torch.allclose(vs[:, :, 0], torch.lerp(v[:, :, 1], v[:, :, 0], lam), atol=1e-5)


def test_mla_refuses_smoothing_keys_without_values():
    model = _model("DeepseekV3ForCausalLM")
    ids, mask = _inputs(model)
    with pytest.raises(UnsupportedModelError, match="multi-head latent attention.*targets"):
        with smooth(model, KVSmoothConfig(layers="all", targets=["key"])):
            model.generate(input_ids=ids, max_new_tokens=2)


def test_mixed_kv_head_counts_need_layer_granularity():
    model = _model("MiMoV2FlashForCausalLM")
    with pytest.raises(UnsupportedModelError, match="different KV head counts .*granularity 'layer'"):
        with smooth(model, KVSmoothConfig(layers="all", granularity="head")):
            pass
