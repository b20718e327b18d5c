"""Grid over config fields, with the ``off`` preset as control arm, and the precision/recall frontier.

    python experiments/sweep.py --grid lambda_ref=0.3,0.5,0.7,0.9 --grid targets=key,value,key+value \
        --n 30 --out results/sweep

Each ``--grid FIELD=V1,V2,...`` adds an axis (fields of the config schema: lambda_ref, window, clip,
targets (``key``, ``value``, ``key+value``), granularity, site, policy, scorer, layers (use ``;`` to
separate slice values, e.g. ``layers=3:-1;15:-1``)). The plot puts every cell on CHAIR_S vs Recall: the
paper's question is whether a setting lowers hallucination (left) without losing recall (up).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from ablation_common import add_common_args, base_config, footer, off_arm, plt, run_cells, write_tables

NUMERIC = {"lambda_ref": float, "clip": float, "window": int}


def parse_axis(spec: str) -> tuple[str, list]:
    if "=" not in spec:
        raise SystemExit(f"error: --grid '{spec}': use FIELD=V1,V2,...")
    field, values = spec.split("=", 1)
    sep = ";" if field == "layers" else ","
    vals = [v.strip() for v in values.split(sep) if v.strip()]
    if field == "targets":
        return field, [v.split("+") for v in vals]
    if field in NUMERIC:
        return field, [NUMERIC[field](v) for v in vals]
    return field, vals


def label(v) -> str:
    return "+".join(v) if isinstance(v, list) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "results/sweep")
    ap.add_argument("--grid", action="append", default=[], help="FIELD=V1,V2,... (repeatable)")
    args = ap.parse_args(argv)
    if not args.grid:
        args.grid = ["lambda_ref=0.3,0.5,0.7,0.9"]
    base = base_config(args)
    axes = [parse_axis(g) for g in args.grid]
    fields = [f for f, _ in axes]
    cells = [("baseline", None, {f: "-" for f in fields} | {"arm": "baseline"}),
             ("off", off_arm(base), {f: "-" for f in fields} | {"arm": "off"})]
    for combo in itertools.product(*[vals for _, vals in axes]):
        changes = dict(zip(fields, combo))
        name = "-".join(f"{f}={label(v)}" for f, v in changes.items()).replace("/", "_")
        cells.append((name, base.updated(**changes), {f: label(v) for f, v in changes.items()} | {"arm": "smoothed"}))
    records = run_cells(args, cells, "sweep")
    out = Path(args.out)
    write_tables(records, out, ["arm"] + fields)
    plot(records, out / "sweep_frontier.png", fields)
    footer(out)
    return 0


def plot(records, path: Path, fields) -> None:
    pyplot = plt()
    fig, ax = pyplot.subplots(figsize=(6.5, 5))
    for r in records:
        if r["CHAIR_S"] is None:
            continue
        if r["arm"] == "smoothed":
            ax.scatter(r["CHAIR_S"], r["Recall"], color="#4c72b0")
            ax.annotate(", ".join(str(r[f]) for f in fields), (r["CHAIR_S"], r["Recall"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        else:
            base = r["arm"] == "baseline"  # drawn larger: the off arm sits on the same point when it is exact
            ax.scatter(r["CHAIR_S"], r["Recall"], color="k" if base else "#dd8452", marker="*", s=260 if base else 90,
                       label=r["arm"], zorder=2 if base else 3)
    ax.set_xlabel("CHAIR_S (%)  ← less hallucination")
    ax.set_ylabel("Recall (%)  ↑ more objects covered")
    ax.set_title(f"Sweep over {', '.join(fields)}: hallucination vs recall", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


if __name__ == "__main__":
    sys.exit(main())
