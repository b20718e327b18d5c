"""``random``: seeded uniform scores (the control for any sink signal)."""

import torch
from pydantic import Field

from .base import Scorer, ScoreInputs, ScorerParams, register_scorer


@register_scorer("random")
class RandomScore(Scorer):
    """Uniform [0, 1) scores per KV head from a generator seeded with ``seed`` (default 0).

    The generator is re-seeded (from seed and layer index) at every new batch of sequences, so runs repeat exactly.
    """

    head_axis = "kv"

    class Params(ScorerParams):
        seed: int = Field(0, ge=0, le=2**31 - 1, description="generator seed (re-seeded per batch and layer)")

    def init_state(self, batch, n_heads, n_kv_heads, device, layer=0):
        gen = torch.Generator().manual_seed(self.p.seed * 1000003 + layer)
        return {"gen": gen, "shape": (batch, n_kv_heads), "device": device}

    def score(self, state, inputs: ScoreInputs):
        return torch.rand(state["shape"], generator=state["gen"]).to(state["device"])
