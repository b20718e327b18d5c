"""Smoothing through TransformerLens (``pip install kvsmooth-hooks[lens]``, TransformerLens 3.9).

``smooth(hooked_model, cfg)`` returns a :class:`LensSession`: the same config, plan, state,
coefficients and trace as on a Hugging Face model, attached to TransformerLens hook points:

* site ``kv_proj``: ``blocks.{l}.attn.hook_k`` / ``hook_v`` (decode steps see only the new
  token). These are the raw projections, before rotary embeddings, exactly like ``k_proj`` /
  ``v_proj`` on a Hugging Face model: both give the same tokens.
* site ``cache``: the newest entry of the model's own ``TransformerLensKeyValueCache``, edited
  after the forward. TransformerLens caches keys **before** RoPE and rotates the whole cache
  at every step, so on rotary models this smooths pre-RoPE keys (each then rotated at its own
  position), which is *not* what the Hugging Face cache site does (it blends post-RoPE keys).
  On models without rotary embeddings (GPT-2) the two are identical.
* attention rows (row scorers): ``blocks.{l}.attn.hook_pattern``, the new token's row.

Prefill / decode are told apart at block 0 from the cache entry's length, so both
``model.generate(...)`` (which bypasses module hooks on the model itself) and manual loops
(:func:`greedy_generate`) work. ``generate`` without a tokenizer builds no attention mask, so
left-padded batches need :func:`greedy_generate` with an ``attention_mask``.

:func:`hooked_from_hf` converts a Hugging Face Llama or GPT-2 into a ``HookedTransformer``
offline (``from_pretrained`` only accepts names from TransformerLens' list).
"""

from __future__ import annotations

import warnings

import torch

from .adapters import ProjSlot
from .session import Session, SessionError

#: TransformerLens version this module is tested with.
TRANSFORMER_LENS_VERSION = "3.9.0"


def _import_tl():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformer_lens
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"TransformerLens is not installed: pip install 'kvsmooth-hooks[lens]' "
            f"(transformer_lens=={TRANSFORMER_LENS_VERSION})"
        ) from exc
    return transformer_lens


class _EntryView:
    """A TransformerLens cache entry seen as a Hugging Face cache layer: ``keys`` / ``values``
    ``[B, Hkv, T, D]`` (views of ``past_keys`` / ``past_values``, so in-place edits reach the cache)."""

    def __init__(self, entry):
        self.entry = entry

    @property
    def keys(self) -> torch.Tensor:
        return self.entry.past_keys.transpose(1, 2)

    @property
    def values(self) -> torch.Tensor:
        return self.entry.past_values.transpose(1, 2)


class _CacheView:
    """The entries seen during one forward, indexed by layer, as ``cache.layers[i]``."""

    def __init__(self):
        self.entries: dict[int, object] = {}
        self.layers = self

    def __getitem__(self, i: int) -> _EntryView:
        return _EntryView(self.entries[i])

    def get_seq_length(self) -> int:
        return int(self.entries[0].past_keys.shape[1])


