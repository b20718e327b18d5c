"""Benchmarks the experiment runner can run: one file each, one registry.

``BENCHMARKS`` maps a name to a :class:`~.base.Benchmark` subclass. Add one with ``@register_benchmark`` in
a file of this folder (imported automatically) or in your own module, or from another package through the entry-point group ``kvsmooth_hooks.benchmarks``
(``name = "package.module:Class"``), which :func:`get_benchmark` loads on first use.
"""

from __future__ import annotations

from .base import Benchmark, BenchmarkError, Item
from .registry import BENCHMARKS, ENTRY_POINT_GROUP, get_benchmark, register_benchmark

import importlib  # noqa: E402
import pkgutil  # noqa: E402

for _module in pkgutil.iter_modules(__path__):  # every benchmark file registers itself (one file per benchmark)
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BENCHMARKS", "ENTRY_POINT_GROUP", "Benchmark", "BenchmarkError", "Item", "get_benchmark",
           "register_benchmark"]
