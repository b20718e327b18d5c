"""What the metrics share: F1, ratios, seeded bootstrap intervals and the printed summary.

Every corpus-level hallucination metric in this package is a ratio of two sums
over items (captions, questions): CHAIR_S = Σ hallucinated_flag / Σ 1,
CHAIR_I = Σ hallucinated_mentions / Σ mentions, and so on.  Resampling items
with replacement and recomputing the ratios gives percentile intervals.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

__all__ = ["bootstrap_intervals", "safe_ratio", "f1_score", "format_summary", "intervals_to_json"]


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


def f1_score(precision, recall):
    """Harmonic mean ``2PR / (P + R)``; 0 where ``P + R`` is 0.

    Works on floats and on numpy arrays of per-resample values (shape ``(B,)``; there the 0/0 case stays
    NaN and is dropped by :func:`bootstrap_intervals`).
    """
    if isinstance(precision, np.ndarray) or isinstance(recall, np.ndarray):
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2 * precision * recall / (precision + recall)
    return safe_ratio(2 * precision * recall, precision + recall)


def intervals_to_json(intervals: Mapping[str, tuple[float, float]]) -> dict[str, list[float]]:
    """Intervals as JSON-ready ``{name: [low, high]}``."""
    return {k: list(v) for k, v in intervals.items()}


def format_summary(overall: Mapping[str, float], intervals: Mapping[str, tuple[float, float]],
                   keys: tuple[str, ...], footer: str = "") -> str:
    """The printed summary every metric uses: one ``name: value (95% CI lo-hi)`` line per key, then ``footer``."""
    lines = []
    for k in keys:
        ci = intervals.get(k)
        tail = f"  (95% CI {ci[0]:.1f}-{ci[1]:.1f})" if ci and np.isfinite(ci[0]) else ""
        lines.append(f"{k:<10}: {overall[k]:6.1f}{tail}")
    if footer:
        lines.append(footer)
    return "\n".join(lines)
