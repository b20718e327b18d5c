"""Which sink signal matters? A thin entry point over the experiment runner's scorer grid.

    python experiments/scorer_ablation.py --n 30 --out results/scorer_ablation

Same as ``python -m kvsmooth_hooks.run --grid scorers`` with this script's defaults (grounded proxy on SmolLM2,
30 scenes): every registered scorer (``--scorers`` to choose) at each site (``--sites cache,kv_proj``), against
the baseline and the lambda = 0 ``off`` control; ``scorers.png`` shows each with its 95% interval.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvsmooth_hooks.runner.cli import main, with_defaults  # noqa: E402

DEFAULTS = ["--model", "smollm2", "--benchmark", "grounded", "--n", "30", "--batch-size", "10", "--grid", "scorers",
            "--sites", "cache,kv_proj", "--out", "results/scorer_ablation"]  # the K/V sites (attn_out is another ablation)


def run(argv=None) -> int:
    return main(with_defaults(DEFAULTS, list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(run())
