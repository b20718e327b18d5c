"""Parameter sweeps: a thin entry point over the experiment runner's sweep grid.

    python experiments/sweep.py --grid lambda_ref=0.3,0.5,0.7,0.9 --grid targets=key,value,key+value \\
        --n 30 --out results/sweep

``--grid FIELD=V1,V2,...`` (this script's spelling of the runner's ``--axis``) adds an axis: lambda_ref, window,
clip, targets (``key``, ``value``, ``key+value``), granularity, site, policy, scorer, layers (``;`` between
values, e.g. ``layers=3:-1;15:-1``). Defaults: grounded proxy on SmolLM2, 30 scenes. Writes the table and, for
one numeric axis, ``sweep_<field>.png``; ``frontier.png`` puts every arm on CHAIR_S vs Recall with intervals.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvsmooth_hooks.runner.cli import main, with_defaults  # noqa: E402

DEFAULTS = ["--model", "smollm2", "--benchmark", "grounded", "--n", "30", "--batch-size", "10", "--grid", "sweep",
            "--out", "results/sweep"]


def translate(argv: list[str]) -> list[str]:
    """``--grid FIELD=V1,...`` -> ``--axis FIELD=V1,...`` (``--grid`` without ``=`` is the runner's own)."""
    out, it = [], iter(argv)
    for a in it:
        if a == "--grid":
            nxt = next(it, "")
            out += ["--axis" if "=" in nxt else "--grid", nxt]
        elif a.startswith("--grid=") and "=" in a[len("--grid="):]:
            out.append("--axis=" + a[len("--grid="):])
        else:
            out.append(a)
    return out


def run(argv=None) -> int:
    return main(with_defaults(DEFAULTS, translate(list(sys.argv[1:] if argv is None else argv))))


if __name__ == "__main__":
    sys.exit(run())