class LensSession(Session):
    """A :class:`~kvsmooth_hooks.session.Session` for a ``HookedTransformer`` (see the module doc)."""

    def __init__(self, model, config=None, **options):
        super().__init__(model, config, **options)
        if self.config.smooth_prefill and self.needs_row:
            raise SessionError(
                "smooth_prefill with a row scorer is not supported on TransformerLens models (prompt rows are not "
                "kept); use key_similarity, constant or random"
            )

    def _register(self) -> None:
        from .state import LayerState, build_groups

        ad = self.adapter
        ad.check_session(self.site, self.needs_row, self.plan.active_layers(), self.plan)
        blocks = ad.layers()
        self._view = _CacheView()
        for i, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(self._block_pre(i), with_kwargs=True))
        self.handles.append(blocks[-1].register_forward_hook(self._post_forward))
        self.layers = {i: LayerState(self.plan, i, ad) for i in self.plan.active_layers()}
        self.groups = build_groups(self.plan, self.layers, self._immediate)
        order = [l.index for g in self.groups for l in g.layers]
        self._trace_perm = None if order == list(self.layers) else torch.tensor([order.index(i) for i in self.layers])
        for i, rt in self.layers.items():
            attn = rt.attn
            if self.site == "cache":
                self.handles.append(attn.register_forward_hook(self._cache_hook(rt), with_kwargs=True))
            else:
                rt.key_slot, rt.value_slot = ProjSlot(attn.hook_k), ProjSlot(attn.hook_v)
                self.handles.append(attn.hook_k.register_forward_hook(self._proj_hook(rt, ("key",))))
                self.handles.append(attn.hook_v.register_forward_hook(self._proj_hook(rt, ("value",))))
            if self.needs_row:
                listener = self._row_listener(rt)
                self.handles.append(attn.hook_pattern.register_forward_hook(
                    lambda mod, args, out, _l=listener: _l(mod, None, None, None, None, out)))

    def _block_pre(self, index: int):
        def hook(module, args, kwargs):
            entry = kwargs.get("past_kv_cache_entry")
            if index != 0:
                if entry is not None:
                    self._view.entries[index] = entry
                return None
            self._view.entries.clear()
            if entry is None:
                return self._pre_forward(module, args, {})
            self._view.entries[0] = entry
            resid = kwargs.get("resid_pre", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            return self._pre_forward(module, (), {"inputs_embeds": resid, "cache": self._view, "attention_mask": mask})

        return hook

    def _cache_hook(self, rt):
        inner = super()._cache_hook(rt)

        def hook(module, args, kwargs, output):
            if self.cache is None:
                return None
            return inner(module, args, {"cache": self.cache}, output)

        return hook


# ---------------------------------------------------------------------- utilities
@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, attention_mask: torch.Tensor | None = None):
    """Greedy decoding with an explicit KV cache and attention mask (left padding works, unlike
    ``HookedTransformer.generate`` without a tokenizer). Returns ``[B, T + max_new_tokens]``."""
    tl = _import_tl()
    cache = tl.TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, input_ids.shape[0])
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    toks, out = input_ids, [input_ids]
    for _ in range(max_new_tokens):
        logits = model(toks, past_kv_cache=cache, attention_mask=mask)  # new tokens' mask; the cache keeps the rest
        toks = logits[:, -1].argmax(-1, keepdim=True)
        out.append(toks)
        mask = torch.ones_like(toks)
    return torch.cat(out, 1)


def _rope_theta(c) -> float:
    rp = getattr(c, "rope_parameters", None) or {}
    return rp.get("rope_theta") or getattr(c, "rope_theta", None) or 10000.0


def hooked_from_hf(hf_model, dtype: torch.dtype | None = None):
    """A ``HookedTransformer`` with the weights of a Hugging Face ``LlamaForCausalLM`` or
    ``GPT2LMHeadModel``, built offline (no weight processing: it equals the HF model numerically)."""
    tl = _import_tl()
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights

    c, arch = hf_model.config, type(hf_model).__name__
    dtype = dtype or next(hf_model.parameters()).dtype
    device = str(next(hf_model.parameters()).device)
    if arch == "LlamaForCausalLM":
        d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        n_kv = c.num_key_value_heads or c.num_attention_heads
        cfg = tl.HookedTransformerConfig(
            d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
            act_fn=c.hidden_act, n_key_value_heads=(n_kv if n_kv != c.num_attention_heads else None),
            normalization_type="RMS", positional_embedding_type="rotary", rotary_adjacent_pairs=False,
            rotary_dim=d_head, rotary_base=_rope_theta(c), final_rms=True, gated_mlp=True,
            original_architecture=arch, default_prepend_bos=False, device=device, dtype=dtype)
        convert = convert_llama_weights
    elif arch == "GPT2LMHeadModel":
        cfg = tl.HookedTransformerConfig(
            d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
            n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
            act_fn=c.activation_function, use_attn_scale=c.scale_attn_weights, use_local_attn=False,
            scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx, normalization_type="LN",
            positional_embedding_type="standard", original_architecture=arch, default_prepend_bos=False,
            device=device, dtype=dtype)
        convert = convert_gpt2_weights
    else:
        raise NotImplementedError(
            f"hooked_from_hf converts LlamaForCausalLM and GPT2LMHeadModel, not {arch}; for other models use "
            "HookedTransformer.from_pretrained with a TransformerLens model name"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = tl.HookedTransformer(cfg, tokenizer=None)
    model.load_and_process_state_dict(convert(hf_model, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    return model.eval()


__all__ = ["LensSession", "greedy_generate", "hooked_from_hf", "TRANSFORMER_LENS_VERSION"]
