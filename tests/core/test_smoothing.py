import math

import torch

from kvsmooth_hooks.core.smoothing import (
    attention_entropy,
    coefficient,
    coefficient_bounds,
    ema_update,
    fifo_rank,
    linear_position,
    new_window,
    push_window,
)


def test_window_is_fifo_and_rank_divides_by_window_length():
    w = new_window(1, 1, 4)
    for s in [1.0, 2.0, 3.0]:
        w = push_window(w, torch.tensor([[s]]))
    assert torch.isnan(w[0, 0, 0])
    assert w[0, 0, 1:].tolist() == [1.0, 2.0, 3.0]
    # 2 of the 3 stored scores are below 3.0; divided by M=4, not by the 3 stored
    assert fifo_rank(w, torch.tensor([[3.0]])).item() == 0.5
    w = push_window(w, torch.tensor([[0.5]]))
    w = push_window(w, torch.tensor([[10.0]]))  # 1.0 leaves the window
    assert w[0, 0].tolist() == [2.0, 3.0, 0.5, 10.0]
    assert fifo_rank(w, torch.tensor([[10.0]])).item() == 0.75


def test_rank_with_per_unit_window_lengths():
    w = push_window(push_window(push_window(new_window(1, 2, 3), torch.tensor([[1.0, 1.0]])),
                                torch.tensor([[2.0, 2.0]])), torch.tensor([[3.0, 3.0]]))
    r = fifo_rank(w, torch.tensor([[3.0, 3.0]]), torch.tensor([3, 2]))
    assert torch.allclose(r, torch.tensor([[2 / 3, 1 / 2]]))


def test_coefficient_clips_to_band_and_unit_interval():
    lo, hi = coefficient_bounds(torch.tensor([0.9, 0.1, 0.5]), torch.tensor([0.2, 0.2, 0.0]))
    assert torch.allclose(lo, torch.tensor([0.7, 0.0, 0.5]))
    assert torch.allclose(hi, torch.tensor([1.0, 0.3, 0.5]))
    lam = coefficient(torch.tensor([[0.0, 0.95, 0.2]]), lo, hi)
    assert torch.allclose(lam, torch.tensor([[0.7, 0.3, 0.5]]))


def test_ema_matches_formula_and_zero_is_identity():
    cur, prev = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    lam = torch.tensor([0.25, 0.5])[:, None, None]
    assert torch.allclose(ema_update(cur, prev, lam), (1 - lam) * cur + lam * prev)
    assert torch.equal(ema_update(cur, prev, torch.zeros(2, 1, 1)), cur)


def test_entropy_of_uniform_and_one_hot_rows():
    p = torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]])
    h = attention_entropy(p)
    assert math.isclose(h[0].item(), math.log(4), rel_tol=1e-6)
    assert h[1].item() == 0.0


def test_linear_position():
    w = push_window(push_window(new_window(1, 1, 3), torch.tensor([[1.0]])), torch.tensor([[3.0]]))
    assert linear_position(w, torch.tensor([[2.0]])).item() == 0.5
    assert linear_position(new_window(1, 1, 3), torch.tensor([[2.0]])).item() == 0.5
