"""The paper's figures as functions (PNG files; matplotlib with the Agg backend).

* :func:`frontier`: hallucination vs coverage (``CHAIR_S`` or ``CHAIR_I`` against ``F1`` or ``Recall``), one point
  per arm with its 95% bootstrap interval on both axes, the unhooked baseline marked, the better corner shaded by
  the baseline's lines: the paper's claim is that KVSmooth moves *down and up* from the baseline (less
  hallucination and more recall) where other methods trade one for the other.
* :func:`trace_heatmaps`: λ and the sink score (row entropy) per layer x decode step from a :class:`Trace`.
* :func:`chair_vs_length`: CHAIR_S per caption-length bin, one line per arm (longer captions hallucinate more).

Inputs are plain data: ``rows`` as the runner writes them (``results.json`` ``arms``: dicts with the metric values
and ``ci95``), a :class:`~kvsmooth_hooks.core.trace.Trace` (or a saved ``.safetensors``), per-item dicts.

The helpers every plotting module of the package uses (:mod:`kvsmooth_hooks.plots`,
:mod:`kvsmooth_hooks.runner.report`) live here too: :func:`pyplot`, :func:`save_figure` and :func:`error_bar`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

__all__ = ["frontier", "trace_heatmaps", "chair_vs_length", "length_bins", "FRONTIER_AXES", "pyplot", "save_figure",
           "error_bar"]

#: the axes frontier() accepts: x is a hallucination rate (lower is better), y a coverage rate (higher is better)
FRONTIER_AXES = {"x": ("CHAIR_S", "CHAIR_I", "CHAIR", "Hal"), "y": ("F1", "Recall", "Cover", "Precision")}
REFERENCE_ARMS = ("baseline", "off")


def pyplot():
    """``matplotlib.pyplot`` with the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, plt, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (its folder created when missing) after ``tight_layout``, close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def error_bar(row: dict, metric: str) -> tuple[float, float]:
    """``(below, above)`` error-bar lengths of ``row[metric]`` from the row's ``ci95: {metric: [lo, hi]}`` (0 when
    absent or not finite)."""
    v, ci = row[metric], (row.get("ci95") or {}).get(metric)
    if ci and all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        return max(0.0, v - ci[0]), max(0.0, ci[1] - v)
    return 0.0, 0.0


def frontier(rows: list[dict], path: str | Path, x: str = "CHAIR_S", y: str = "F1", title: str | None = None,
             baseline: str = "baseline", label_key: str = "arm") -> Path:
    """Write the frontier plot of ``rows`` (one point per arm) to ``path``; returns it.

    Each row needs ``x`` and ``y`` (percent) and may carry ``ci95: {metric: [lo, hi]}``; the row whose ``arm`` is
    ``baseline`` is drawn as a black star with dashed lines through it (no baseline row: no lines). Arms are
    labelled with ``row[label_key]``. Raises ``ValueError`` naming the metric when no row has both axes.
    """
    if x not in FRONTIER_AXES["x"] or y not in FRONTIER_AXES["y"]:
        raise ValueError(f"frontier axes: x must be one of {FRONTIER_AXES['x']} (hallucination), y one of "
                         f"{FRONTIER_AXES['y']} (coverage); got x={x!r}, y={y!r}")
    pts = [r for r in rows if isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float))]
    if not pts:
        have = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
        raise ValueError(f"frontier: no arm has both {x!r} and {y!r}; numeric fields present: {have}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    base = next((r for r in pts if r.get("arm") == baseline), None)
    if base is not None:
        ax.axvline(base[x], color="k", linestyle="--", linewidth=0.8)
        ax.axhline(base[y], color="k", linestyle="--", linewidth=0.8)
    others = [r for r in pts if r is not base]
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(others):
        xe, ye = error_bar(r, x), error_bar(r, y)
        ref = r.get("arm") in REFERENCE_ARMS
        color = "#dd8452" if ref else cmap(i / max(1, len(others) - 1) * 0.85)
        ax.errorbar(r[x], r[y], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]], fmt="s" if ref else "o", color=color,
                    capsize=2, markersize=6, elinewidth=0.8, label=str(r.get(label_key, "?")))
    if base is not None:
        xe, ye = error_bar(base, x), error_bar(base, y)
        ax.errorbar(base[x], base[y], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]], fmt="*", color="k",
                    markersize=14, capsize=2, elinewidth=0.8, label=f"{base.get(label_key)} (unhooked)", zorder=5)
        lo_x, hi_y = ax.get_xlim()[0], ax.get_ylim()[1]
        ax.fill_between([lo_x, base[x]], base[y], hi_y, color="#55a868", alpha=0.08, zorder=0)
        ax.text(lo_x, hi_y, " better on both", va="top", ha="left", fontsize=7, color="#2d6a3e")
    ax.set_xlabel(f"{x} (%)  \u2190 less hallucination")
    ax.set_ylabel(f"{y} (%)  \u2191 better coverage")
    ax.legend(fontsize=6, loc="lower left", ncol=2 if len(pts) > 8 else 1)
    ax.set_title(title or f"{x} vs {y}, one point per arm (bars: 95% bootstrap)", fontsize=9)
    return save_figure(fig, Path(path), plt)


