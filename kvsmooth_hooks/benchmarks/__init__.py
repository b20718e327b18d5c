"""Benchmarks the experiment runner can run: one file each, one registry.

``BENCHMARKS`` maps a name to a :class:`~.base.Benchmark` subclass. Add one with ``@register_benchmark`` in
your own module, or from another package through the entry-point group ``kvsmooth_hooks.benchmarks``
(``name = "package.module:Class"``), which :func:`get_benchmark` loads on first use.
"""

from __future__ import annotations

from .base import Benchmark, BenchmarkError, Item
from .registry import BENCHMARKS, ENTRY_POINT_GROUP, get_benchmark, register_benchmark

from . import amber, chair, grounded, objhal, opope, pope  # noqa: E402,F401,I001  (registration)

__all__ = ["BENCHMARKS", "ENTRY_POINT_GROUP", "Benchmark", "BenchmarkError", "Item", "get_benchmark",
           "register_benchmark"]
