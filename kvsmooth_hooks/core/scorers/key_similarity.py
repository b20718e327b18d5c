"""``key_similarity``: cosine similarity of the new key to the running mean of earlier keys."""

import torch
from einops import einsum

from .base import Scorer, ScoreInputs, register_scorer


@register_scorer("key_similarity")
class KeySimilarity(Scorer):
    """``cos(k_t, mean(k_<t))`` per KV head, over the layer's earlier keys (prompt included).

    The paper's account of sink tokens is that their states sit close to the history average;
    this scorer measures that directly. It needs no attention row, so it adds no attention work
    and is exact at both sites. At ``cache`` the keys are the cached (post-RoPE) ones, at
    ``kv_proj`` the raw projections (pre-RoPE).
    """

    needs_key = True
    head_axis = "kv"

    def init_state(self, batch, n_heads, n_kv_heads, device, layer=0):
        return {"sum": None, "count": torch.zeros(batch, 1, 1, device=device)}

    def observe_prompt(self, state, keys, valid):
        # keys [B, Hkv, T, D], valid [B, T]
        valid = valid.to(keys.device)  # device_map: the prompt mask lives on the first device
        w = valid.to(keys.dtype)
        state["sum"] = einsum(keys, w, "b h t d, b t -> b h d").float()  # padding positions weigh 0
        state["count"] = valid.sum(-1).float().view(-1, 1, 1)

    def score(self, state, inputs: ScoreInputs):
        key = inputs.key.float()  # [B, Hkv, D]
        if state["sum"] is None:
            state["sum"] = torch.zeros_like(key)
        mean = state["sum"] / state["count"].clamp(min=1)
        sim = torch.nn.functional.cosine_similarity(key, mean, dim=-1, eps=1e-8)
        state["sum"] = state["sum"] + key
        state["count"] = state["count"] + 1
        return sim  # [B, Hkv]
