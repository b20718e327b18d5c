"""Name -> class registries: one decorator factory for all of them, the site registry (the single source of
the site names that configs, the JSON Schema and the command lines offer) and entry-point loading.

Kept free of imports from the rest of the core, so that the config can ask which sites exist without
importing the sites (which import the plan, which imports the config).
"""

from __future__ import annotations

import pkgutil
from pathlib import Path
from typing import Callable

__all__ = ["registrar", "SITES", "site_names", "entry_point_classes"]

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
