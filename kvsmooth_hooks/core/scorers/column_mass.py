"""``column_mass``: attention a token has *received* from later queries (lagged by construction)."""

import torch
from pydantic import Field

from .base import Scorer, ScoreInputs, ScorerParams, register_scorer


@register_scorer("column_mass")
class ColumnMass(Scorer):
    """Column-sum sink measure, normalised by the number of later queries observed.

    Every observed row adds its probabilities to an accumulator over key positions, and a
    counter per position counts the observed queries that came after it. A token receives
    attention only after it is decoded, so at step t the score describes the token ``lag``
    positions back (default 1): ``mass[t-lag] / count[t-lag]``, the mean attention it got from
    the queries observed since. Prompt queries are not observed (prefill rows are never
    materialised), so prompt positions only count decode-time queries. Lagged at every site.
    """

    needs_row = True
    exact_at = frozenset()

    class Params(ScorerParams):
        lag: int = Field(1, ge=1, le=1_000_000, description="how many positions back the scored token lies (>= 1)")

    def __init__(self, **params):
        super().__init__(**params)
        self.lag = self.p.lag

    def init_state(self, batch, n_heads, n_kv_heads, device, layer=0):
        return {"mass": torch.zeros(batch, n_heads, 0, device=device), "count": torch.zeros(batch, 0, device=device)}

    def score(self, state, inputs: ScoreInputs):
        row = inputs.row  # [B, Hq, T]; position T-1 is the query itself
        b, h, t = row.shape
        mass, count = state["mass"], state["count"]
        if mass.shape[-1] < t:
            mass = torch.cat((mass, mass.new_zeros(b, h, t - mass.shape[-1])), -1)
            count = torch.cat((count, count.new_zeros(b, t - count.shape[-1])), -1)
        mass = mass[..., :t].clone()
        count = count[..., :t].clone()
        mass[..., : t - 1] += row[..., : t - 1]
        count[..., : t - 1] += 1
        state["mass"], state["count"] = mass, count
        pos = t - 1 - self.lag
        if pos < 0:
            return row.new_zeros(b, h)
        return mass[..., pos] / count[:, pos].clamp(min=1).unsqueeze(-1)  # [B, Hq]
