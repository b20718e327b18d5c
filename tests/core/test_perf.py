"""Decode-step cost (issue 12): batched rows, static caches, torch.compile (the kernel-op budget, measured with
experiments/count_kernels.py, is experiments/tests/test_count_kernels.py)."""

import pytest
import torch

from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig, SessionError, smooth


def _batch():
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding: the batched rows must mask it
    return ids, mask


def _run(model, cfg, batched: bool, n=10):
    """Generate; returns tokens, trace and, per decode step, whether every smoothed layer's row was batched."""
    ids, mask = _batch()
    complete = []
    with smooth(model, cfg) as s:
        if not batched:  # the per-layer path: every row goes to its layer's scorer on its own
            s.rows = None
        else:
            score = s.rows.score
            s.rows.score = lambda *a: (complete.append(s.rows.complete()), score(*a))
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out, s.trace, complete


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("granularity", ["layer", "head"])
def test_batched_rows_equal_per_layer_rows(site, granularity):
    model = tiny_llama(layers=6)
    cfg = KVSmoothConfig(site=site, granularity=granularity, layers="1:-1", lambda_ref=0.5, clip=0.5)
    out_b, tr_b, complete = _run(model, cfg, batched=True)
    out_l, tr_l, _ = _run(model, cfg, batched=False)
    assert complete == [True] * 9  # the batched path ran at every decode step, for every smoothed layer
    assert torch.equal(out_b, out_l)
    torch.testing.assert_close(tr_b.tensor("score"), tr_l.tensor("score"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr_b.tensor("lambda"), tr_l.tensor("lambda"))
    assert tr_b.tensor("lambda").abs().sum() > 0


def test_mixed_scorers_batch_only_stacked_row_scorers():
    """Layers whose scorer keeps state (column_mass) stay on the per-layer path next to batched ones."""
    model = tiny_llama(layers=6)
    cfg = KVSmoothConfig(layers="1:-1", overrides=[{"layers": [2, 3], "scorer": "column_mass"}])
    ids, mask = _batch()
    with smooth(model, cfg) as s:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        assert sorted(layer.index for layer in s.rows.layers) == [1, 4]
        assert len(s.rows.groups) == 0  # the one coefficient group mixes batched and per-layer scores
    assert torch.isfinite(s.trace.tensor("score")).all()


def _generate(model, cfg, cache_implementation=None, n=8):
    ids, mask = _batch()
    with smooth(model, cfg) as s:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             cache_implementation=cache_implementation, return_dict_in_generate=True)
    return out, s.trace


@pytest.mark.parametrize(
    "scorer,site,smooth_prefill",
    [("row_entropy", "cache", False), ("row_entropy", "cache", True), ("column_mass", "cache", False),
     ("key_similarity", "cache", True), ("first_token_mass", "kv_proj", False)],
)
def test_static_cache_equals_dynamic_cache(scorer, site, smooth_prefill):
    """A static cache (entries at absolute positions, left padding read from generate's 4-D mask) gives the
    same tokens, lambdas and smoothed cache entries as the dynamic cache."""
    model = tiny_llama(layers=5)
    cfg = KVSmoothConfig(site=site, scorer=scorer, layers="1:-1", lambda_ref=0.5, clip=0.5,
                         smooth_prefill=smooth_prefill)
    dyn, tr_d = _generate(model, cfg)
    sta, tr_s = _generate(model, cfg, "static")
    assert torch.equal(dyn.sequences, sta.sequences)
    torch.testing.assert_close(tr_d.tensor("lambda"), tr_s.tensor("lambda"))
    torch.testing.assert_close(tr_d.tensor("score"), tr_s.tensor("score"), atol=1e-5, rtol=1e-5)
    assert tr_d.tensor("lambda").abs().sum() > 0
    for layer in (1, 2):  # the last token's entry is never written (generate stops first)
        length = dyn.past_key_values.layers[layer].keys.shape[2]
        for name in ("keys", "values"):
            d = getattr(dyn.past_key_values.layers[layer], name)
            s = getattr(sta.past_key_values.layers[layer], name)[:, :, :length]
            torch.testing.assert_close(d, s, atol=1e-5, rtol=1e-4)  # sdpa over 16 vs T keys: rounding


