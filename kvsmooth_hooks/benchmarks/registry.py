"""The benchmark registry: ``BENCHMARKS``, :func:`register_benchmark`, :func:`get_benchmark` (+ entry points)."""

from __future__ import annotations

from ..core.registry import PluginTable
from .base import Benchmark, BenchmarkError

ENTRY_POINT_GROUP = "kvsmooth_hooks.benchmarks"
#: name -> Benchmark class; ``BENCHMARKS.broken``: entry-point plugins that could not be loaded, with the reason
BENCHMARKS = PluginTable("benchmark", Benchmark, ENTRY_POINT_GROUP)


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make ``cls`` available as ``--benchmark cls.name``."""
    return BENCHMARKS.register(cls)


def get_benchmark(name: str) -> type[Benchmark]:
    """The benchmark class registered as ``name``; the error lists the known ones and names broken plugins."""
    cls, broken = BENCHMARKS.lookup(name), BENCHMARKS.broken
    if name in broken:
        raise BenchmarkError(f"--benchmark {name!r}: the plugin of entry-point group {ENTRY_POINT_GROUP!r} "
                             f"{broken[name]}; fix or uninstall the package that provides it")
    if cls is None:
        listed = f" (broken plugins: {', '.join(sorted(broken))})" if broken else ""
        raise BenchmarkError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}{listed}")
    return cls


__all__ = ["BENCHMARKS", "ENTRY_POINT_GROUP", "get_benchmark", "register_benchmark"]
