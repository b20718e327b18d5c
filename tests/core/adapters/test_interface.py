"""The adapter instance interface the session and the sites use (issue 10): forward classification inputs,
cache access at given positions, reorder watching, padding masks from every form decoders receive."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from helpers import tiny_llama
from kvsmooth_hooks import get_adapter
from kvsmooth_hooks.core.adapters.runtime import mask_2d


def _cache(model, ids):
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True)
    return cache


def test_forward_info_and_cache_access_at_positions():
    model = tiny_llama(layers=2)
    ad = get_adapter(model)
    ids = torch.randint(3, 128, (2, 5))
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    cache = _cache(model, ids)
    info = ad.forward_info((), {"input_ids": ids[:, :1], "cache": cache,
                                "attention_mask": torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)})
    assert (info.batch, info.q_len, info.past, info.cache) == (2, 1, 5, cache)
    assert info.mask.tolist() == [[False, True, True, True, True, True], [True] * 6]
    assert ad.forward_info((), {"input_ids": ids}) is None  # no cache: nothing to smooth
    assert ad.find_cache((), {"past_key_values": cache}) is cache

    keys, values = ad.layer_kv(cache, 1)
    assert keys.shape == (2, 2, 5, 16) and keys.data_ptr() == cache.layers[1].keys.data_ptr()
    pos = torch.tensor([3, 0])
    k, v = ad.read_kv(cache, 1, pos)
    assert torch.equal(k[0], keys[0, :, 3]) and torch.equal(v[1], values[1, :, 0])
    ad.write_kv(cache, 1, pos, torch.zeros_like(k), torch.ones_like(v))
    assert cache.layers[1].keys[0, :, 3].abs().sum() == 0 and bool((cache.layers[1].values[1, :, 0] == 1).all())
    assert cache.layers[1].keys[0, :, 2].abs().sum() > 0  # other positions untouched


def test_watch_reorder_calls_back_and_undoes():
    model = tiny_llama(layers=2)
    ad = get_adapter(model)
    cache = _cache(model, torch.randint(3, 128, (3, 4)))
    seen = []
    undo = ad.watch_reorder(cache, seen.append)
    cache.reorder_cache(torch.tensor([2, 2, 0]))
    assert [t.tolist() for t in seen] == [[2, 2, 0]]
    assert ad.watch_reorder(cache, seen.append) is None  # already watched: one wrapper per cache
    undo()
    cache.reorder_cache(torch.tensor([0, 1, 2]))
    assert len(seen) == 1 and "reorder_cache" not in vars(cache)


def test_padding_masks_from_every_form():
    two_d = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    expect = two_d.bool()
    assert torch.equal(mask_2d(two_d, 2, 4), expect)
    causal = torch.ones(4, 4).tril().bool()
    four_d = (causal[None, None] & expect[:, None, None, :])  # [B, 1, Q, T] bool
    assert torch.equal(mask_2d(four_d, 2, 4), expect)
    additive = torch.zeros(2, 1, 4, 4).masked_fill(~four_d, float("-inf"))
    assert torch.equal(mask_2d(additive, 2, 4), expect)
    assert torch.equal(mask_2d({"sliding_attention": four_d, "full_attention": additive}, 2, 4), expect)
    assert mask_2d(None, 2, 4) is None
