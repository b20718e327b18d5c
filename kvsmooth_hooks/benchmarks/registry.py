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


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in BENCHMARKS:
            cls = ep.load()
            BENCHMARKS.setdefault(ep.name, cls)


def get_benchmark(name: str) -> type[Benchmark]:
    """The benchmark class registered as ``name``; the error lists the known ones."""
    if name not in BENCHMARKS:
        _load_entry_points()
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]

__all__ = ["BENCHMARKS", "ENTRY_POINT_GROUP", "get_benchmark", "register_benchmark"]
