"""Sink scorers: one short file each, registered by name.

A scorer turns what the session observed at a layer (the newest attention row, the newest
key) into one score per head. The session reduces head scores to the configured granularity
(mean over heads for ``layer``; mean over the query heads sharing a KV head for ``head``) and
feeds them to the window / rank / coefficient logic in :mod:`kvsmooth_hooks.core.smoothing`.

To add a scorer: write ``scorers/my_scorer.py`` with a :class:`Scorer` subclass decorated by
``@register_scorer("my_scorer")`` and import it below. Parameters are a nested ``class Params(ScorerParams)``
with pydantic fields; configs validate them and the JSON Schema lists them.
"""

from .base import SCORERS, Scorer, ScoreInputs, ScorerParams, build_scorer, register_scorer  # noqa: F401
from . import row_entropy, column_mass, first_token_mass, key_similarity, constant, random  # noqa: F401,E402

__all__ = ["SCORERS", "Scorer", "ScoreInputs", "ScorerParams", "build_scorer", "register_scorer"]
