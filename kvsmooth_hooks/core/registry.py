"""Name -> class registries (scorers, sites): one decorator factory for all of them."""

from __future__ import annotations

from typing import Callable


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
