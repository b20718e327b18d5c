"""Grounded-text CHAIR proxy: baseline vs smoothed on SmolLM2 (or any local causal LM).

    python experiments/grounded_chair.py --n 100 --seed 0 --preset llava-1.5 --out results/grounded

Same as `kvsmooth eval grounded ...`; see docs/evaluation.md for what the proxy measures and what it does not.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not an installed one

from kvsmooth_hooks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", "grounded", *sys.argv[1:]]))
