"""What the metrics share: F1, ratios, seeded bootstrap intervals and the printed summary.

Every corpus-level hallucination metric in this package is a ratio of two sums
over items (captions, questions): CHAIR_S = Σ hallucinated_flag / Σ 1,
CHAIR_I = Σ hallucinated_mentions / Σ mentions, and so on.  Resampling items
with replacement and recomputing the ratios gives percentile intervals.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["bootstrap_intervals", "resample_intervals", "safe_ratio", "f1_score", "format_summary", "intervals_to_json"]


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
    with np.errstate(divide="ignore", invalid="ignore"):
        values = {name: np.asarray(fn(sums), dtype=np.float64) for name, fn in statistics.items()}
    return _percentiles(values, confidence)


def _percentiles(values: Mapping[str, np.ndarray], confidence: float) -> dict[str, tuple[float, float]]:
    """name → per-resample values ``(B,)`` to name → two-sided percentile interval; non-finite values dropped."""
    lo_q = (1.0 - confidence) / 2.0
    out: dict[str, tuple[float, float]] = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = ((float("nan"), float("nan")) if v.size == 0
                     else (float(np.quantile(v, lo_q)), float(np.quantile(v, 1.0 - lo_q))))
    return out


def resample_intervals(
    items: Sequence[Any],
    statistic: Callable[[list[Any]], Mapping[str, Any]],
    names: Sequence[str],
    n_resamples: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for statistics that are not ratios of column sums (e.g. AMBER's score).

    Draws items with replacement (the same seeded numpy generator and percentile rule as
    :func:`bootstrap_intervals`) and recomputes ``statistic(resample)`` each time; costly, so the caller chooses
    a small ``n_resamples``.

    Args:
        items: the ``n`` per-item records.
        statistic: resampled list of ``n`` items → mapping name → value; non-numeric values are ignored.
        names: which of the returned names get intervals.

    Returns:
        name → ``(low, high)`` for each of ``names`` the statistic returned as a number; ``{}`` without items.
    """
    n = len(items)
    if n == 0 or n_resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        sample = [items[i] for i in rng.integers(0, n, size=n)]
        for k, v in statistic(sample).items():
            if k in names and isinstance(v, (int, float)) and not isinstance(v, bool):
                draws.setdefault(k, []).append(float(v))
    return _percentiles({k: np.asarray(v) for k, v in draws.items()}, confidence)


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
