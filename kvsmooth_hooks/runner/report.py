"""Outputs of a run: results.json, Markdown/CSV tables with 95% bootstrap intervals, plots with error bars,
the command, the machine and the package versions."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shlex
from pathlib import Path

from ..eval.bootstrap import resample_intervals

__all__ = ["summarize_arm", "write_tables", "write_plots", "machine_info", "command_line", "write_json"]


def summarize_arm(bench, arm, records: list[dict], n_bootstrap: int, seed: int) -> dict:
    """The arm's row: metrics, ``ci95``, seconds per item, item count, the arm's fields and config."""
    from ..methods.arms import method_settings

    scores = bench.score(records, n_bootstrap=n_bootstrap, seed=seed)
    ci = dict(scores.get("ci95") or {})
    if n_bootstrap and any(m in scores and m not in ci for m in bench.metrics):
        extra = resample_intervals(records, lambda sample: bench.score(sample, n_bootstrap=0, seed=seed),
                                   bench.metrics, n_resamples=min(n_bootstrap, 200), seed=seed)
        ci.update({m: list(v) for m, v in extra.items() if m not in ci})
    scores["ci95"] = ci
    secs = [r["seconds"] for r in records]
    return {"arm": arm.name, **arm.fields, "fields": list(arm.fields), **scores,
            "seconds_per_item": sum(secs) / len(secs) if secs else 0.0,
            "new_tokens_per_item": sum(r["new_tokens"] for r in records) / max(1, len(records)),
            "config": arm.config.to_dict() if arm.config is not None else None,
            "method_settings": method_settings(getattr(arm, "method", None))}


def _cell(row: dict, metric: str) -> str:
    v = row.get(metric)
    if v is None:
        return ""
    ci = (row.get("ci95") or {}).get(metric)
    if ci and all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        return f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"
    return f"{v:.1f}"


def _field_columns(rows) -> list[str]:
    """The arms' descriptive fields (kind, layers, scorer, site, sweep axes), in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r.get("fields", ())))


def write_tables(rows: list[dict], metrics, out: Path) -> str:
    """``results.md`` (values with [95% interval]) and ``results.csv`` (value, low, high columns)."""
    metrics = [m for m in metrics if any(m in r for r in rows)]
    fields = [c for c in _field_columns(rows) if c not in metrics]
    head = ["arm"] + fields + metrics + ["s/item", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (1 + len(fields)) + "---:|" * (len(metrics) + 2)]
    for r in rows:
        vals = [r["arm"]] + [str(r.get(f, "")) for f in fields] + [_cell(r, m) for m in metrics] + \
               [f"{r['seconds_per_item']:.3f}", str(r.get("n", ""))]
        lines.append("| " + " | ".join(vals) + " |")
    md = "\n".join(lines) + "\n\nValues in percent (Len in tokens); [low, high]: 95% bootstrap interval over items.\n"
    (out / "results.md").write_text(md, encoding="utf-8")
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["arm"] + fields + [x for m in metrics for x in (m, f"{m}_lo", f"{m}_hi")] + ["seconds_per_item", "n"])
        for r in rows:
            ci = r.get("ci95") or {}
            w.writerow([r["arm"]] + [r.get(f, "") for f in fields] +
                       [x for m in metrics for x in (r.get(m, ""), *(ci.get(m) or ["", ""]))] +
                       [r["seconds_per_item"], r.get("n", "")])
    return md


def _err(rows, metric) -> list[list[float]]:
    """``[below, above]``: the error-bar lengths of ``metric`` of each row (:func:`kvsmooth_hooks.figures.error_bar`),
    as ``errorbar(yerr=...)`` takes them."""
    from ..figures import error_bar

    bars = [error_bar(r, metric) for r in rows]
    return [[b[0] for b in bars], [b[1] for b in bars]]


def _reference_lines(ax, rows, metric):
    for name, color in (("baseline", "k"), ("off", "#dd8452"), ("paper", "r")):
        r = next((x for x in rows if x["arm"] == name and metric in x), None)
        if r is not None:
            ax.axhline(r[metric], color=color, linestyle="-" if name == "baseline" else ":", label=name)
            ci = (r.get("ci95") or {}).get(metric)
            if ci and all(math.isfinite(c) for c in ci):
                ax.axhspan(ci[0], ci[1], color=color, alpha=0.08)


