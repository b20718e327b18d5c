"""The benchmark registry: ``BENCHMARKS``, :func:`register_benchmark`, :func:`get_benchmark` (+ entry points)."""

from __future__ import annotations

from .base import Benchmark, BenchmarkError

BENCHMARKS: dict[str, type[Benchmark]] = {}
ENTRY_POINT_GROUP = "kvsmooth_hooks.benchmarks"
_entry_points_loaded = False


def register_benchmark(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make ``cls`` available as ``--benchmark cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in BENCHMARKS and BENCHMARKS[cls.name] is not cls:
        raise ValueError(f"benchmark {cls.name!r} is already registered by {BENCHMARKS[cls.name].__module__}")
    BENCHMARKS[cls.name] = cls
    return cls


#: entry-point name -> one line saying why it could not be loaded
BROKEN: dict[str, str] = {}


def _load_entry_points() -> None:
    """Load the group's plugins once; one that fails to import is remembered in :data:`BROKEN` (by name, with the
    reason) and hides no other."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from ..core.registry import entry_point_classes

    good, broken = entry_point_classes(ENTRY_POINT_GROUP, Benchmark)
    for name, cls in good.items():
        BENCHMARKS.setdefault(name, cls)
    BROKEN.update(broken)


def get_benchmark(name: str) -> type[Benchmark]:
    """The benchmark class registered as ``name``; the error lists the known ones and names broken plugins."""
    if name not in BENCHMARKS:
        _load_entry_points()
    if name in BROKEN:
        raise BenchmarkError(f"--benchmark {name!r}: the plugin of entry-point group {ENTRY_POINT_GROUP!r} "
                             f"{BROKEN[name]}; fix or uninstall the package that provides it")
    if name not in BENCHMARKS:
        broken = f" (broken plugins: {', '.join(sorted(BROKEN))})" if BROKEN else ""
        raise BenchmarkError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}{broken}")
    return BENCHMARKS[name]

__all__ = ["BENCHMARKS", "BROKEN", "ENTRY_POINT_GROUP", "get_benchmark", "register_benchmark"]
