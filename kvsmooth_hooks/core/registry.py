"""Name -> class registries: one decorator factory for all of them, the site registry (the single source of
the site names that configs, the JSON Schema and the command lines offer) and entry-point loading.

Kept free of imports from the rest of the core, so that the config can ask which sites exist without
importing the sites (which import the plan, which imports the config).
"""

from __future__ import annotations

import pkgutil
from pathlib import Path
from typing import Callable

__all__ = ["registrar", "SITES", "site_names", "entry_point_classes", "PluginTable"]

#: site name -> Site class, filled as the site modules are imported (``core/sites/__init__`` imports every one)
SITES: dict[str, type] = {}
_SITES_DIR = Path(__file__).resolve().parent / "sites"


def registrar(table: dict, kind: str) -> Callable[[str], Callable[[type], type]]:
    """A class decorator factory: ``@register("name")`` sets ``cls.name`` and adds ``cls`` to ``table``."""

    def register(name: str):
        def wrap(cls):
            cls.name = name
            table[name] = cls
            return cls

        return wrap

    register.__doc__ = f"Class decorator adding a {kind} class to the registry under ``name``."
    return register


def site_names() -> tuple[str, ...]:
    """Every site, sorted: each file ``core/sites/<name>.py`` is the site ``<name>`` (read from the folder, nothing
    imported; a test checks every file registers the site of its name), plus sites registered from elsewhere."""
    builtin = {m.name for m in pkgutil.iter_modules([str(_SITES_DIR)]) if m.name != "base"}
    return tuple(sorted(builtin | set(SITES)))


def entry_point_classes(group: str, base: type) -> tuple[dict[str, type], dict[str, str]]:
    """``({name: class}, {name: why it is broken})`` of the entry-point ``group``; a plugin that fails to load or
    is not a ``base`` subclass is reported by name and hides no other."""
    from importlib.metadata import entry_points

    good, broken = {}, {}
    for ep in entry_points(group=group):
        try:
            cls = ep.load()
        except Exception as exc:  # a third-party plugin: any failure is its own
            broken[ep.name] = f"{ep.value} failed to load: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            continue
        if not (isinstance(cls, type) and issubclass(cls, base)):
            broken[ep.name] = f"{ep.value} is not a {base.__name__} subclass"
            continue
        good[ep.name] = cls
    return good, broken


class PluginTable(dict):
    """``name -> class`` for classes that carry their own ``name`` (benchmarks, methods): filled by
    :meth:`register` (a class decorator) and, on the first lookup of a name it does not hold, once by the
    entry-point ``group``. Plugins that fail to load are kept in :attr:`broken` (``name -> why``) and hide no other."""

    def __init__(self, kind: str, base: type, group: str):
        super().__init__()
        self.kind, self.base, self.group = kind, base, group
        self.broken: dict[str, str] = {}
        self.loaded = False

    def register(self, cls: type) -> type:
        """Class decorator: make ``cls`` available as ``cls.name``; a second class under one name is refused."""
        if not getattr(cls, "name", None):
            raise ValueError(f"{cls.__name__} has no name")
        if cls.name in self and self[cls.name] is not cls:
            raise ValueError(f"{self.kind} {cls.name!r} is already registered by {self[cls.name].__module__}")
        self[cls.name] = cls
        return cls

    def lookup(self, name: str) -> type | None:
        """The class registered as ``name`` (entry points loaded first if it is not held yet), or None."""
        if name not in self and not self.loaded:
            self.loaded = True
            good, broken = entry_point_classes(self.group, self.base)
            for key, cls in good.items():
                self.setdefault(key, cls)
            self.broken.update(broken)
        return self.get(name)

    def fresh_copy(self) -> "PluginTable":
        """The built-in classes alone, entry points not loaded yet (tests of plugin loading start from it)."""
        out = PluginTable(self.kind, self.base, self.group)
        out.update(self)
        return out
