"""The helpers every metric shares (kvsmooth_hooks/eval/bootstrap.py)."""

import numpy as np
import pytest

from kvsmooth_hooks.eval.bootstrap import bootstrap_intervals, f1_score, format_summary


def test_f1_score_scalars_and_arrays():
    assert f1_score(0.5, 1.0) == pytest.approx(2 / 3)
    assert f1_score(0.0, 0.0) == 0.0
    out = f1_score(np.array([0.5, 0.0]), np.array([1.0, 0.0]))
    assert out[0] == pytest.approx(2 / 3) and np.isnan(out[1])  # 0/0 resamples are dropped by the bootstrap


def test_format_summary_lines():
    text = format_summary({"A": 12.345, "B": 50.0}, {"A": (10.0, 14.0), "B": (float("nan"), float("nan"))},
                          ("A", "B"), "items     :      3")
    assert text.splitlines() == ["A         :   12.3  (95% CI 10.0-14.0)", "B         :   50.0", "items     :      3"]


def test_bootstrap_reproducible_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    hits = (rng.random(200) < 0.3).astype(float)
    stats = {"rate": lambda s: 100.0 * s["hit"] / s["one"]}
    a = bootstrap_intervals({"hit": hits, "one": np.ones(200)}, stats, n_resamples=300, seed=1)
    b = bootstrap_intervals({"hit": hits, "one": np.ones(200)}, stats, n_resamples=300, seed=1)
    assert a == b
    assert a["rate"][0] < 100 * hits.mean() < a["rate"][1]
