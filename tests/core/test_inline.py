"""Attention written inline (core/inline.py): Falcon (both layouts, default sdpa), Bloom, GPT-Neo, MPT, Git and BLIP
captioning equal a reference decode loop written here, at the cache site, with the paper's scorer (row_entropy);
rows read from an inline sdpa call equal eager probabilities; nothing outlives the session, also when it raises.

The reference runs each model's own forward with ``output_attentions=True`` (eager probabilities, read from the
attention modules' second output by plain hooks, the modules found by the models' own attribute names) and edits
the cache by hand: KVSmooth's five steps (row entropy, FIFO window of 15, percentile rank, clip, blend).
"""

from __future__ import annotations


import pytest
import torch

from helpers import CACHE_KW, reference_lambda
from kvsmooth_hooks.core.adapters.generic import uses_attention_interface
from kvsmooth_hooks import KVSmoothConfig, SessionError, smooth

from kvsmooth_hooks.tiny_configs import build

pytestmark = pytest.mark.usefixtures("one_thread")
N = 6
LAM, WINDOW, CLIP = 0.9, 15, 0.2


def _falcon_new(model):
    return [l.self_attention for l in model.transformer.h]


MODELS = {  # class -> (config overrides, attention modules by the model's own names)
    "falcon": ("FalconForCausalLM", {}, lambda m: [l.self_attention for l in m.transformer.h]),
    "falcon_new": ("FalconForCausalLM", {"new_decoder_architecture": True, "num_kv_heads": 2}, _falcon_new),
    "bloom": ("BloomForCausalLM", {}, lambda m: [l.self_attention for l in m.transformer.h]),
    "gpt_neo": ("GPTNeoForCausalLM", {}, lambda m: [l.attn.attention for l in m.transformer.h]),
    "mpt": ("MptForCausalLM", {}, lambda m: [l.attn for l in m.transformer.blocks]),
    "git": ("GitForCausalLM", {}, lambda m: [l.attention.self for l in m.git.encoder.layer]),
    "blip": ("BlipForConditionalGeneration", {}, lambda m: [l.attention.self for l in m.text_decoder.bert.encoder.layer]),
}


def _model(kind, attn=None):
    name, extra, attention = MODELS[kind]
    model = build(name, attn_implementation=attn, **({"overrides": extra} if extra else {}))
    g = model.generation_config
    g.eos_token_id, g.pad_token_id, g.forced_eos_token_id, g.use_cache = None, 0, None, True
    if model.config.model_type == "blip":
        model.config.text_config.sep_token_id = None  # BLIP's generate stops at the SEP token: never here
    return model, attention(model)


def _inputs(kind, model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 100, (2, 7), generator=g)
    inp = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind in ("git", "blip"):
        vc = model.config.vision_config
        inp["pixel_values"] = torch.randn(2, getattr(vc, "num_channels", 3), vc.image_size, vc.image_size, generator=g)
    return inp



@torch.no_grad()
def reference(kind, model, attention):
    """Greedy decoding with the cache edited by hand after every decode step; (tokens [B, N], cache). Rows are read
    at decode steps only: a prefill with ``output_attentions`` takes Falcon's eager path with a mask built for sdpa."""
    inp = _inputs(kind, model)
    rows, windows = {}, {}

    def keep(l, out):
        if out[1] is not None:  # None at the prefill (no output_attentions)
            rows[l] = out[1][:, :, -1].float()

    hooks = [m.register_forward_hook(lambda mod, a, out, l=l: keep(l, out)) for l, m in enumerate(attention)]
    try:
        if kind == "blip":  # BLIP's generate: BOS first, the last prompt token dropped, image states to the decoder
            emb = model.vision_model(pixel_values=inp["pixel_values"])[0]
            ids = inp["input_ids"].clone()
            ids[:, 0] = model.config.text_config.bos_token_id
            ids, mask = ids[:, :-1], inp["attention_mask"][:, :-1]

            def step(tok, mask, cache):
                kw = {CACHE_KW: cache} if cache is not None else {}
                return model.text_decoder(input_ids=tok, attention_mask=mask, encoder_hidden_states=emb,
                                          use_cache=True, output_attentions=cache is not None, **kw)
        else:
            ids, mask = inp["input_ids"], inp["attention_mask"]

            def step(tok, mask, cache):
                kw = {CACHE_KW: cache} if cache is not None else {"pixel_values": inp["pixel_values"]} \
                    if "pixel_values" in inp else {}
                if kind == "git":  # as Git's generate: text positions, no mask (the cache also holds the image)
                    kw["position_ids"] = torch.arange(mask.shape[1] - tok.shape[1], mask.shape[1]).expand(tok.shape[0], -1)
                    mask = None
                return model(input_ids=tok, attention_mask=mask, use_cache=True, output_attentions=cache is not None, **kw)

        out = step(ids, mask, None)
        cache = getattr(out.past_key_values, "self_attention_cache", out.past_key_values)  # BLIP: the decoder's own
        nxt = out.logits[:, -1].argmax(-1)
        tokens = [nxt]
        for _ in range(N - 1):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1)
            out = step(nxt[:, None], mask, cache)
            for l in range(len(attention)):
                lam = reference_lambda(windows, l, rows[l], LAM, WINDOW, CLIP)
                layer = cache.layers[getattr(attention[l], "layer_idx", None) or l]  # GPT-Neo: no layer_idx
                for t in (layer.keys, layer.values):
                    for s in range(t.shape[0]):  # every cached head (Falcon's new layout: all copies of a KV head)
                        t[s, :, -1] = (1 - lam[s]) * t[s, :, -1] + lam[s] * t[s, :, -2]
            nxt = out.logits[:, -1].argmax(-1)
            tokens.append(nxt)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(tokens, 1), cache


