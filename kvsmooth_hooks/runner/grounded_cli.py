"""``kvsmooth eval grounded``: the runner (``kvsmooth run``) with the grounded-text proxy's defaults.

Same options, output layout and records as ``kvsmooth run``; only the defaults differ: ``--model smollm2
--benchmark grounded --n 100 --batch-size 10 --arms baseline,smoothed --out results/grounded``. The recorded
command (``command.txt``, ``reproduce with:``) is the runner's, with these defaults written out.
"""

from __future__ import annotations

import argparse

__all__ = ["add_grounded_parser", "GROUNDED_DEFAULTS", "runner_argv"]

#: the runner's flags with this command's defaults (``--flag value`` pairs)
GROUNDED_DEFAULTS = ["--model", "smollm2", "--benchmark", "grounded", "--n", "100", "--batch-size", "10",
                     "--arms", "baseline,smoothed", "--out", "results/grounded"]


def runner_argv(argv: list[str]) -> list[str]:
    """The runner's command line for ``kvsmooth eval grounded ARGV``."""
    from .cli import with_defaults

    return with_defaults(GROUNDED_DEFAULTS, argv)


def add_grounded_parser(sub) -> None:
    from .cli import add_arguments

    p = sub.add_parser("grounded", help="grounded-text CHAIR proxy on a language model (the runner with defaults)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, defaults=dict(zip(GROUNDED_DEFAULTS[::2], GROUNDED_DEFAULTS[1::2])))
    p.set_defaults(eval_func=_run_grounded)


def _run_grounded(args) -> int:
    """Run ``args`` (parsed once, with this command's defaults); the recorded command is the runner's, with the
    defaults written out (:func:`runner_argv`)."""
    from .cli import argv_after, run

    run(args, runner_argv(argv_after(args.argv, "grounded")))
    return 0