def test_sliding_static_cache_is_refused_at_cache_site():
    from transformers.cache_utils import StaticSlidingWindowLayer

    from kvsmooth_hooks import UnsupportedModelError
    from kvsmooth_hooks.core.adapters.runtime import check_cache_layer

    class Cache:
        layers = [StaticSlidingWindowLayer(max_cache_len=16, sliding_window=8)]

    Cache.layers[0].keys = torch.zeros(1, 1, 8, 4)
    with pytest.raises(UnsupportedModelError, match="StaticSlidingWindowLayer.*cache_implementation='static'"):
        check_cache_layer(Cache(), 0)


def _compiled_equals_eager(backend, n=5):
    model = tiny_llama(layers=3)
    cfg = KVSmoothConfig(layers="1:", lambda_ref=0.5, clip=0.5)
    eager, tr_e = _generate(model, cfg, "static", n=n)
    model.forward = torch.compile(model.forward, backend=backend)
    try:
        compiled, tr_c = _generate(model, cfg, "static", n=n)
    finally:
        del model.forward
        torch._dynamo.reset()
    assert torch.equal(eager.sequences, compiled.sequences)
    torch.testing.assert_close(tr_e.tensor("lambda"), tr_c.tensor("lambda"))
    torch.testing.assert_close(tr_e.tensor("score"), tr_c.tensor("score"))
    assert tr_c.tensor("lambda").abs().sum() > 0 and tr_c.tensor("lambda").shape[0] == n - 1


def test_torch_compile_static_cache_equals_eager():
    """torch.compile (dynamo graph capture; the 'eager' backend skips code generation to keep the test fast)
    on a static cache gives the tokens and lambdas of eager smoothing."""
    _compiled_equals_eager("eager")


@pytest.mark.slow
def test_torch_compile_inductor_static_cache_equals_eager():
    """The same with inductor (generated C++ kernels on the CPU; tens of seconds)."""
    _compiled_equals_eager("inductor")


def test_deferred_key_blend_left_waiting_raises():
    """If a key projection runs again after its layer's value projection (not what the attention's source says),
    its deferred blend would never be applied: the forward raises instead of leaving that key unsmoothed."""
    model = tiny_llama(layers=4)
    attn = model.model.layers[2].self_attn
    original = attn.forward

    def forward(hidden_states, *args, **kwargs):
        out = original(hidden_states, *args, **kwargs)
        attn.k_proj(hidden_states)  # a key projection with no value projection after it
        return out

    attn.forward = forward
    ids = torch.randint(3, 128, (1, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(SessionError, match="key projection ran without its value projection"):
        with smooth(model, KVSmoothConfig(site="kv_proj", layers="all")):
            model.generate(ids, max_new_tokens=4, do_sample=False)
    del attn.forward
    with smooth(model, KVSmoothConfig(site="kv_proj", layers="all")):  # the session left nothing waiting behind
        model.generate(ids, max_new_tokens=4, do_sample=False)


def test_static_cache_length_not_read_at_each_decode_step(monkeypatch):
    """A static cache's length is a device tensor (reading it is a host sync on a GPU): inside generate() the
    session follows it instead of asking the cache at every forward."""
    from transformers import StaticCache

    calls = []
    original = StaticCache.get_seq_length
    monkeypatch.setattr(StaticCache, "get_seq_length", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    model = tiny_llama(layers=4)
    ids, mask = _batch()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False,
              cache_implementation="static")
    model.generate(**kw)
    vanilla, calls[:] = len(calls), []
    with smooth(model, KVSmoothConfig(layers="1:-1")) as s:
        model.generate(**kw)
    assert len(calls) - vanilla <= 1, (vanilla, len(calls))  # the prompt's forward only
    assert s.trace.tensor("lambda").shape[0] == 7 and s.trace.tensor("lambda").abs().sum() > 0
