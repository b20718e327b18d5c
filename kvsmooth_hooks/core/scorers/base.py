"""Scorer base class and registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from ..registry import registrar

SCORERS: dict[str, type["Scorer"]] = {}


register_scorer = registrar(SCORERS, "scorer")


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


class ScorerParams(BaseModel):
    """A scorer's parameters (none by default). Subclass it inside a scorer as ``Params``, with pydantic
    fields (types, bounds, descriptions): configs validate ``scorer.params`` with it, and the published
    JSON Schema lists it under the scorer's name."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def params_error(name: str, exc: ValidationError) -> str:
    """One line per bad parameter: ``scorer 'name' parameter 'p': message (got value)``."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            parts.append(f"scorer '{name}' has no parameter '{field}'")
        else:
            parts.append(f"scorer '{name}' parameter '{field}': {err['msg']} (got {err.get('input')!r})")
    return "; ".join(parts)


class Scorer:
    """Base class. Subclasses set the class attributes and implement :meth:`score`.

    needs_row / needs_key: what the session must capture (nothing else is wired).
    exact_at: sites at which the score describes the token being smoothed; elsewhere it is
        lagged (e.g. attention rows at ``kv_proj`` are the previous token's); ``None`` (default): every site.
    head_axis: whether :meth:`score` returns one value per query head or per KV head.
    fixed_coefficient: the coefficient is lambda_ref whatever the policy (``constant``).
    stacked_rows: :meth:`score` keeps no state and accepts rows with leading layer dims
        (``[La, B, Hq, T] -> [La, B, Hq]``), so a decode step scores all layers in one call.
    Params: the :class:`ScorerParams` model of its parameters; :attr:`p` holds the validated instance.
    """

    name: ClassVar[str] = "?"
    needs_row: ClassVar[bool] = False
    needs_key: ClassVar[bool] = False
    exact_at: ClassVar[frozenset[str] | None] = None
    head_axis: ClassVar[Literal["query", "kv"]] = "query"
    fixed_coefficient: ClassVar[bool] = False
    stacked_rows: ClassVar[bool] = False
    Params: ClassVar[type[ScorerParams]] = ScorerParams

    def __init__(self, **params: Any):
        try:
            self.p = self.Params.model_validate(params)
        except ValidationError as exc:
            allowed = sorted(self.Params.model_fields) or "none"
            raise ValueError(f"{params_error(self.name, exc)} (parameters: {allowed})") from None
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
        return "exact" if self.exact_at is None or site in self.exact_at else "lagged"


def build_scorer(name: str, params: dict | None = None, **kwargs: Any) -> Scorer:
    """Instantiate a registered scorer, with a clear error for unknown names/parameters."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer '{name}'; registered scorers: {sorted(SCORERS)}")
    return SCORERS[name](**{**(params or {}), **kwargs})
