"""Structure discovery: read a model's language decoder from its modules instead of a model-type list.

Pure functions over ``nn.Module`` (no hooks, no forward passes):

* :func:`find_decoder` - the language decoder and its layer list (inside vision-language wrappers,
  ``get_decoder()`` of encoder-decoder models, ``text_config`` models);
* :func:`classify_layer` - what each layer of that list is: a self-attention layer (with the module),
  a layer whose attention reads another layer's cache (shared KV), a cross-attention-only layer, or a
  layer without attention (Mamba / linear-attention / recurrent mixers);
* :func:`kv_slots` - where a self-attention module's key and value projections are: separate modules,
  contiguous slices of a fused QKV output, per-head interleaved fused outputs, or the decompressed
  K/V of multi-head latent attention;
* :func:`head_layout` - query heads, KV heads and head dims of one attention module, read from the
  module (its attributes and projection widths), so per-layer head counts and dims are honoured.

:func:`discover` puts them together as a :class:`DecoderStructure`. The layer index is always the
position in the model's own layer list (what users see in ``model.model.layers[i]``); the cache
index is the attention module's ``layer_idx`` when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .heads import FUSED_CONTIGUOUS, FUSED_GROUPED, FUSED_KV, SEPARATE, HeadLayout, head_layout, kv_slots, safe_heads  # noqa: F401
from .runtime import UnsupportedModelError

#: attribute names of a decoder layer's self-attention module, in order of preference
SELF_ATTENTION_NAMES = ("self_attn", "self_attention", "attn", "attention", "SelfAttention", "mixer", "attn_layer",
                        "temporal_block", "token_mixer")
#: name fragments of cross-attention modules (attend to encoder states or image features, no own KV)
CROSS_MARKERS = ("cross", "encoder_attn", "encdec", "enc_dec", "encoderattention", "xattn")
#: attribute names of the layer list inside a decoder
LAYER_LIST_NAMES = ("layers", "h", "layer", "blocks", "block", "decoder_layers", "transformer_blocks")
#: paths (from the model) whose subtrees are not the language decoder
NON_LANGUAGE = ("vision", "visual", "image", "audio", "speech", "vq", "encoder", "vit", "siglip", "clip", "patch",
                "projector", "connector", "resampler", "qformer", "perceiver", "tokenizer", "codec", "talker",
                "code2wav", "vocoder", "mtp", "depth_decoder", "depth_transformer")

@dataclass(frozen=True)
class LayerInfo:
    """One entry of the decoder's layer list.

    index: position in the model's own layer list; kind: ``attention`` (a self-attention layer with its
    own cache entry), ``shared_kv`` (self-attention reading another layer's cache: smoothed there),
    ``cross_attention`` (attends to encoder / image states only) or the class name of the layer's mixer
    for layers without attention (``MambaMixer``, ``GatedDeltaNet``, ...).
    attention: the self-attention module (None for layers without one); cache_index: the cache layer it
    writes; reads: for ``shared_kv``, the layer index (in the list) whose cache it reads, if known.
    """

    index: int
    kind: str
    module: nn.Module
    attention: nn.Module | None = None
    cache_index: int | None = None
    heads: HeadLayout | None = None
    sliding_window: int | None = None
    reads: int | None = None
    detail: str = ""


@dataclass
class DecoderStructure:
    """The language decoder of a model: the module receiving the cache, its layer list, one
    :class:`LayerInfo` per entry; ``path`` is the decoder's attribute path from the model."""

    decoder: nn.Module
    path: str
    layers_attr: str
    layers: list[LayerInfo] = field(default_factory=list)
    encoder_decoder: bool = False

    def attention_layers(self) -> list[int]:
        """Indices (in the model's layer list) of layers that own a self-attention cache entry."""
        return [l.index for l in self.layers if l.kind == "attention"]


# ---------------------------------------------------------------------------------------------- decoder
def _is_attention_module(name: str, mod: nn.Module) -> bool:
    cls = type(mod).__name__.lower()
    return ("attention" in cls or "attn" in cls) and not isinstance(mod, (nn.ModuleList, nn.ModuleDict)) \
        and any(True for _ in mod.parameters(recurse=True))


def _attention_in(layer: nn.Module, depth: int = 3) -> list[tuple[str, nn.Module]]:
    """Outermost attention-like submodules of ``layer`` (dotted names), at most ``depth`` levels down."""
    out: list[tuple[str, nn.Module]] = []
    if _is_attention_module("", layer):  # layer lists of bare attention modules (XLM's `attentions`)
        return [("", layer)]

    def walk(mod, prefix, d):
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            if _is_attention_module(name, child):
                out.append((full, child))
            elif d > 1 and not isinstance(child, nn.Embedding):
                walk(child, full + ".", d - 1)

    walk(layer, "", depth)
    return out


def _is_cross(name: str, mod: nn.Module) -> bool:
    low = (name + type(mod).__name__).lower().replace("_", "")
    if any(m.replace("_", "") in low for m in CROSS_MARKERS):
        return True
    return bool(getattr(mod, "is_cross_attention", False))


def _layer_lists(root: nn.Module, root_path: str, skip=NON_LANGUAGE) -> list[tuple[str, str, nn.Module, nn.ModuleList]]:
    """Candidate ``(decoder path, attr, decoder, layer list)`` below ``root`` whose entries contain attention,
    outside subtrees whose path names one of ``skip``."""
    found = []
    for path, mod in root.named_modules():
        for attr, child in mod.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) == 0:
                continue
            full = f"{path}.{attr}" if path else attr
            if any(tok in full.lower() for tok in skip) and not full.lower().startswith("decoder") \
                    and ".decoder." not in f".{full.lower()}" and "language" not in full.lower():
                continue
            if any(_attention_in(layer) for layer in child):
                found.append((".".join(p for p in (root_path, path) if p), attr, mod, child))
    return found


