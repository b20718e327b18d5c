"""``first_token_mass``: attention the new query puts on the first position (the classic sink)."""

from .base import Scorer, ScoreInputs, register_scorer


@register_scorer("first_token_mass")
class FirstTokenMass(Scorer):
    """``p_h[first]`` per query head, where ``first`` is the sequence's first real (non-pad) position."""

    needs_row = True
    exact_at = frozenset({"cache"})

    def score(self, state, inputs: ScoreInputs):
        row = inputs.row  # [B, Hq, T]
        idx = inputs.first_index.to(row.device).view(-1, 1, 1).expand(-1, row.shape[1], 1)
        return row.gather(-1, idx).squeeze(-1)  # [B, Hq]
