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


def test_resample_intervals_equal_the_column_bootstrap_on_a_ratio():
    # one bootstrap path: resampling items and recomputing a statistic draws the same items (same seeded
    # generator) and takes the same percentiles as the column-sum bootstrap, so a ratio gets the same interval
    from kvsmooth_hooks.eval.bootstrap import resample_intervals

    rng = np.random.default_rng(3)
    items = [{"hit": float(h)} for h in (rng.random(50) < 0.4)]
    cols = {"hit": np.array([x["hit"] for x in items]), "one": np.ones(50)}
    expected = bootstrap_intervals(cols, {"rate": lambda s: 100.0 * s["hit"] / s["one"]}, n_resamples=120, seed=7)

    def stat(sample):
        return {"rate": 100.0 * sum(x["hit"] for x in sample) / len(sample), "note": "text", "other": 1.0}

    got = resample_intervals(items, stat, ["rate", "note"], n_resamples=120, seed=7)
    assert set(got) == {"rate"}  # names outside the list and non-numbers get no interval
    assert got["rate"] == pytest.approx(expected["rate"])
    assert resample_intervals([], stat, ["rate"]) == {}
