"""Tiny random models for every generative model class of the installed transformers (no downloads).

transformers' own test configs are not installed, so the small configs are derived from each config
class's defaults: layer counts, hidden sizes, heads, feed-forward widths, experts and latent ranks are
shrunk (nested text / vision / audio / encoder / decoder configs too), and lists tied to the layer count
are cut while keeping one layer of each kind. A few model types need one more setting; they are in
:data:`EXTRA` with the reason.

``generative_classes()`` lists the classes; ``build(name)`` returns ``(model, note)``.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

#: auto-mapping tables whose classes generate text (``GenerationMixin``) with a KV cache
MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES",
)

LAYERS = {"num_hidden_layers", "num_layers", "n_layer", "n_layers", "decoder_layers", "encoder_layers", "depth",
          "num_decoder_layers", "num_encoder_layers", "text_layers", "vision_layers", "n_layers_decoder"}
HIDDEN = {"hidden_size", "d_model", "n_embd", "embed_dim", "dim", "hidden_dim", "projection_dim", "out_hidden_size",
          "vision_hidden_size", "text_hidden_size", "mm_hidden_size", "d_embed", "word_embed_proj_dim",
          "output_hidden_size", "projector_hidden_size"}
HEADS = {"num_attention_heads", "n_head", "n_heads", "encoder_attention_heads", "decoder_attention_heads",
         "num_heads"}
KV_HEADS = {"num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num", "num_kv_groups"}
FFN = {"intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "n_inner", "d_ff", "ffn_hidden_size",
       "moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size", "d_kv_ffn",
       "mlp_dim", "inner_hidden_size"}
EXPERTS = {"moe_k": 2, "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
           "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
           "first_k_dense_replace": 1, "n_shared_experts": 1, "num_shared_experts": 1}
MLA = {"kv_lora_rank": 32, "q_lora_rank": 32, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 16}
OTHER = {"rotary_dim": 8, "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 1, "n_groups": 1,
         "mamba_dt_rank": 8, "time_step_rank": 8}
PERIODS = {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1}
#: lists with one entry per layer
PER_LAYER = ("layer_types", "layers_block_type", "block_types", "hybrid_override_pattern", "mlp_only_layers",
             "attn_type_list", "full_attn_idxs")

#: model types that need more than the generic shrink: settings applied after it (and why)
EXTRA: dict[str, dict] = {
    "reformer": {"axial_pos_embds_dim": [32, 32]},  # must add up to hidden_size
    "bamba": {"attn_layer_indices": [1]},  # default None: no attention layer at all
    # BLIP-2 / InstructBLIP place the query-token features at image tokens, whose id has no default
    "blip-2": {"image_token_index": 50}, "instructblip": {"image_token_index": 50},
    "instructblipvideo": {"video_token_index": 50},
    "deepseek_v2": {"num_experts_per_tok": 2},  # default None: no router top-k
    "mamba2": {"num_heads": 8, "head_dim": 16},  # num_heads * head_dim = expand * hidden_size
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2},  # defaults None
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},  # default None
    "granitemoehybrid": {"layer_types": ["linear_attention", "attention"]},  # default: no attention layer
    "helium": {"head_dim": 16},  # its output projection assumes head_dim = hidden / heads
    "mllama_text_model": {"num_hidden_layers": 3, "cross_attention_layers": [1]},  # one cross-attention layer
    # 4 layers, the last 2 reuse the KV of the last earlier layer of their kind (sliding / full)
    "gemma3n_text": {"num_hidden_layers": 4, "num_kv_shared_layers": 2, "intermediate_size": [64] * 4,
                     "activation_sparsity_pattern": [0.0] * 4, "layer_types": ["sliding_attention", "full_attention"] * 2},
}

N_LAYERS = 2
HIDDEN_SIZE = 64
N_HEADS = 4
FFN_SIZE = 64
SKIP_FIELDS = {"transformers_version", "architectures", "id2label", "label2id", "dtype", "_name_or_path"}


def generative_classes() -> list[str]:
    """Names of every generation-capable model class in the auto mappings of the installed transformers."""
    import transformers
    import transformers.models.auto.modeling_auto as auto

    names: set[str] = set()
    for table in MAPPINGS:
        for v in getattr(auto, table, {}).values():
            names.update(v if isinstance(v, (list, tuple)) else [v])
    out = []
    for n in sorted(names):
        try:
            cls = getattr(transformers, n)
        except Exception:  # noqa: BLE001 - missing optional dependency or removed class
            continue
        if hasattr(cls, "can_generate") and cls.can_generate():
            out.append(n)
    return out


def _cut_per_layer(value, n: int):
    """A per-layer list of names or flags cut to ``n`` entries, keeping each distinct entry once
    (first-appearance order, then the last one repeated). Returns ``(list, n)``; ``n`` grows to fit the kinds."""
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, (str, bool)) for v in value):
        return value, n
    kinds = list(dict.fromkeys(value))
    n = max(n, len(kinds))
    return kinds + [kinds[-1]] * (n - len(kinds)), n


_MISSING = object()


def _read(cfg, name):
    """A config field's own value (per-layer-heterogeneous configs refuse global reads of some fields)."""
    if name in vars(cfg):
        return vars(cfg)[name]
    try:
        return getattr(cfg, name)
    except Exception:  # noqa: BLE001 - AttributeError, AmbiguousGlobalPerLayerAttributeError
        return _MISSING