def _smoothed(kind, model):
    inp = _inputs(kind, model)
    with smooth(model, KVSmoothConfig(layers="all", lambda_ref=LAM, window=WINDOW, clip=CLIP)) as s:
        out = model.generate(**inp, max_new_tokens=N, min_new_tokens=N, do_sample=False, return_dict_in_generate=True)
    cache = out.past_key_values
    return out.sequences[:, -N:], getattr(cache, "self_attention_cache", cache), s


@pytest.mark.parametrize("kind", list(MODELS))
def test_cache_site_matches_reference_loop(kind):
    model, attention = _model(kind)  # the model's default attention (sdpa where it has one)
    if uses_attention_interface(attention[0]):
        pytest.skip(f"{kind}: this transformers version runs it through the attention interface (Falcon from 5.25), "
                    "so its rows come from the probe: tests/core/adapters/test_architectures.py covers that path")
    toks, cache, session = _smoothed(kind, model)
    ref_toks, ref_cache = reference(kind, model, attention)
    assert session.probe is None  # rows came from the modules' own softmax / sdpa calls
    assert torch.equal(toks, ref_toks)
    for l, m in enumerate(attention):
        mine, theirs = cache.layers[getattr(m, "layer_idx", None) or l], ref_cache.layers[getattr(m, "layer_idx", None) or l]
        torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-4, rtol=0)
        torch.testing.assert_close(mine.values, theirs.values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["falcon", "falcon_new"])
def test_sdpa_rows_equal_eager_probabilities(kind):
    """Falcon at sdpa (rows recomputed from the sdpa call's query, keys and mask) scores exactly as at eager
    (rows are the module's own softmax): the traced entropies agree within 1e-5."""
    scores = []
    for attn in ("sdpa", "eager"):
        model, _ = _model(kind, attn)
        _, _, s = _smoothed(kind, model)
        scores.append(s.trace.tensor("score"))
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=0)


def _modes() -> int:
    return torch._C._len_torch_function_stack()


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_lambda_zero_is_bit_identical_and_nothing_outlives_the_session(site):
    model, attention = _model("bloom")  # inline on every supported transformers version (Falcon is not from 5.25)
    inp = _inputs("bloom", model)
    kw = dict(max_new_tokens=N, do_sample=False, output_logits=True, return_dict_in_generate=True)
    base = torch.stack(model.generate(**inp, **kw).logits)
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0)):
        zero = torch.stack(model.generate(**inp, **kw).logits)
        assert sum(len(m._forward_pre_hooks) for m in attention) == len(attention)  # one capture per module
    assert torch.equal(zero, base)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    assert _modes() == 0


def test_a_raising_forward_leaves_no_mode_and_no_hook():
    model, attention = _model("bloom")
    inp = _inputs("bloom", model)
    boom = attention[1].dense.register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with smooth(model, KVSmoothConfig(layers="all")):
                model.generate(**inp, max_new_tokens=3, do_sample=False)
    finally:
        boom.remove()
    assert _modes() == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_forward_without_a_matching_softmax_says_so():
    """An inline attention whose softmax normalises something else than the cached positions: a clear error."""
    model, attention = _model("mpt")
    inp = _inputs("mpt", model)
    original = type(attention[0]).forward
    attention[0].forward = lambda *a, **k: (_no_softmax(original, attention[0], *a, **k))
    try:
        with pytest.raises(SessionError, match="neither a softmax over the cached positions"):
            with smooth(model, KVSmoothConfig(layers="all")):
                model.generate(**inp, max_new_tokens=3, do_sample=False)
    finally:
        del attention[0].forward
    assert _modes() == 0


def _no_softmax(original, module, *args, **kwargs):
    """The module's forward with softmax computed as exp / sum (no softmax call the capture can see)."""
    real = torch.nn.functional.softmax

    def manual(x, dim=-1, dtype=None, **_):
        e = (x - x.amax(dim, keepdim=True)).exp()
        return (e / e.sum(dim, keepdim=True)).to(dtype or x.dtype)

    torch.nn.functional.softmax = manual
    try:
        return original(module, *args, **kwargs)
    finally:
        torch.nn.functional.softmax = real
