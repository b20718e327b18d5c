"""The paper's ablations and ambiguous points as config fields (issue 23), each against an explicit reference loop
(tests/paper_reference.py): site attn_out, previous raw / smoothed, head_reduce, rank_divisor; defaults unchanged."""

import pytest
import torch

from helpers import tiny_llama
from paper_reference import reference_decode
from kvsmooth_hooks import KVSmoothConfig, smooth
from kvsmooth_hooks.core.config import ConfigError
from kvsmooth_hooks.core.plan import select_layers
from kvsmooth_hooks.core.sites import SiteError

LAYERS = [1, 2, 3, 4]
# a wide band (λ = the rank itself) and a short window, so the rank rule and the fill phase both matter
BAND = dict(lambda_ref=0.5, clip=0.5, window=4)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()



def run(model, ids, mask, n, **fields):
    with smooth(model, KVSmoothConfig(layers="1:-1", **fields)) as s:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                             return_dict_in_generate=True)
    return out, s.trace.tensor("lambda")  # [S, B, La, H]


def check(out, lam, ref, ids, n):
    tokens, cache, lams = ref
    assert torch.equal(out.sequences[:, ids.shape[1]:], tokens)
    for j, l in enumerate(LAYERS):
        for seq in range(2):
            assert torch.allclose(lam[:, seq, j, 0].double(), torch.tensor(lams[l][seq], dtype=torch.double), atol=1e-5), (l, seq)
    return cache


@pytest.mark.parametrize("site", ["cache", "kv_proj", "attn_out"])
@pytest.mark.parametrize("previous", ["smoothed", "raw"])
def test_sites_and_previous_entry_match_reference(model, batch, site, previous):
    ids, mask = batch
    out, lam = run(model, ids, mask, 16, site=site, previous=previous, **BAND)
    ref = reference_decode(model, ids, mask, 16, LAYERS, site=site, previous=previous, **BAND)
    cache = check(out, lam, ref, ids, 16)
    valid = torch.cat([mask, torch.ones(2, 15, dtype=mask.dtype)], 1).bool()
    for l in range(6):
        for name in ("keys", "values"):
            diff = (getattr(out.past_key_values.layers[l], name) - getattr(cache.layers[l], name)).abs().amax(dim=(1, 3))
            assert diff[valid].max() < 1e-4, (site, l, name)


def test_raw_and_smoothed_previous_differ(model, batch):
    ids, mask = batch
    a, _ = run(model, ids, mask, 12, previous="smoothed", **BAND)
    b, _ = run(model, ids, mask, 12, previous="raw", **BAND)
    ka, kb = a.past_key_values.layers[2].keys, b.past_key_values.layers[2].keys
    assert not torch.allclose(ka[:, :, -3:], kb[:, :, -3:])  # the two readings are distinguishable


@pytest.mark.parametrize("how", ["max", "min", "median"])
def test_head_reduce_matches_reference(model, batch, how):
    ids, mask = batch
    out, lam = run(model, ids, mask, 12, head_reduce=how, **BAND)
    check(out, lam, reference_decode(model, ids, mask, 12, LAYERS, head_reduce=how, **BAND), ids, 12)


def test_head_reduce_at_head_granularity_reduces_query_heads_per_kv_head(model, batch):
    ids, mask = batch
    with smooth(model, KVSmoothConfig(layers="1:-1", granularity="head", head_reduce="max", **BAND)) as s:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    score = s.trace.tensor("score")  # [S, B, La, Hkv]; with max, each KV head's score is its query heads' max
    with smooth(model, KVSmoothConfig(layers="1:-1", granularity="head", **BAND)) as s2:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert (score >= s2.trace.tensor("score") - 1e-6).all() and not torch.allclose(score, s2.trace.tensor("score"))


def test_rank_divisor_filled_matches_reference(model, batch):
    ids, mask = batch
    out, lam = run(model, ids, mask, 12, rank_divisor="filled", **BAND)
    check(out, lam, reference_decode(model, ids, mask, 12, LAYERS, rank_divisor="filled", **BAND), ids, 12)
    _, default = run(model, ids, mask, 12, **BAND)
    assert not torch.equal(lam[:3], default[:3])  # differs while the window fills (steps 0..M-2)


def test_defaults_are_the_paper_reading():
    cfg = KVSmoothConfig()
    assert (cfg.previous, cfg.head_reduce, cfg.rank_divisor, cfg.site) == ("smoothed", "mean", "window", "cache")


def test_attn_out_lambda_zero_is_identity(model, batch):
    ids, mask = batch
    base = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                          output_logits=True, return_dict_in_generate=True)
    with smooth(model, KVSmoothConfig(site="attn_out", policy="fixed", lambda_ref=0.0, clip=0.0)):
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    assert all(torch.equal(a, b) for a, b in zip(base.logits, out.logits))


def test_attn_out_refuses_what_it_cannot_mean(model):
    for fields, word in ((dict(granularity="head"), "granularity"), (dict(targets=["key"]), "targets"),
                         (dict(smooth_prefill=True), "smooth_prefill"), (dict(scorer="key_similarity"), "key")):
        with pytest.raises(SiteError, match=word):
            with smooth(model, KVSmoothConfig(site="attn_out", **fields)):
                pass
    with pytest.raises(SiteError, match="per-head override"):
        with smooth(model, KVSmoothConfig(site="attn_out", overrides=[{"layers": [3], "heads": [0], "lambda_ref": 0.1}])):
            pass


def test_bad_values_name_the_field():
    for field in ("previous", "head_reduce", "rank_divisor"):
        with pytest.raises(ConfigError, match=field):
            KVSmoothConfig.from_dict({field: "nonsense"})


def test_layer_ranges_of_the_paper_are_expressible():
    """"layers 3-31" of a 32-layer model (the final layer included) vs the default 3..L-2 (the final layer excluded)."""
    assert select_layers(KVSmoothConfig(layers="3:").layers, 32) == list(range(3, 32))
    assert select_layers(KVSmoothConfig().layers, 32) == list(range(3, 31))
    assert select_layers(KVSmoothConfig(layers=list(range(3, 32))).layers, 32) == list(range(3, 32))