def write_plots(rows: list[dict], bench, out: Path, n_layers: int | None = None) -> list[Path]:
    """Plots for grids, every point with its 95% interval as an error bar: metric vs layer (layer grid),
    metric vs value (one numeric sweep axis), scorer bars, and the CHAIR frontiers (:func:`write_frontiers`)."""
    from ..figures import pyplot, save_figure

    plt = pyplot()
    made = []
    head = [m for m in (bench.plot_metrics or bench.metrics[:2]) if any(m in r for r in rows)]
    kinds = {r.get("kind") for r in rows}
    if "single" in kinds or "window" in kinds:
        fig, axes = plt.subplots(1, len(head), figsize=(6 * len(head), 4), squeeze=False)
        for ax, m in zip(axes[0], head):
            single = [r for r in rows if r.get("kind") == "single"]
            if single:
                ax.errorbar([int(r["layers"]) for r in single], [r[m] for r in single], yerr=_err(single, m),
                            fmt="o-", capsize=3, label="single layer")
            window = [r for r in rows if r.get("kind") == "window"]
            if window:
                x = [sum(map(int, r["layers"].split(".."))) / 2 for r in window]
                ax.errorbar(x, [r[m] for r in window], yerr=_err(window, m), fmt="s--", capsize=3, label="window (center)")
            _reference_lines(ax, rows, m)
            ax.set_xlabel("layer")
            ax.set_ylabel(f"{m} (%)")
            if n_layers:
                ax.set_xlim(-0.5, n_layers - 0.5)
            ax.legend(fontsize=7)
        fig.suptitle(f"{bench.name}: smoothing one layer / a window of layers (error bars: 95% bootstrap)")
        made.append(save_figure(fig, out / "layers.png", plt))
    sweep = [r for r in rows if r.get("kind") == "sweep"]
    axes_fields = [k for k in _field_columns(sweep) if k != "kind"]
    if sweep and len(axes_fields) == 1 and _numeric([r[axes_fields[0]] for r in sweep]):
        f = axes_fields[0]
        fig, axes = plt.subplots(1, len(head), figsize=(6 * len(head), 4), squeeze=False)
        for ax, m in zip(axes[0], head):
            ax.errorbar([float(r[f]) for r in sweep], [r[m] for r in sweep], yerr=_err(sweep, m), fmt="o-", capsize=3)
            _reference_lines(ax, rows, m)
            ax.set_xlabel(f)
            ax.set_ylabel(f"{m} (%)")
            ax.legend(fontsize=7)
        fig.suptitle(f"{bench.name}: sweep over {f} (error bars: 95% bootstrap)")
        made.append(save_figure(fig, out / f"sweep_{f}.png", plt))
    scorer = [r for r in rows if r.get("kind") == "scorer"]
    if scorer:
        fig, axes = plt.subplots(1, len(head), figsize=(6 * len(head), 4), squeeze=False)
        for ax, m in zip(axes[0], head):
            ax.bar(range(len(scorer)), [r[m] for r in scorer], yerr=_err(scorer, m), capsize=3)
            ax.set_xticks(range(len(scorer)), [r["arm"] for r in scorer], rotation=30, fontsize=7)
            _reference_lines(ax, rows, m)
            ax.set_ylabel(f"{m} (%)")
            ax.legend(fontsize=7)
        fig.suptitle(f"{bench.name}: scorers x sites (error bars: 95% bootstrap)")
        made.append(save_figure(fig, out / "scorers.png", plt))
    made += write_frontiers(rows, bench, out)
    return made


#: frontier axes per benchmark metric set: (hallucination, coverage, file)
FRONTIERS = (("CHAIR_S", "F1", "frontier.png"), ("CHAIR_S", "Recall", "frontier_recall.png"),
             ("CHAIR", "Cover", "frontier.png"))


def write_frontiers(rows: list[dict], bench, out: Path) -> list[Path]:
    """``frontier.png`` (CHAIR_S vs F1; AMBER: CHAIR vs Cover) and ``frontier_recall.png`` (CHAIR_S vs Recall) for any
    run whose benchmark has those metrics: one point per arm with its 95% intervals, the baseline marked
    (:func:`kvsmooth_hooks.figures.frontier`)."""
    from ..figures import frontier

    made, written = [], set()
    for x, y, name in FRONTIERS:
        if name in written or not all(m in bench.metrics for m in (x, y)):
            continue
        if any(isinstance(r.get(x), (int, float)) and isinstance(r.get(y), (int, float)) for r in rows):
            made.append(frontier(rows, out / name, x=x, y=y, title=f"{bench.name}: {x} vs {y}, one point per arm "
                                 "(bars: 95% bootstrap)"))
            written.add(name)
    return made


def _numeric(vals) -> bool:
    try:
        [float(v) for v in vals]
        return True
    except (TypeError, ValueError):
        return False


def machine_info(world_size: int = 1) -> dict:
    import socket

    import torch
    import transformers

    from .. import __version__

    info = {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "transformers": transformers.__version__, "kvsmooth_hooks": __version__, "world_size": world_size,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def command_line(argv, world_size: int = 1) -> str:
    """The command that reproduces the run (with the launcher when it ran on several processes)."""
    import os

    launcher = "python -m kvsmooth_hooks.run"
    if world_size > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        nodes = f" --nnodes {world_size // per_node}" if per_node != world_size else ""
        launcher = f"torchrun{nodes} --nproc-per-node {per_node} -m kvsmooth_hooks.run"
    return launcher + " " + " ".join(shlex.quote(a) for a in argv)


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")

