"""Explicit reference decode loops for the paper's ablations and ambiguous points (issue 23).

Written from the spec in docs/method.md with plain Python lists and eager attention (``output_attentions``),
sharing no code with the session: the previous entry raw or smoothed, the head reduction of the row
entropy, the rank divisor while the window fills, and the three sites (cache, kv_proj, attn_out).
"""

from __future__ import annotations

import statistics

import torch

from helpers import CACHE_KW, positions


def _reduce(values: list[float], how: str) -> float:
    return {"mean": lambda v: sum(v) / len(v), "max": max, "min": min, "median": statistics.median}[how](values)


class Coefficients:
    """Window, rank and clip per (layer, sequence), by hand."""

    def __init__(self, lambda_ref, clip, window, divisor):
        self.lo, self.hi = max(0.0, lambda_ref - clip), min(1.0, lambda_ref + clip)
        self.m, self.divisor, self.windows = window, divisor, {}
        self.log: dict[int, list[list[float]]] = {}

    def __call__(self, layer: int, seq: int, head_scores: list[float], how: str) -> float:
        e = _reduce(head_scores, how)
        w = self.windows.setdefault((layer, seq), [])
        w.append(e)
        del w[: -self.m]
        below = sum(1 for q in w if q < e)
        rank = below / (self.m if self.divisor == "window" else len(w))
        lam = min(max(rank, self.lo), self.hi)
        self.log.setdefault(layer, {}).setdefault(seq, []).append(lam)
        return lam


def _entropies(probs: torch.Tensor) -> torch.Tensor:
    """probs ``[B, Hq, T]`` -> ``[B, Hq]`` entropy in nats (0 ln 0 = 0)."""
    p = probs.double()
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


@torch.no_grad()
def reference_decode(model, ids, mask, new_tokens, layers, *, site="cache", previous="smoothed", head_reduce="mean",
                     rank_divisor="window", lambda_ref=0.9, window=15, clip=0.2):
    """Greedy decode with smoothing written out. Returns (tokens [B, new_tokens], cache, {layer: {seq: [lambda]}})."""
    restore = model.config._attn_implementation or "sdpa"
    model.set_attn_implementation("eager")
    b = ids.shape[0]
    coef = Coefficients(lambda_ref, clip, window, rank_divisor)
    n_kv = model.config.num_key_value_heads
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    st = {"decode": False, "lam": {}, "prev": {}, "rows": {}}
    handles = []

    def attn_out_hook(l):
        def hook(mod, args, output):
            out, weights = output[0], output[1]  # [B, T, hidden], [B, Hq, T, T']
            if not st["decode"]:
                st["prev"][l] = out[:, -1].clone()
                return None
            ent = _entropies(weights[:, :, -1])
            for s in range(b):
                lam = coef(l, s, ent[s].tolist(), head_reduce)
                raw = out[s, -1].clone()
                out[s, -1] = (1 - lam) * out[s, -1] + lam * st["prev"][l][s]
                st["prev"][l][s] = raw if previous == "raw" else out[s, -1]
            return None
        return hook

    def proj_hook(l, name):
        def hook(mod, args, out):
            x = out.view(out.shape[0], out.shape[1], n_kv, head_dim)
            if not st["decode"]:
                st["prev"][(l, name)] = x[:, -1].clone()
                return out
            for s in range(b):
                lam = st["lam"][l][s]
                raw = x[s, -1].clone()
                x[s, -1] = (1 - lam) * x[s, -1] + lam * st["prev"][(l, name)][s]
                st["prev"][(l, name)][s] = raw if previous == "raw" else x[s, -1]
            return out
        return hook

    for l in layers:
        attn = model.model.layers[l].self_attn
        if site == "attn_out":
            handles.append(attn.register_forward_hook(attn_out_hook(l)))
        elif site == "kv_proj":
            handles.append(attn.k_proj.register_forward_hook(proj_hook(l, "k")))
            handles.append(attn.v_proj.register_forward_hook(proj_hook(l, "v")))
    try:
        m = mask.clone()
        out = model(input_ids=ids, attention_mask=m, position_ids=positions(m), use_cache=True, output_attentions=True)
        cache = out.past_key_values
        tok = out.logits[:, -1].argmax(-1)
        tokens = [tok]
        raw_prev = {}  # cache site, previous raw: the newest entry before its blend
        for _ in range(new_tokens - 1):
            if site == "kv_proj":  # lagged: the latest row is the previous forward's
                for l in layers:
                    ent = _entropies(out.attentions[l][:, :, -1])
                    st["lam"][l] = [coef(l, s, ent[s].tolist(), head_reduce) for s in range(b)]
            st["decode"] = True
            m = torch.cat([m, m.new_ones(b, 1)], -1)
            out = model(input_ids=tok[:, None], attention_mask=m, position_ids=positions(m)[:, -1:], use_cache=True,
                        output_attentions=True, **{CACHE_KW: cache})
            if site == "cache":
                for l in layers:
                    ent = _entropies(out.attentions[l][:, :, -1])
                    layer = cache.layers[l]
                    for s in range(b):
                        lam = coef(l, s, ent[s].tolist(), head_reduce)
                        for name in ("keys", "values"):
                            t = getattr(layer, name)
                            raw = t[s, :, -1].clone()
                            before = raw_prev.get((l, name, s), t[s, :, -2]) if previous == "raw" else t[s, :, -2]
                            t[s, :, -1] = (1 - lam) * t[s, :, -1] + lam * before
                            raw_prev[(l, name, s)] = raw
            tok = out.logits[:, -1].argmax(-1)
            tokens.append(tok)
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation(restore)
    return torch.stack(tokens, 1), cache, coef.log
