"""Which layers matter? Smoothing on one layer at a time, on sliding windows of k layers, and on
prefix / suffix ranges, against the unhooked baseline and the ``off`` control arm.

    python experiments/layer_ablation.py --n 30 --window-size 4 --out results/layer_ablation

Default metric: grounded-text CHAIR on SmolLM2-135M (see docs/evaluation.md). Resumable: rerunning
skips finished cells. Writes results.{jsonl,md,csv} and layer_ablation.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablation_common import add_common_args, base_config, footer, off_arm, plt, run_cells, write_tables


def n_layers_of(args) -> int:
    if args.layers_total:
        return args.layers_total
    if args.model == "smollm2":
        return 30
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(args.model).num_hidden_layers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "results/layer_ablation")
    ap.add_argument("--window-size", type=int, default=4, help="k for sliding windows of k layers")
    ap.add_argument("--stride", type=int, default=None, help="sliding-window stride (default k/2)")
    ap.add_argument("--single-step", type=int, default=1, help="every n-th layer for the single-layer sweep")
    ap.add_argument("--range-step", type=int, default=5, help="boundary step for prefix/suffix ranges")
    ap.add_argument("--parts", default="single,window,prefix,suffix")
    ap.add_argument("--layers-total", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    base = base_config(args)
    L = n_layers_of(args)
    parts = set(args.parts.split(","))
    cells = [("baseline", None, {"kind": "baseline", "layers": "-"}),
             ("off", off_arm(base), {"kind": "off", "layers": "paper (λ=0)"}),
             ("paper", base, {"kind": "paper", "layers": str(base.layers)})]
    if "single" in parts:
        cells += [(f"single-{i}", base.updated(layers=[i]), {"kind": "single", "layers": str(i)})
                  for i in range(0, L, args.single_step)]
    if "window" in parts:
        k, stride = args.window_size, args.stride or max(1, args.window_size // 2)
        cells += [(f"window-{i}-{i + k}", base.updated(layers=f"{i}:{i + k}"), {"kind": "window", "layers": f"{i}..{i + k - 1}"})
                  for i in range(0, L - k + 1, stride)]
    if "prefix" in parts:
        cells += [(f"prefix-{j}", base.updated(layers=f"0:{j}"), {"kind": "prefix", "layers": f"0..{j - 1}"})
                  for j in range(args.range_step, L + 1, args.range_step)]
    if "suffix" in parts:
        cells += [(f"suffix-{j}", base.updated(layers=f"{j}:"), {"kind": "suffix", "layers": f"{j}..{L - 1}"})
                  for j in range(0, L, args.range_step)]
    records = run_cells(args, cells, "layer_ablation")
    out = Path(args.out)
    write_tables(records, out, ["cell", "kind", "layers"])
    plot(records, out / "layer_ablation.png", L)
    footer(out)
    return 0


def plot(records, path: Path, n_layers: int) -> None:
    pyplot = plt()
    ref = {r["kind"]: r for r in records if r["kind"] in ("baseline", "off", "paper")}
    fig, axes = pyplot.subplots(1, 2, figsize=(12, 4))
    for ax, metric in zip(axes, ("CHAIR_S", "Recall")):
        single = [r for r in records if r["kind"] == "single"]
        if single:
            ax.plot([int(r["layers"]) for r in single], [r[metric] for r in single], "o-", label="single layer")
        window = [r for r in records if r["kind"] == "window"]
        if window:
            centers = [sum(map(int, r["layers"].split(".."))) / 2 for r in window]
            ax.plot(centers, [r[metric] for r in window], "s--", label="window (center)")
        for kind, style in (("baseline", "k-"), ("paper", "r:")):
            if kind in ref and ref[kind][metric] is not None:
                ax.axhline(ref[kind][metric], color=style[0], linestyle=style[1:], label=kind)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_xlim(-0.5, n_layers - 0.5)
        ax.legend(fontsize=7)
    fig.suptitle("Layer ablation: smoothing on one layer / a window of layers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot.close(fig)


if __name__ == "__main__":
    sys.exit(main())