def find_decoder(model: nn.Module) -> tuple[str, nn.Module, str, nn.ModuleList]:
    """``(path, decoder, layers_attr, layer list)`` of the language decoder.

    Tries ``model.get_decoder()`` first (the language model of vision-language wrappers, the decoder of
    encoder-decoder models), then searches the model for layer lists whose entries hold attention,
    ignoring vision, audio and encoder towers, and takes the shallowest, longest one.
    """
    roots: list[tuple[str, nn.Module]] = []
    get = getattr(model, "get_decoder", None)
    if callable(get):
        try:
            dec = get()
        except Exception:  # noqa: BLE001 - some wrappers raise when a sub-model is missing
            dec = None
        if isinstance(dec, nn.Module) and dec is not model:
            path = next((n for n, m in model.named_modules() if m is dec), "")
            roots.append((path, dec))
    roots.append(("", model))
    cfg = getattr(model, "config", None)
    passes = [NON_LANGUAGE]
    if not getattr(cfg, "is_encoder_decoder", False):
        passes.append(tuple(t for t in NON_LANGUAGE if t != "encoder"))  # BERT-style decoders keep layers in .encoder
    for path, root, skip in [(p, r, s) for s in passes for p, r in roots]:
        for attr in LAYER_LIST_NAMES:
            lst = getattr(root, attr, None)
            if isinstance(lst, nn.ModuleList) and len(lst) and any(_attention_in(l) for l in lst):
                return path, root, attr, lst
        cands = _layer_lists(root, path, skip)
        if cands:
            cands.sort(key=lambda c: (c[0].count(".") + (1 if c[0] else 0), -len(c[3])))
            p, attr, dec, lst = cands[0]
            return p, dec, attr, lst
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if lists:
        name, lst = max(lists, key=lambda x: len(x[1]))
        kinds = sorted({_mixer_name(layer) for layer in lst})
        raise UnsupportedModelError(
            f"{type(model).__name__}: no self-attention layer with a KV cache (its layer list `{name}` holds {kinds}); "
            "KVSmooth smooths self-attention KV caches"
        )
    raise UnsupportedModelError(
        f"{type(model).__name__}: no language decoder found (no list of layers holding attention modules outside "
        "vision/audio/encoder towers); kvsmooth_hooks needs a decoder whose layers hold self-attention"
    )


# ---------------------------------------------------------------------------------------------- layers
def _mixer_name(layer: nn.Module) -> str:
    for name in ("mixer", "mamba", "linear_attn", "recurrent", "temporal_block", "ssm", "conv", "mlp"):
        mod = getattr(layer, name, None)
        if isinstance(mod, nn.Module):
            return type(mod).__name__
    return type(layer).__name__


def _has_projections(mod: nn.Module) -> bool:
    names = {n for pair in SEPARATE for n in pair} | set(FUSED_CONTIGUOUS + FUSED_GROUPED + FUSED_KV) | {"kv_a_proj_with_mqa"}
    return any(isinstance(getattr(mod, n, None), nn.Module) for n in names)


def _innermost(name: str, mod: nn.Module) -> tuple[str, nn.Module]:
    """Unwrap attention wrappers (T5LayerSelfAttention -> SelfAttention, BertAttention -> self): the module that
    owns the projections and calls the attention function."""
    while not _has_projections(mod):
        inner = [(n, c) for n, c in mod.named_children() if _is_attention_module(n, c) and not _is_cross(n, c)]
        if len(inner) != 1:
            break
        name, mod = f"{name}.{inner[0][0]}", inner[0][1]
    return name, mod


