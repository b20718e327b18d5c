"""Heads and key / value slots of one attention module, read from the module (no forward pass).

* :func:`head_layout` - query heads, KV heads and key / value head dims (attributes such as ``num_heads``,
  ``num_key_value_groups``, ``head_dim``, else projection widths and the config); multi-head latent
  attention is recognised by ``kv_b_proj`` + ``kv_a_proj_with_mqa`` and described by its cached latent;
* :func:`kv_slots` - where the key and value projections are in the module's outputs (separate modules,
  contiguous slices of a fused output, per-head interleaved fused outputs, MLA's latent / rotary parts).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import ProjSlot
from .runtime import UnsupportedModelError

SEPARATE = (("k_proj", "v_proj"), ("key", "value"), ("k", "v"), ("wk", "wv"), ("Wk", "Wv"), ("k_lin", "v_lin"),
            ("key_proj", "value_proj"), ("project_k", "project_v"), ("to_k", "to_v"), ("linear_k", "linear_v"))
FUSED_CONTIGUOUS = ("qkv_proj", "c_attn", "Wqkv", "W_pack", "qkv", "in_proj", "qkv_linear", "to_qkv",
                    "query_key_value")
#: fused projections laid out per KV group as ``[q * (H / Hkv), k, v]`` (InternLM2's ``wqkv``: ``b q (h gs d)``)
FUSED_GROUPED = ("wqkv",)
FUSED_KV = ("kv_proj", "kv", "wkv", "to_kv")



@dataclass(frozen=True)
class HeadLayout:
    """Head counts of one attention module: ``n_heads`` query heads, ``n_kv`` KV heads; ``k_dim`` / ``v_dim``
    the key and value head dims (the cache holds keys ``[B, n_kv, T, k_dim]``, values ``[B, n_kv, T, v_dim]``)."""

    n_heads: int
    n_kv: int
    k_dim: int
    v_dim: int
    #: multi-head latent attention: the cache holds one compressed latent ``[B, 1, T, k_dim]`` (keys slot) and the
    #: shared rotary key ``[B, 1, T, v_dim]`` (values slot); keys and values of every head are linear in them
    latent: bool = False


def _int(obj, *names):
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _out(mod) -> int | None:
    if mod is None:
        return None
    if isinstance(mod, nn.Linear):
        return mod.out_features
    inner = getattr(mod, "_original_component", None)  # TransformerLens 4 LinearBridge around an nn.Linear
    if isinstance(inner, nn.Module):
        return _out(inner)
    w = getattr(mod, "weight", None)
    if w is not None and w.dim() == 2:  # Conv1D (GPT-2) stores [in, out]
        return int(w.shape[1] if type(mod).__name__ == "Conv1D" else w.shape[0])
    return _int(mod, "out_features")


def head_layout(attn: nn.Module, config=None) -> HeadLayout:
    """Query heads, KV heads and head dims of one attention module, read from the module first."""
    cfg = getattr(attn, "config", None) or config
    n_heads = _int(attn, "num_heads", "num_attention_heads", "n_heads", "n_head", "num_attn_heads", "heads")
    if n_heads is None and cfg is not None:
        n_heads = _int(cfg, "num_attention_heads", "n_head", "num_heads", "decoder_attention_heads")
    groups = _int(attn, "num_key_value_groups", "num_kv_groups", "n_rep")
    n_kv = _int(attn, "num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads")
    if n_kv is None and groups and n_heads:
        n_kv = n_heads // groups
    lora, rope = _int(attn, "kv_lora_rank"), _int(attn, "qk_rope_head_dim") or 0
    if lora and hasattr(attn, "kv_b_proj") and hasattr(attn, "kv_a_proj_with_mqa"):  # MLA: the latent is cached
        return HeadLayout(int(n_heads), 1, lora, rope, latent=True)
    k_dim = _int(attn, "head_dim", "head_size", "d_head", "attention_head_size", "key_value_proj_dim", "d_kv", "dim_head")
    split = _int(attn, "split_size")  # GPT-2 style: the model width split over the heads
    if k_dim is None and split and n_heads:
        k_dim = split // n_heads
    if k_dim is None and cfg is not None:
        k_dim = _int(cfg, "head_dim")
        if k_dim is None:
            hidden = _int(cfg, "hidden_size", "d_model", "n_embd")
            k_dim = hidden // n_heads if hidden and n_heads else None
    sep = next(((getattr(attn, k), getattr(attn, v)) for k, v in SEPARATE
                if isinstance(getattr(attn, k, None), nn.Module) and isinstance(getattr(attn, v, None), nn.Module)), None)
    if sep is not None and k_dim:
        kw, vw = _out(sep[0]), _out(sep[1])
        if n_kv is None and kw:
            n_kv = kw // k_dim
        v_dim = vw // n_kv if vw and n_kv else k_dim
    else:
        v_dim = _int(attn, "v_head_dim") or k_dim
    if n_kv is None:
        n_kv = _int(cfg, "num_key_value_heads", "num_kv_heads") if cfg is not None else None
        n_kv = n_kv or n_heads
    if not (n_heads and n_kv and k_dim):
        raise UnsupportedModelError(
            f"{type(attn).__name__}: cannot read its head counts (num_heads / num_key_value_groups / head_dim "
            "attributes or projection widths); an explicit adapter is needed"
        )
    return HeadLayout(int(n_heads), int(n_kv), int(k_dim), int(v_dim or k_dim))


def safe_heads(attn, config=None) -> HeadLayout | None:
    """:func:`head_layout`, or None when it cannot be read (the layer is then refused when selected)."""
    try:
        return head_layout(attn, config)
    except UnsupportedModelError:
        return None


def kv_slots(attn: nn.Module, heads: HeadLayout) -> tuple[ProjSlot, ProjSlot]:
    """``(key slot, value slot)``: the modules whose outputs are the key and value projections."""
    if heads.latent:  # MLA: [latent (k_dim) | shared rotary key (v_dim)], smoothed together
        mod = getattr(attn, "kv_a_proj_with_mqa", None)
        if isinstance(mod, nn.Module) and _out(mod) == heads.k_dim + heads.v_dim and heads.v_dim:
            return ProjSlot(mod, 0, heads.k_dim), ProjSlot(mod, heads.k_dim, heads.k_dim + heads.v_dim)
        raise UnsupportedModelError(
            f"{type(attn).__name__}: multi-head latent attention whose `kv_a_proj_with_mqa` is not [latent ({heads.k_dim}) "
            f"| rotary key ({heads.v_dim})]; the 'kv_proj' site cannot split it: use site 'cache'"
        )
    for k, v in SEPARATE:
        km, vm = getattr(attn, k, None), getattr(attn, v, None)
        if isinstance(km, nn.Module) and isinstance(vm, nn.Module):
            for name, mod in ((k, km), (v, vm)):
                if _out(mod) is None:
                    raise UnsupportedModelError(
                        f"{type(attn).__name__}.{name} is a {type(mod).__name__}, not a linear projection: its output "
                        "layout is unknown, so the 'kv_proj' site cannot find the new token's keys and values in it; "
                        "use site 'cache'"
                    )
            return ProjSlot(km), ProjSlot(vm)
    q, kv, dk, dv = heads.n_heads, heads.n_kv, heads.k_dim, heads.v_dim
    for name in FUSED_KV:
        mod = getattr(attn, name, None)
        if isinstance(mod, nn.Module) and _out(mod) == kv * (dk + dv):
            return ProjSlot(mod, 0, kv * dk), ProjSlot(mod, kv * dk, kv * (dk + dv))
    for name in FUSED_GROUPED:
        mod = getattr(attn, name, None)
        if isinstance(mod, nn.Module) and _out(mod) == (q + 2 * kv) * dk and dk == dv and q % kv == 0:
            per = q // kv + 2
            return ProjSlot(mod, interleave=(per, per - 2)), ProjSlot(mod, interleave=(per, per - 1))
    for name in FUSED_CONTIGUOUS:
        mod = getattr(attn, name, None)
        if not isinstance(mod, nn.Module):
            continue
        width = _out(mod)
        if width is None:
            raise UnsupportedModelError(
                f"{type(attn).__name__}.{name} is a {type(mod).__name__}, not a linear projection: its output layout is "
                "unknown, so the 'kv_proj' site cannot find the keys and values in it; use site 'cache'"
            )
        if width != q * dk + kv * (dk + dv):
            raise UnsupportedModelError(
                f"{type(attn).__name__}.{name}: fused projection of width {width} does not match "
                f"{q} query + {kv} KV heads of dims {dk}/{dv}; an explicit adapter is needed for its layout"
            )
        if name == "query_key_value" and kv == q and dk == dv:  # GPT-NeoX / Bloom / Persimmon: [H, 3, D]
            return ProjSlot(mod, interleave=(3, 1)), ProjSlot(mod, interleave=(3, 2))
        start = q * dk
        return ProjSlot(mod, start, start + kv * dk), ProjSlot(mod, start + kv * dk, start + kv * (dk + dv))
    raise UnsupportedModelError(
        f"{type(attn).__name__}: no key/value projection found (looked for separate {[k for k, _ in SEPARATE]}, "
        f"fused {list(FUSED_CONTIGUOUS + FUSED_GROUPED + FUSED_KV)}); use site 'cache', or write an explicit adapter"
    )
