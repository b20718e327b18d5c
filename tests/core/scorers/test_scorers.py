"""Each sink scorer on hand-computed inputs."""

import math

import pytest
import torch

from kvsmooth_hooks.core.scorers import SCORERS, ScoreInputs, build_scorer


def test_registry_lists_every_scorer_with_its_needs():
    assert set(SCORERS) == {"row_entropy", "column_mass", "first_token_mass", "key_similarity", "constant", "random"}
    needs = {n: (c.needs_row, c.needs_key) for n, c in SCORERS.items()}
    assert needs["row_entropy"] == (True, False) and needs["key_similarity"] == (False, True)
    assert needs["constant"] == (False, False) and needs["random"] == (False, False)
    assert build_scorer("row_entropy").describe("cache") == "exact"
    assert build_scorer("row_entropy").describe("kv_proj") == "lagged"
    assert build_scorer("key_similarity").describe("kv_proj") == "exact"
    assert build_scorer("column_mass").describe("cache") == "lagged"


def test_row_entropy():
    row = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])  # [B=1, Hq=2, T=3]
    out = build_scorer("row_entropy").score({}, ScoreInputs(row=row))
    assert torch.allclose(out, torch.tensor([[math.log(2), 0.0]]))


def test_first_token_mass_uses_first_real_position():
    row = torch.tensor([[[0.0, 0.7, 0.3]], [[0.6, 0.1, 0.3]]])  # seq 0 is left padded by one
    out = build_scorer("first_token_mass").score({}, ScoreInputs(row=row, first_index=torch.tensor([1, 0])))
    assert torch.allclose(out, torch.tensor([[0.7], [0.6]]))


def test_column_mass_accumulates_and_is_lagged():
    sc = build_scorer("column_mass")
    st = sc.init_state(1, 1, 1, "cpu")
    # query at position 2 attends [0.5, 0.5, 0]: position 1 (lag 1 = t-1) received 0.5 from one query
    s1 = sc.score(st, ScoreInputs(row=torch.tensor([[[0.5, 0.5, 0.0]]])))
    assert s1.item() == pytest.approx(0.5)
    # query at position 3 attends [0.2, 0.2, 0.6, 0]: position 2 received 0.6 from one later query
    s2 = sc.score(st, ScoreInputs(row=torch.tensor([[[0.2, 0.2, 0.6, 0.0]]])))
    assert s2.item() == pytest.approx(0.6)
    assert st["mass"][0, 0, :3].tolist() == pytest.approx([0.7, 0.7, 0.6])
    assert st["count"][0, :3].tolist() == [2, 2, 1]
    lag2 = build_scorer("column_mass", lag=2)
    st2 = lag2.init_state(1, 1, 1, "cpu")
    lag2.score(st2, ScoreInputs(row=torch.tensor([[[0.5, 0.5, 0.0]]])))
    # position 1 received 0.5 and 0.2 from two later queries: mean 0.35
    assert lag2.score(st2, ScoreInputs(row=torch.tensor([[[0.2, 0.2, 0.6, 0.0]]]))).item() == pytest.approx(0.35)
    with pytest.raises(ValueError, match="parameter 'lag': Input should be greater than or equal to 1"):
        build_scorer("column_mass", lag=0)


def test_key_similarity_against_running_mean():
    sc = build_scorer("key_similarity")
    st = sc.init_state(1, 1, 1, "cpu")
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # [B, Hkv, T=2, D]
    sc.observe_prompt(st, keys, torch.tensor([[True, True]]))
    out = sc.score(st, ScoreInputs(key=torch.tensor([[[1.0, 1.0]]])))  # mean is (0.5, 0.5): cosine 1
    assert out.item() == pytest.approx(1.0)
    out = sc.score(st, ScoreInputs(key=torch.tensor([[[-1.0, 0.0]]])))  # mean now (2/3, 2/3)
    assert out.item() == pytest.approx(-1 / math.sqrt(2))
    st2 = sc.init_state(1, 1, 1, "cpu")
    sc.observe_prompt(st2, keys, torch.tensor([[False, True]]))  # padding excluded from the mean
    assert sc.score(st2, ScoreInputs(key=torch.tensor([[[0.0, 3.0]]]))).item() == pytest.approx(1.0)


def test_constant_and_random():
    c = build_scorer("constant")
    assert c.fixed_coefficient
    assert torch.equal(c.score(c.init_state(2, 4, 2, "cpu"), ScoreInputs()), torch.zeros(2, 2))
    r = build_scorer("random", seed=7)
    a = r.score(r.init_state(2, 4, 2, "cpu", layer=3), ScoreInputs())
    b = r.score(r.init_state(2, 4, 2, "cpu", layer=3), ScoreInputs())
    d = r.score(r.init_state(2, 4, 2, "cpu", layer=4), ScoreInputs())
    assert torch.equal(a, b) and not torch.equal(a, d)
    assert ((a >= 0) & (a < 1)).all()
    with pytest.raises(ValueError, match="parameter 'seed': Input should be a valid integer"):
        build_scorer("random", seed="x")
