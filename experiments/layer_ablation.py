"""Which layers matter? A thin entry point over the experiment runner's layer grid.

    python experiments/layer_ablation.py --n 30 --window-size 4 --out results/layer_ablation

Same as ``python -m kvsmooth_hooks.run --grid layers`` with this script's defaults: the grounded-text proxy
on SmolLM2 (CPU), 30 scenes, batches of 10; every runner option works (``--model``, ``--benchmark pope
--data ...``, ``--preset``/``--config`` for the base config, ``--window-size``, ``--parts`` ...). Arms: the
unhooked baseline, the lambda = 0 ``off`` control, the base config (``paper``), one layer at a time, sliding
windows, prefixes and suffixes; the plot ``layers.png`` draws each with its 95% bootstrap interval.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

from kvsmooth_hooks.runner.cli import main, with_defaults  # noqa: E402

DEFAULTS = ["--model", "smollm2", "--benchmark", "grounded", "--n", "30", "--batch-size", "10", "--grid", "layers",
            "--out", "results/layer_ablation"]


def run(argv=None) -> int:
    return main(with_defaults(DEFAULTS, list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(run())
