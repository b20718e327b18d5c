"""Scorer base class and registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

SCORERS: dict[str, type["Scorer"]] = {}


def register_scorer(name: str):
    """Class decorator adding a :class:`Scorer` subclass to :data:`SCORERS` under ``name``."""

    def wrap(cls):
        cls.name = name
        SCORERS[name] = cls
        return cls

    return wrap


@dataclass
class ScoreInputs:
    """What a scorer may read at one layer and step.

    row: ``[B, Hq, T]`` float32 attention probabilities of the newest available query over the
        T cached positions (padding has probability 0); None if the scorer needs no row.
    key: ``[B, Hkv, D]`` the newest key (post-RoPE cache entry at the ``cache`` site, the raw
        projection at the ``kv_proj`` site); None if the scorer needs no key.
    first_index: ``[B]`` long, index of each sequence's first real (non-padding) position.
    """

    row: torch.Tensor | None = None
    key: torch.Tensor | None = None
    first_index: torch.Tensor | None = None


class Scorer:
    """Base class. Subclasses set the class attributes and implement :meth:`score`.

    needs_row / needs_key: what the session must capture (nothing else is wired).
    exact_at: sites at which the score describes the token being smoothed; elsewhere it is
        lagged (e.g. attention rows at ``kv_proj`` are the previous token's).
    head_axis: whether :meth:`score` returns one value per query head or per KV head.
    fixed_coefficient: the coefficient is lambda_ref whatever the policy (``constant``).
    stacked_rows: :meth:`score` keeps no state and accepts rows with leading layer dims
        (``[La, B, Hq, T] -> [La, B, Hq]``), so a decode step scores all layers in one call.
    """

    name: ClassVar[str] = "?"
    needs_row: ClassVar[bool] = False
    needs_key: ClassVar[bool] = False
    exact_at: ClassVar[frozenset[str]] = frozenset({"cache", "kv_proj"})
    head_axis: ClassVar[Literal["query", "kv"]] = "query"
    fixed_coefficient: ClassVar[bool] = False
    stacked_rows: ClassVar[bool] = False
    params_allowed: ClassVar[dict[str, type]] = {}

    def __init__(self, **params: Any):
        for key, value in params.items():
            if key not in self.params_allowed:
                allowed = sorted(self.params_allowed) or "none"
                raise ValueError(f"scorer '{self.name}' has no parameter '{key}' (parameters: {allowed})")
            if not isinstance(value, self.params_allowed[key]) or isinstance(value, bool):
                raise ValueError(
                    f"scorer '{self.name}' parameter '{key}' must be {self.params_allowed[key].__name__}, got {value!r}"
                )
        self.params = params

    def init_state(self, batch: int, n_heads: int, n_kv_heads: int, device, layer: int = 0) -> dict[str, torch.Tensor]:
        """Per-sequence state for one layer; every tensor has the batch as dim 0."""
        return {}

    def observe_prompt(self, state: dict, keys: torch.Tensor, valid: torch.Tensor) -> None:
        """Called once per sequence batch with the prompt's keys ``[B, Hkv, T, D]`` and ``valid [B, T]``
        (only if :attr:`needs_key`)."""

    def score(self, state: dict, inputs: ScoreInputs) -> torch.Tensor:
        """One score per head: ``[B, Hq]`` (head_axis 'query') or ``[B, Hkv]`` ('kv')."""
        raise NotImplementedError

    def describe(self, site: str) -> str:
        return "exact" if site in self.exact_at else "lagged"


def build_scorer(name: str, params: dict | None = None, **kwargs: Any) -> Scorer:
    """Instantiate a registered scorer, with a clear error for unknown names/parameters."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer '{name}'; registered scorers: {sorted(SCORERS)}")
    return SCORERS[name](**{**(params or {}), **kwargs})
