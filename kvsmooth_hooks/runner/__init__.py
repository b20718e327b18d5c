"""The experiment runner: benchmarks x models x arms / grids, resumable, data parallel, with reports.

Evaluation-side: it uses the core (``smooth``, ``KVSmoothConfig``), ``kvsmooth_hooks.benchmarks`` and
``kvsmooth_hooks.eval``; nothing in the core imports it. Entry points: ``kvsmooth run`` and
``python -m kvsmooth_hooks.run`` (``torchrun`` / ``accelerate launch`` for several processes).
"""

from .arms import GRIDS, Arm, off_arm, parse_arms, register_grid
from .models import ModelBundle, load_bundle

__all__ = ["Arm", "GRIDS", "ModelBundle", "load_bundle", "off_arm", "parse_arms", "register_grid", "main"]


def main(argv=None) -> int:
    from .cli import main as _main

    return _main(argv)