def _self_attention(layer: nn.Module) -> tuple[str, nn.Module] | None:
    cands = [(n, m) for n, m in _attention_in(layer) if not _is_cross(n, m)]
    if not cands:
        return None
    for pref in SELF_ATTENTION_NAMES:
        for n, m in cands:
            if n.split(".")[-1] == pref:
                return _innermost(n, m)
    return _innermost(*cands[0])


def _is_linear_attention(mod: nn.Module) -> bool:
    """Attention-named modules that keep a recurrent state instead of a KV cache (linear attention, SSMs)."""
    cls = type(mod).__name__.lower()
    return any(t in cls for t in ("linearattention", "lightning", "deltanet", "deltaattention", "mamba", "retention",
                                  "rwkv"))


#: fragments of ``config.layer_types`` entries that name layers without a KV cache
NO_CACHE_TYPES = ("linear", "mamba", "conv", "recurrent", "ssm", "delta", "rwkv", "retention")


def classify_layer(index: int, layer: nn.Module, config=None, layer_type: str | None = None) -> LayerInfo:
    """What layer ``index`` of the decoder's list is (see :class:`LayerInfo`). ``layer_type``: the config's
    ``layer_types[index]`` when it has one (it outranks class names, which carry the model's name)."""
    found = _self_attention(layer)
    declared = isinstance(layer_type, str)
    no_cache = declared and any(t in layer_type.lower() for t in NO_CACHE_TYPES)
    if found is None or no_cache:
        cross = [n for n, m in _attention_in(layer) if _is_cross(n, m)]
        if cross and not no_cache:
            return LayerInfo(index, "cross_attention", layer, detail=cross[0])
        kind = type(found[1]).__name__ if found is not None else _mixer_name(layer)
        return LayerInfo(index, kind, layer, detail=layer_type or "")
    name, attn = found
    if not declared and _is_linear_attention(attn):
        return LayerInfo(index, type(attn).__name__, layer, detail=name)
    cache_index = getattr(attn, "layer_idx", None)
    if cache_index is None:
        cache_index = getattr(layer, "layer_idx", None)
    cache_index = index if cache_index is None else int(cache_index)
    window = getattr(attn, "sliding_window", None)
    window = int(window) if isinstance(window, int) and not isinstance(window, bool) else None
    if getattr(attn, "is_kv_shared_layer", False):
        return LayerInfo(index, "shared_kv", layer, attn, cache_index, safe_heads(attn, config), window, None, name)
    return LayerInfo(index, "attention", layer, attn, cache_index, safe_heads(attn, config), window, detail=name)


# ---------------------------------------------------------------------------------------------- all
def discover(model: nn.Module) -> DecoderStructure:
    """The language decoder of ``model`` with every layer classified (see the module doc)."""
    path, decoder, attr, layer_list = find_decoder(model)
    cfg = getattr(model, "config", None)
    structure = DecoderStructure(decoder, path, attr, encoder_decoder=bool(getattr(cfg, "is_encoder_decoder", False)))
    owners: dict[int, int] = {}
    text_cfg = getattr(decoder, "config", None) or getattr(cfg, "text_config", None) or cfg
    types = getattr(text_cfg, "layer_types", None)
    types = types if isinstance(types, (list, tuple)) and len(types) == len(layer_list) else [None] * len(layer_list)
    for i, layer in enumerate(layer_list):
        info = classify_layer(i, layer, text_cfg, types[i])
        if info.kind == "attention":
            if info.cache_index in owners:  # a second layer writing the same cache entry reuses the first one's
                info = LayerInfo(i, "shared_kv", layer, info.attention, info.cache_index, info.heads,
                                 info.sliding_window, owners[info.cache_index], info.detail)
            else:
                owners[info.cache_index] = i
        structure.layers.append(info)
    for n, info in enumerate(structure.layers):
        if info.kind == "shared_kv" and info.reads is None:
            structure.layers[n] = LayerInfo(info.index, info.kind, info.module, info.attention, info.cache_index,
                                            info.heads, info.sliding_window, _shared_source(structure, info),
                                            info.detail)
    if not structure.attention_layers():
        kinds = sorted({l.kind for l in structure.layers})
        raise UnsupportedModelError(
            f"{type(model).__name__}: its decoder ({path or 'the model'}.{attr}) has no self-attention layer with "
            f"its own KV cache (layer kinds: {kinds}); KVSmooth smooths self-attention caches"
        )
    return structure


def _shared_source(structure: DecoderStructure, info: LayerInfo) -> int | None:
    """For a KV-sharing layer: the last earlier cache-writing layer of the same attention type (Gemma 3n / 4)."""
    kind = getattr(info.attention, "layer_type", None)
    for other in reversed(structure.layers[: info.index]):
        if other.kind == "attention" and getattr(other.attention, "layer_type", None) == kind:
            return other.index
    return None
