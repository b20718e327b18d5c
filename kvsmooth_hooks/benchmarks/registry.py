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
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BENCHMARKS:
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a third-party plugin: any failure is its own
            BROKEN[ep.name] = f"{ep.value} failed to load: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, Benchmark)):
            BROKEN[ep.name] = f"{ep.value} is not a Benchmark subclass"
            continue
        BENCHMARKS.setdefault(ep.name, cls)


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
