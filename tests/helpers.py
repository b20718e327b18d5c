"""Shared test utilities: tiny random models and the explicit reference decode loops."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

#: tests/ and the checkout's root (test files import these instead of counting parent folders)
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def tiny_llama(layers: int = 6, heads: int = 4, kv_heads: int = 2, attn: str = "sdpa", seed: int = 0, **kw):
    """A random Llama (vocab 128, hidden 64) built from a config: no download."""
    kw.setdefault("initializer_range", 0.25)  # peaked, head-specific attention (0.02 gives near-uniform rows)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        attn_implementation=attn,
        **kw,
    )
    model = LlamaForCausalLM(cfg).eval()
    no_eos(model)
    return model


def no_eos(model):
    """Generate exactly max_new_tokens (random weights emit EOS at random otherwise)."""
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    return model


#: keyword under which this transformers version passes the cache to forward()
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as generate derives them from a (left-padded) attention mask."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def _rank(window: list[float], e: float, m: int) -> float:
    return sum(1 for q in window if q < e) / m


@torch.no_grad()
def reference_lambda(windows: dict, layer: int, row: torch.Tensor, lambda_ref: float = 0.9, window: int = 15,
                     clip: float = 0.2) -> list[float]:
    """Steps 1-4 of the method for every sequence of one layer, written out: entropy of the new token's attention
    ``row`` ``[B, Hq, T]`` (mean over heads), push into ``windows[(layer, sequence)]`` (a list kept by the caller),
    FIFO rank over the window length, clip to the band. Returns one lambda per sequence."""
    ent = -(row * torch.log(row.clamp_min(1e-38))).sum(-1)  # [B, Hq]
    lo, hi = max(0.0, lambda_ref - clip), min(1.0, lambda_ref + clip)
    out = []
    for s in range(row.shape[0]):
        e = float(ent[s].mean())
        w = windows.setdefault((layer, s), [])
        w.append(e)
        del w[:-window]
        out.append(min(max(_rank(w, e, window), lo), hi))
    return out


def reference_cache_decode(model, input_ids, attention_mask, new_tokens, layers, lambda_ref=0.9, window=15, clip=0.2):
    """The five steps of the spec, written out: eager attention, manual cache edits, greedy.

    Returns (tokens [B, new_tokens], cache, lambdas {layer: [[lambda per step] per sequence]}).
    """
    restore = model.config._attn_implementation or "sdpa"
    model.set_attn_implementation("eager")
    b = input_ids.shape[0]
    mask = attention_mask.clone()
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
    cache = out.past_key_values
    tok = out.logits[:, -1].argmax(-1)
    tokens = [tok]
    windows = {}
    lams = {l: [[] for _ in range(b)] for l in layers}
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(b, 1)], -1)
        pos = positions(mask)[:, -1:]
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                    output_attentions=True, **{CACHE_KW: cache})
        for l in layers:
            lam_l = reference_lambda(windows, l, out.attentions[l][:, :, -1].float(), lambda_ref, window, clip)
            layer = cache.layers[l]
            for s, lam in enumerate(lam_l):
                lams[l][s].append(lam)
                for t in (layer.keys, layer.values):
                    t[s, :, -1] = (1 - lam) * t[s, :, -1] + lam * t[s, :, -2]
        tok = out.logits[:, -1].argmax(-1)
        tokens.append(tok)
    model.set_attn_implementation(restore)
    return torch.stack(tokens, 1), cache, lams


@torch.no_grad()
def reference_kvproj_decode(model, input_ids, attention_mask, new_tokens, layers, lambda_ref=0.9, window=15, clip=0.2):
    """Reference for the kv_proj site: projection outputs rewritten by plain hooks written here.

    The coefficient at decode step t uses the attention row of the previous forward (eager,
    output_attentions); ``s`` is the previous smoothed projection, seeded from the last prompt position.
    """
    restore = model.config._attn_implementation or "sdpa"
    model.set_attn_implementation("eager")
    b = input_ids.shape[0]
    state = {"decode": False, "lam": {}, "prev": {}}
    windows = {}
    handles = []

    from kvsmooth_hooks.core.adapters import get_adapter

    ad = get_adapter(model)  # where each layer's key / value projections are (also fused QKV slices)

    def make_hook(l, slots):
        def hook(mod, args, out):
            if state["decode"]:
                out = out.clone()
            for name, slot in slots:
                x = slot.heads(out, ad.n_kv_heads, ad.head_dim)  # [B, T, Hkv, D] view
                if not state["decode"]:
                    state["prev"][(l, name)] = x[:, -1].clone()
                    continue
                lam = state["lam"][l]  # list per sequence
                for s in range(b):
                    new = (1 - lam[s]) * x[s, -1] + lam[s] * state["prev"][(l, name)][s]
                    x[s, -1] = new
                    state["prev"][(l, name)][s] = new
            return out

        return hook

    for l in layers:
        k, v = ad.key_slot(l), ad.value_slot(l)
        if k.module is v.module:
            handles.append(k.module.register_forward_hook(make_hook(l, [("k", k), ("v", v)])))
        else:
            handles.append(k.module.register_forward_hook(make_hook(l, [("k", k)])))
            handles.append(v.module.register_forward_hook(make_hook(l, [("v", v)])))
    try:
        mask = attention_mask.clone()
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                    output_attentions=True)
        cache = out.past_key_values
        tok = out.logits[:, -1].argmax(-1)
        tokens = [tok]
        for _ in range(new_tokens - 1):
            for l in layers:  # coefficient from the latest row (the previous forward's last query)
                state["lam"][l] = reference_lambda(windows, l, out.attentions[l][:, :, -1].float(), lambda_ref,
                                                   window, clip)
            state["decode"] = True
            mask = torch.cat([mask, mask.new_ones(b, 1)], -1)
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=positions(mask)[:, -1:],
                        use_cache=True, output_attentions=True, **{CACHE_KW: cache})
            tok = out.logits[:, -1].argmax(-1)
            tokens.append(tok)
    finally:
        for h in handles:
            h.remove()
        model.set_attn_implementation(restore)
    return torch.stack(tokens, 1), cache