def trace_heatmaps(trace, out_dir: str | Path, run: int = -1, sequence: int | None = 0, prefix: str = "trace",
                   title: str | None = None) -> list[Path]:
    """``<prefix>_lambda.png`` and ``<prefix>_score.png``: layer (rows) x decode step (columns), mean over KV heads,
    of one sequence (``sequence``) or the mean over the batch (``sequence=None``). ``trace``: a Trace or a path to a
    saved one. Returns the paths."""
    from .core.trace import Trace

    if not isinstance(trace, Trace):
        trace = Trace.load(trace)
    if not trace.runs or trace.runs[run].n_steps == 0:
        raise ValueError("trace_heatmaps: the trace holds no decode step in that run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    made = []
    cfg = trace.config
    head = title or (f"{trace.identity.get('class', '?')} · site={trace.notes.get('site')}"
                     + (f" · λ_ref={cfg.lambda_ref} M={cfg.window} clip={cfg.clip}" if cfg is not None else ""))
    scorer = cfg.scorer.name if cfg is not None else "?"
    score_label = "sink score (row entropy, nats)" if scorer == "row_entropy" else f"sink score ({scorer})"
    for name, label, cmap in (("lambda", "λ", "magma"), ("score", score_label, "viridis")):
        t = trace.tensor(name, run)  # [S, B, La, H]
        m = (t.mean(1) if sequence is None else t[:, sequence]).mean(-1).T  # [La, S]
        fig, ax = plt.subplots(figsize=(min(14, 4 + 0.08 * m.shape[1]), max(2.8, 1.2 + 0.22 * m.shape[0])))
        im = ax.imshow(m.numpy(), aspect="auto", interpolation="nearest", cmap=cmap, origin="lower")
        ax.set_yticks(range(len(trace.layers)), [str(l) for l in trace.layers], fontsize=6)
        ax.set_xlabel("decode step")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, label=label)
        who = "mean over sequences" if sequence is None else f"sequence {sequence}"
        ax.set_title(f"{head}\n{name} per layer and decode step, mean over KV heads ({who})", fontsize=8)
        made.append(save_figure(fig, out / f"{prefix}_{name}.png", plt))
    return made


def length_bins(lengths: list[int], n_bins: int = 4) -> list[tuple[int, int]]:
    """Up to ``n_bins`` inclusive ``(lo, hi)`` word-count bins holding about equal numbers of captions."""
    s = sorted(lengths)
    if not s:
        return []
    edges = sorted({s[min(len(s) - 1, round(i * len(s) / n_bins))] for i in range(n_bins)} | {s[-1] + 1})
    return [(a, b - 1) for a, b in zip(edges[:-1], edges[1:])]


def chair_vs_length(items: Iterable[dict], path: str | Path, n_bins: int = 4, title: str | None = None) -> Path:
    """CHAIR_S (share of captions with a hallucinated object, %) per caption-length bin, one line per arm.

    ``items``: dicts with ``arm``, ``length`` (words) and ``hallucinated`` (bool). Bins are shared by all arms
    (quantiles of all lengths); each point is annotated with its caption count."""
    items = list(items)
    if not items:
        raise ValueError("chair_vs_length: no items")
    bins = length_bins([int(i["length"]) for i in items], n_bins)
    arms = list(dict.fromkeys(i["arm"] for i in items))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm in arms:
        xs, ys, ns = [], [], []
        for lo, hi in bins:
            sel = [i for i in items if i["arm"] == arm and lo <= int(i["length"]) <= hi]
            if sel:
                xs.append((lo + hi) / 2)
                ys.append(100.0 * sum(bool(i["hallucinated"]) for i in sel) / len(sel))
                ns.append(len(sel))
        style = dict(color="k", linestyle="--", marker="*") if arm == "baseline" else dict(marker="o")
        ax.plot(xs, ys, label=arm, **style)
        for a, b, n in zip(xs, ys, ns):
            ax.annotate(str(n), (a, b), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_xticks([(lo + hi) / 2 for lo, hi in bins], [f"{lo}-{hi}" for lo, hi in bins], fontsize=7)
    ax.set_xlabel("caption length (words; bins hold about equal numbers of captions)")
    ax.set_ylabel("CHAIR_S (%)")
    ax.legend(fontsize=7)
    ax.set_title(title or "hallucination vs caption length (numbers: captions per point)", fontsize=9)
    return save_figure(fig, Path(path), plt)
