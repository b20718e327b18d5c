"""Which sink signal matters? Every registered scorer at both sites, against the unhooked baseline and
the ``off`` control arm (same layers, lambda = 0).

    python experiments/scorer_ablation.py --n 30 --out results/scorer_ablation

Writes results.{jsonl,md,csv} and scorer_ablation.png (CHAIR_S and Recall per scorer and site).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablation_common import add_common_args, base_config, footer, off_arm, plt, run_cells, write_tables

from kvsmooth_hooks.scorers import SCORERS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "results/scorer_ablation")
    ap.add_argument("--scorers", default=",".join(sorted(SCORERS)))
    ap.add_argument("--sites", default="cache,kv_proj")
    args = ap.parse_args(argv)
    base = base_config(args)
    cells = [("baseline", None, {"scorer": "-", "site": "-"}),
             ("off", off_arm(base), {"scorer": "off (λ=0)", "site": base.site})]
    for site in args.sites.split(","):
        for scorer in args.scorers.split(","):
            cells.append((f"{scorer}-{site}", base.updated(scorer=scorer, site=site), {"scorer": scorer, "site": site}))
    records = run_cells(args, cells, "scorer_ablation")
    out = Path(args.out)
    write_tables(records, out, ["cell", "scorer", "site"])
    plot(records, out / "scorer_ablation.png")
    footer(out)
    return 0


def plot(records, path: Path) -> None:
    pyplot = plt()
    rows = [r for r in records if r["site"] != "-" and not r["scorer"].startswith("off")]
    scorers = sorted({r["scorer"] for r in rows})
    sites = sorted({r["site"] for r in rows})
    base = next((r for r in records if r["cell"] == "baseline"), None)
    fig, axes = pyplot.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / max(1, len(sites))
    for ax, metric in zip(axes, ("CHAIR_S", "Recall")):
        for k, site in enumerate(sites):
            vals = [next((r[metric] for r in rows if r["scorer"] == s and r["site"] == site), None) or 0 for s in scorers]
            ax.bar([i + k * width for i in range(len(scorers))], vals, width, label=f"site {site}")
        if base is not None:
            ax.axhline(base[metric], color="k", label="baseline")
        ax.set_xticks([i + width * (len(sites) - 1) / 2 for i in range(len(scorers))], scorers, rotation=30, fontsize=8)
        ax.set_ylabel(f"{metric} (%)")
        ax.legend(fontsize=7)
    fig.suptitle("Scorer ablation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


if __name__ == "__main__":
    sys.exit(main())
