"""Remote-code decoders loaded with ``trust_remote_code=True`` from a local folder (stand-ins in tests/remote_code.py):
InternLM2's packed ``wqkv`` with an inline sdpa call and Qwen-VL's fused ``c_attn`` with an inline softmax work on
both sites with the default config (the paper's scorer), equal reference decode loops written here, and a model
that keeps legacy tuple caches is refused with a clear error.

The reference reads each layer's query from the packed / fused projection output by the layout's own slicing, applies
the stand-in's rotary function, computes the attention row against the cache's keys by hand, and edits the cache
(cache site) or the projection outputs (kv_proj site) by hand: KVSmooth's five steps.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from helpers import reference_lambda
from kvsmooth_hooks import KVSmoothConfig, UnsupportedModelError, get_adapter, smooth
from remote_code import load, write

pytestmark = pytest.mark.usefixtures("one_thread")
N = 6
LAM, WINDOW, CLIP = 0.9, 15, 0.2
LAYOUTS = ["internlm2", "qwenvl"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    return {(l, legacy): write(root / f"{l}_{legacy}", l, legacy) for l in LAYOUTS for legacy in (False, True)}


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (2, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _generate(model, **kw):
    return model.generate(**_inputs(), max_new_tokens=N, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, **kw)


def _split(layout, attn, out):
    """(query [B, H, T, D], key slice view [B, T, Hkv, D], value slice view) of one fused projection output."""
    b, t, _ = out.shape
    if layout == "internlm2":  # per KV group [q * g, k, v]
        x = out.view(b, t, attn.num_key_value_heads, attn.num_key_value_groups + 2, attn.head_dim)
        return x[..., :-2, :].flatten(2, 3).transpose(1, 2), x[..., -2, :], x[..., -1, :]
    q, k, v = out.split(attn.split_size, dim=2)
    shape = (b, t, attn.num_heads, attn.head_dim)
    return q.reshape(shape).transpose(1, 2), k.view(shape), v.view(shape)



@torch.no_grad()
def reference(layout, model, site):
    """Greedy decoding with KVSmooth written out; (tokens [B, N], cache)."""
    dec = model.model if layout == "internlm2" else model.transformer
    attns = [getattr(l, "attention" if layout == "internlm2" else "attn") for l in getattr(dec, "layers", None) or dec.h]
    rotary = sys.modules[type(attns[0]).__module__].rotary
    queries, windows, prev, lam, state = {}, {}, {}, {}, {"decode": False, "pos": None}

    def proj_hook(l, attn):
        def hook(mod, args, out):
            q, k, v = _split(layout, attn, out)
            queries[l] = rotary(q, state["pos"])[:, :, -1:]  # the newest query [B, H, 1, D], post-rotary
            if site == "kv_proj":
                for name, x in (("k", k), ("v", v)):
                    if state["decode"]:
                        for s in range(x.shape[0]):
                            x[s, -1] = (1 - lam[l][s]) * x[s, -1] + lam[l][s] * prev[(l, name)][s]
                    prev[(l, name)] = x[:, -1].clone()
            return out

        return hook

    def row(l, cache):  # the newest query's attention row over every cached key (GQA: each query head its group)
        keys, q = cache.layers[l].keys, queries[l]
        keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], 1)
        return torch.softmax((q @ keys.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]), -1)[:, :, 0]

    mods = [a.wqkv if layout == "internlm2" else a.c_attn for a in attns]
    hooks = [m.register_forward_hook(proj_hook(l, a)) for l, (m, a) in enumerate(zip(mods, attns))]
    try:
        inp = _inputs()
        ids, mask = inp["input_ids"], inp["attention_mask"]
        b, t = ids.shape
        state["pos"] = torch.arange(t).expand(b, -1)
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out.past_key_values
        rows = {l: row(l, cache) for l in range(len(attns))}
        nxt = out.logits[:, -1].argmax(-1)
        tokens = [nxt]
        for _ in range(N - 1):
            if site == "kv_proj":  # coefficients from the previous forward's rows
                lam = {l: reference_lambda(windows, l, rows[l], LAM, WINDOW, CLIP) for l in rows}
                state["decode"] = True
            mask = torch.cat([mask, mask.new_ones(b, 1)], -1)
            state["pos"] = torch.full((b, 1), mask.shape[1] - 1)
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=state["pos"], cache=cache,
                        use_cache=True)
            rows = {l: row(l, cache) for l in range(len(attns))}
            if site == "cache":
                for l in rows:
                    lam_l = reference_lambda(windows, l, rows[l], LAM, WINDOW, CLIP)
                    for x in (cache.layers[l].keys, cache.layers[l].values):
                        for s in range(b):
                            x[s, :, -1] = (1 - lam_l[s]) * x[s, :, -1] + lam_l[s] * x[s, :, -2]
            nxt = out.logits[:, -1].argmax(-1)
            tokens.append(nxt)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(tokens, 1), cache


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_remote_code_matches_reference_loop(folders, layout, site):
    model = load(folders[(layout, False)])
    assert type(model).__module__.startswith("transformers_modules")  # loaded as remote code
    ad = get_adapter(model)
    assert ad.inline_attention(0) and ad.n_kv_heads == (2 if layout == "internlm2" else 4)
    with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=LAM, window=WINDOW, clip=CLIP)) as s:
        out = _generate(model)
    assert s.probe is None  # rows from the modules' own sdpa / softmax calls
    ref_toks, ref_cache = reference(layout, model, site)
    assert torch.equal(out.sequences[:, -N:], ref_toks)
    for mine, theirs in zip(out.past_key_values.layers, ref_cache.layers):
        torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-4, rtol=0)
        torch.testing.assert_close(mine.values, theirs.values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_remote_code_lambda_zero_is_identity_and_default_config_changes_logits(folders, layout, site):
    model = load(folders[(layout, False)])
    base = torch.stack(_generate(model).logits)
    with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0)):
        zero = torch.stack(_generate(model).logits)
    with smooth(model, KVSmoothConfig(site=site)):  # the default config (paper's scorer and layers)
        smoothed = torch.stack(_generate(model).logits)
    assert torch.equal(zero, base)
    assert not torch.equal(smoothed, base)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_legacy_tuple_cache_is_refused_clearly(folders, layout, site):
    model = load(folders[(layout, True)])
    _generate(model)  # the model itself runs
    with pytest.raises(UnsupportedModelError, match="legacy tuples .*transformers Cache"):
        with smooth(model, KVSmoothConfig(site=site)):
            _generate(model)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
