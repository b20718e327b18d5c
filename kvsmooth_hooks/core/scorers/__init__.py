"""Sink scorers: one short file each, registered by name.

A scorer turns what the session observed at a layer (the newest attention row, the newest
key) into one score per head. The session reduces head scores to the configured granularity
(mean over heads for ``layer``; mean over the query heads sharing a KV head for ``head``) and
feeds them to the window / rank / coefficient logic in :mod:`kvsmooth_hooks.core.smoothing`.

To add a scorer: write ``scorers/my_scorer.py`` with a :class:`Scorer` subclass decorated by
``@register_scorer("my_scorer")``; nothing else changes (this package imports every module of its folder).
Parameters are a nested ``class Params(ScorerParams)``
with pydantic fields; configs validate them and the JSON Schema lists them.
"""

import importlib
import pkgutil

from .base import SCORERS, Scorer, ScoreInputs, ScorerParams, build_scorer, register_scorer  # noqa: F401

for _module in pkgutil.iter_modules(__path__):  # every scorer file registers itself
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SCORERS", "Scorer", "ScoreInputs", "ScorerParams", "build_scorer", "register_scorer"]
