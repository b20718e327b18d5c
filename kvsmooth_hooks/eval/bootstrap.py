"""Seeded percentile bootstrap for metrics that are ratios of per-item sums.

Every corpus-level hallucination metric in this package is a ratio of two sums
over items (captions, questions): CHAIR_S = Σ hallucinated_flag / Σ 1,
CHAIR_I = Σ hallucinated_mentions / Σ mentions, and so on.  Resampling items
with replacement and recomputing the ratios gives percentile intervals.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

__all__ = ["bootstrap_intervals"]


def bootstrap_intervals(
    columns: Mapping[str, np.ndarray],
    statistics: Mapping[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for statistics of column sums.

    Args:
        columns: name → per-item values (all the same length ``n``).
        statistics: name → function of a mapping ``column name → sums`` (each an
            array of shape ``(n_resamples,)``) returning the statistic per resample.
        n_resamples: number of bootstrap resamples.
        seed: seed of the numpy random generator (results are reproducible).
        confidence: two-sided coverage of the interval.

    Returns:
        statistic name → ``(low, high)``; ``(nan, nan)`` when there are no items.
    """
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"bootstrap columns differ in length: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    if n == 0 or n_resamples <= 0:
        return {name: (float("nan"), float("nan")) for name in statistics}
    rng = np.random.default_rng(seed)
    # Counts of how often each item is drawn in each resample: (B, n).
    counts = np.zeros((n_resamples, n), dtype=np.float64)
    for b in range(n_resamples):
        counts[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    sums = {k: counts @ v for k, v in arrays.items()}
    lo_q = (1.0 - confidence) / 2.0
    out: dict[str, tuple[float, float]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        for name, fn in statistics.items():
            values = np.asarray(fn(sums), dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size == 0:
                out[name] = (float("nan"), float("nan"))
            else:
                out[name] = (float(np.quantile(values, lo_q)), float(np.quantile(values, 1.0 - lo_q)))
    return out


def safe_ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0."""
    return float(num) / float(den) if den else 0.0
