"""TransformerLens: the same config and ``smooth(model, cfg)`` call on a HookedTransformer converted offline
from a tiny random HF model; tokens and coefficients equal to the HF session where the sites mean the same."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens")

from helpers import tiny_llama  # noqa: E402
from kvsmooth_hooks import KVSmoothConfig, get_adapter, smooth  # noqa: E402
from kvsmooth_hooks.core.lens import LensSession, greedy_generate, hooked_from_hf  # noqa: E402
from tiny_models import build  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
N = 8


@pytest.fixture(scope="module")
def llama_pair():
    hf = tiny_llama(layers=2, initializer_range=0.25)
    return hf, hooked_from_hf(hf)


@pytest.fixture(scope="module")
def gpt2_pair():
    hf = build("gpt2")
    return hf, hooked_from_hf(hf)


def _batch():
    torch.manual_seed(5)
    ids = torch.randint(3, 128, (2, 9))
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0  # left padding
    return ids, mask


def _both(hf, tl, cfg, ids, mask):
    with smooth(hf, cfg) as s_hf:
        a = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
    with smooth(tl, cfg) as s_tl:
        assert isinstance(s_tl, LensSession)
        b = greedy_generate(tl, ids, N, attention_mask=mask)
    return a, b, s_hf.trace.tensor("lambda"), s_tl.trace.tensor("lambda")


def test_conversion_is_exact(llama_pair, gpt2_pair):
    ids, _ = _batch()
    for hf, tl in (llama_pair, gpt2_pair):
        with torch.no_grad():
            torch.testing.assert_close(tl(ids[:1]), hf(ids[:1]).logits, atol=1e-4, rtol=1e-4)


def test_adapter_and_hooks(llama_pair):
    _, tl = llama_pair
    ad = get_adapter(tl)
    assert (ad.name, ad.n_layers, ad.n_heads, ad.n_kv_heads, ad.head_dim) == ("transformer_lens", 2, 4, 2, 16)
    for site, per_layer in (("kv_proj", 2), ("cache", 1)):
        with smooth(tl, KVSmoothConfig(layers="all", site=site)) as s:
            # block 0's pre-hook (prefill/decode), the last block's post-hook, per layer: hook_k + hook_v
            # (kv_proj) or the attention module (cache, which finds its cache entry in its own arguments),
            # and hook_pattern for rows
            assert len(s.handles) == 1 + 1 + 2 * (per_layer + 1)
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in tl.modules())


def test_kv_proj_site_same_tokens_as_hf_llama(llama_pair):
    """Both smooth the pre-RoPE projections: same tokens and coefficients, left padding included."""
    hf, tl = llama_pair
    ids, mask = _batch()
    cfg = KVSmoothConfig(layers="all", site="kv_proj")
    a, b, lam_hf, lam_tl = _both(hf, tl, cfg, ids, mask)
    plain = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
    assert not torch.equal(a, plain)  # smoothing did something
    assert torch.equal(a, b)
    torch.testing.assert_close(lam_tl, lam_hf, atol=1e-5, rtol=0)


@pytest.mark.parametrize("smooth_prefill", [False, True])
def test_cache_site_same_as_hf_without_rotary(gpt2_pair, smooth_prefill):
    """smooth_prefill with a row scorer included: prompt rows come from hook_pattern (refused before issue 10)."""
    hf, tl = gpt2_pair
    ids, mask = _batch()
    cfg = KVSmoothConfig(layers="all", smooth_prefill=smooth_prefill)
    a, b, lam_hf, lam_tl = _both(hf, tl, cfg, ids, mask)
    plain = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
    assert not torch.equal(a, plain)
    assert torch.equal(a, b)
    torch.testing.assert_close(lam_tl, lam_hf, atol=1e-5, rtol=0)


def test_generate_and_lambda_zero(llama_pair):
    """HookedTransformer.generate (which bypasses the model's own module hooks) is smoothed too; lambda 0 = identity."""
    _, tl = llama_pair
    ids, _ = _batch()
    ids = ids[:1]
    plain = tl.generate(ids, max_new_tokens=N, do_sample=False, stop_at_eos=False, verbose=False)
    for site in ("cache", "kv_proj"):
        with smooth(tl, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0)):
            same = tl.generate(ids, max_new_tokens=N, do_sample=False, stop_at_eos=False, verbose=False)
        assert torch.equal(same, plain)
        with smooth(tl, KVSmoothConfig(layers="all", site=site)) as s:
            out = tl.generate(ids, max_new_tokens=N, do_sample=False, stop_at_eos=False, verbose=False)
            loop = greedy_generate(tl, ids, N)
        assert torch.equal(out, loop)
        assert s.trace.tensor("lambda", run=0).shape[0] == N - 1