def key_present(kw: dict, *keys) -> bool:
    return all(isinstance(kw.get(k), int) for k in keys)


def _fields(cfg) -> list[str]:
    if dataclasses.is_dataclass(cfg):
        return [f.name for f in dataclasses.fields(cfg) if f.init]
    return list(cfg.to_dict())


def shrink(cfg):
    """A copy of ``cfg`` (a PretrainedConfig) with small sizes, sub-configs shrunk recursively."""
    cls = type(cfg)
    kw = {}
    subs = set(getattr(cls, "sub_configs", {}) or {})
    for name in _fields(cfg):
        v = _read(cfg, name)
        if name in SKIP_FIELDS or v is _MISSING:
            continue
        if name in subs or hasattr(v, "to_dict") and hasattr(v, "model_type"):
            kw[name] = shrink(v) if v is not None and hasattr(v, "model_type") else v
            continue
        kw[name] = _shrink_value(name, v, cfg)
    n0 = next((_read(cfg, k) for k in LAYERS if isinstance(_read(cfg, k), int) and not isinstance(_read(cfg, k), bool)),
              None)
    n = next((kw[k] for k in LAYERS if isinstance(kw.get(k), int) and not isinstance(kw.get(k), bool)), N_LAYERS)
    per_layer = [k for k, v in kw.items() if isinstance(v, (list, tuple)) and v and (k in PER_LAYER or len(v) == n0)
                 and k != "mlp_only_layers"]
    for key in per_layer:  # kinds first: they may need more layers
        kw[key], n = _cut_per_layer(kw[key], n)
    for key in per_layer:  # numeric per-layer lists (sizes, sparsity): the first n entries, shrunk
        v = kw[key]
        if isinstance(v, (list, tuple)) and len(v) == n0 and not all(isinstance(x, (str, bool)) for x in v):
            kw[key] = [_shrink_value(key, x, cfg) for x in v[:n]]
    for key in LAYERS:
        if isinstance(kw.get(key), int) and not isinstance(kw.get(key), bool) and kw[key] > 0:
            kw[key] = n if key not in {"encoder_layers", "num_encoder_layers", "depth", "vision_layers"} else min(kw[key], N_LAYERS)
    if isinstance(kw.get("mlp_only_layers"), list):
        kw["mlp_only_layers"] = [i for i in kw["mlp_only_layers"] if i < n]
    for key, v in list(kw.items()):  # indices of attention layers (hybrids): keep those that exist, at least one
        if ("attn" in key or "attention" in key) and "layer" in key and isinstance(v, (list, tuple)) and v \
                and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            kw[key] = [i for i in v if 0 <= i < n] or [n - 1]
    if key_present(kw, "d_head", "d_model", "n_head"):  # XLNet: d_head = d_model / n_head
        kw["d_head"] = kw["d_model"] // kw["n_head"]
    if "num_key_value_heads" in kw and kw["num_key_value_heads"] is None and isinstance(kw.get("num_attention_heads"), int):
        kw["num_key_value_heads"] = kw["num_attention_heads"]
    if "head_dim" in kw and kw["head_dim"] is None and "hidden_size" in kw and "num_attention_heads" in kw:
        kw["head_dim"] = kw["hidden_size"] // kw["num_attention_heads"]
    _fit_rope_sections(cls, kw)
    kw.update(EXTRA.get(getattr(cls, "model_type", ""), {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**kw)


def _shrink_value(name: str, v, cfg):
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        if name in LAYERS:
            return min(v, N_LAYERS) if v > 0 else v
        if name in HIDDEN:
            return min(v, HIDDEN_SIZE)
        if name in HEADS:
            return min(v, N_HEADS)
        if name in KV_HEADS:
            heads = next((_read(cfg, h) for h in HEADS if isinstance(_read(cfg, h), int)), None)
            if heads is not None and v >= heads:
                return N_HEADS  # multi-head: as many KV heads as query heads
            return min(v, 2)
        if name in FFN:
            return min(v, FFN_SIZE)
        if name in EXPERTS:
            return min(v, EXPERTS[name])
        if name in MLA:
            return min(v, MLA[name])
        if name in PERIODS:
            return PERIODS[name]
        if name in OTHER:
            return min(v, OTHER[name])
    return v


def _fit_rope_sections(cls, kw: dict) -> None:
    """Multimodal RoPE sections must add up to half the (rotary part of the) head dim: scale them down."""
    rp = kw.get("rope_parameters")
    if isinstance(rp, dict) and "mrope_section" not in rp and "mrope_section" in getattr(cls, "ignore_keys_at_rope_validation", ()):
        rp = kw["rope_parameters"] = {**rp, "mrope_section": [2, 3, 3]}  # modeling defaults [16, 24, 24] in proportion
    if not isinstance(rp, dict) or not isinstance(rp.get("mrope_section"), (list, tuple)):
        return
    heads = next((kw[h] for h in HEADS if isinstance(kw.get(h), int)), None)
    hidden = next((kw[h] for h in HIDDEN if isinstance(kw.get(h), int)), None)
    head_dim = kw.get("head_dim") if isinstance(kw.get("head_dim"), int) else (hidden // heads if hidden and heads else None)
    if not head_dim:
        return
    frac = rp.get("partial_rotary_factor") or kw.get("partial_rotary_factor") or 1.0
    target = int(head_dim * frac) // 2
    sec = list(rp["mrope_section"])
    total = sum(sec)
    if total == target or total == 0:
        return
    new = [max(1, s * target // total) for s in sec]
    new[0] += target - sum(new)
    kw["rope_parameters"] = {**rp, "mrope_section": new}


def build(name: str, seed: int = 0, attn_implementation: str | None = None):
    """The transformers class ``name`` as a tiny random model in eval mode (``attn_implementation``: as loaded)."""
    import transformers

    cls = getattr(transformers, name)
    cfg = shrink(cls.config_class())
    if ("CausalLM" in name or "LMHead" in name or name.endswith("Decoder")) and getattr(cfg, "is_decoder", None) is False:
        cfg.is_decoder = True  # BERT-style encoders as decoders (causal, with a KV cache), as their docs ask
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = (cls(cfg) if attn_implementation is None
                 else cls._from_config(cfg, attn_implementation=attn_implementation)).eval()
    return model
