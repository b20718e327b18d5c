"""``constant``: lambda is always lambda_ref (the fixed-coefficient ablation)."""

import torch

from .base import Scorer, ScoreInputs, register_scorer


@register_scorer("constant")
class Constant(Scorer):
    """Scores are 0 and the coefficient is ``lambda_ref`` whatever the policy."""

    head_axis = "kv"
    fixed_coefficient = True

    def score(self, state, inputs: ScoreInputs):
        return torch.zeros(state["shape"], device=state["device"])

    def init_state(self, batch, n_heads, n_kv_heads, device, layer=0):
        return {"shape": (batch, n_kv_heads), "device": device}
