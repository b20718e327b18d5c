"""Smoothing through TransformerLens (``pip install kvsmooth-hooks[lens]``, TransformerLens 3.9).

``smooth(hooked_model, cfg)`` returns the same :class:`~kvsmooth_hooks.core.session.Session` as for a Hugging Face
model (``LensSession`` is an alias): the same config, plan, state, coefficients and trace; the adapter
attaches them to TransformerLens hook points and to its own cache:

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

from .session import Session

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


#: TransformerLens models run the ordinary :class:`~kvsmooth_hooks.core.session.Session`: the adapter
#: (:class:`~kvsmooth_hooks.core.adapters.lens.HookedTransformerAdapter`) serves their hook points and cache.
LensSession = Session


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
