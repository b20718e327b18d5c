"""Every scorer at both sites: runs, traces, wires only what it needs."""

import pytest
import torch

from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig, smooth
from kvsmooth_hooks.cli import main as cli
from kvsmooth_hooks.plots import clip_bound_shares


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def run(model, cfg, n=10, **kw):
    torch.manual_seed(2)
    ids = torch.randint(3, 128, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with smooth(model, cfg, **kw) as s:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False)
    return s, out


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("scorer", ["row_entropy", "column_mass", "first_token_mass", "key_similarity", "constant", "random"])
def test_scorer_at_site(model, site, scorer):
    cfg = KVSmoothConfig(site=site, scorer=scorer, layers="1:-1", granularity="head")
    s, out = run(model, cfg)
    assert out.shape == (2, 17)
    lam = s.trace.tensor("lambda")
    assert lam.shape == (9, 2, 4, 2)
    assert (lam >= 0.7 - 1e-6).all() and (lam <= 1.0 + 1e-6).all()
    if scorer == "constant":
        assert torch.allclose(lam, torch.full_like(lam, 0.9))
    needs_row = scorer in ("row_entropy", "column_mass", "first_token_mass")
    assert (s.probe is not None) == needs_row or s.probe is None  # removed on exit
    timing = s.trace.notes["score_timing"]["1"]
    expected = {"row_entropy": {"cache": "exact", "kv_proj": "lagged"}, "column_mass": {"cache": "lagged", "kv_proj": "lagged"},
                "first_token_mass": {"cache": "exact", "kv_proj": "lagged"}}.get(scorer, {"cache": "exact", "kv_proj": "exact"})
    assert timing == expected[site]


@pytest.mark.parametrize("scorer", ["key_similarity", "constant", "random"])
def test_scorers_without_rows_add_no_attention_work(model, scorer):
    seen = []
    with smooth(model, KVSmoothConfig(scorer=scorer, layers="1:-1")) as s:
        seen.append(model.config._attn_implementation)
        assert s.probe is None
    assert seen == ["sdpa"]
    with smooth(model, KVSmoothConfig(scorer="row_entropy", layers="1:-1")) as s:
        assert "kvsmooth" in model.config._attn_implementation
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_smooth_prefill(model, site):
    base = run(model, KVSmoothConfig(site=site, scorer="key_similarity", layers="1:-1"))[1]
    s, out = run(model, KVSmoothConfig(site=site, scorer="key_similarity", layers="1:-1", smooth_prefill=True))
    assert out.shape == base.shape and not torch.equal(out, base)
    if site == "cache":
        run(model, KVSmoothConfig(layers="1:-1", smooth_prefill=True))  # row scorer at the cache site
    else:
        with pytest.raises(Exception, match="smooth_prefill with site 'kv_proj' needs a scorer"):
            run(model, KVSmoothConfig(site=site, layers="1:-1", smooth_prefill=True))


def test_policies(model):
    fixed, _ = run(model, KVSmoothConfig(policy="fixed", lambda_ref=0.4, layers="1:-1"))
    assert torch.allclose(fixed.trace.tensor("lambda"), torch.tensor(0.4))
    lin, _ = run(model, KVSmoothConfig(policy="linear", layers="1:-1"))
    lam = lin.trace.tensor("lambda")
    assert lam.min() >= 0.7 - 1e-6 and lam.max() <= 1.0 + 1e-6


def test_trace_plot_cli(model, tmp_path):
    s, _ = run(model, KVSmoothConfig(layers="1:-1", granularity="head"), n=12)
    path = s.trace.save(tmp_path / "t.safetensors")
    shares = clip_bound_shares(s.trace)
    assert torch.allclose(shares["lower"] + shares["inside"] + shares["upper"], torch.ones(4))
    assert cli(["trace", "plot", str(path), "-o", str(tmp_path / "plots")]) == 0
    for name in ("lambda_heatmap.png", "score_distributions.png", "clip_bounds.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert cli(["trace", "plot", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path)]) == 2
