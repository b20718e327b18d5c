"""The checks of ``kvsmooth check`` (:mod:`kvsmooth_hooks.check_cli`): does smoothing work on this model? The same
checks run over every generative class of the installed transformers as the architecture sweep
(:mod:`kvsmooth_hooks.sweep`, ``experiments/arch_sweep.py``, ``tests/test_sweep.py``).

Per site (``cache``, ``kv_proj``), on a short greedy generation:

* ``lambda 0``: the default config with lambda_ref 0 and clip 0 gives bit-identical logits to the unhooked model;
* ``lambda 0.9``: lambda_ref 0.9 changes the logits, and so does lambda_ref 0.9 on the keys alone (a key edit that
  never reaches the attention would pass unnoticed otherwise; refused where keys and values are one latent);
* ``no hook left``: no hook, session marker or attention implementation remains after the session;
* ``reference`` (cache site): tokens generated inside the session with a fixed lambda 0.9 equal an explicit decode
  loop written here that runs the model's forward step by step and blends each smoothed layer's newest cache entry
  with the one before it by hand.

A refusal (:class:`UnsupportedModelError`, ``SessionError``, ``PlanError``) is reported with its message; any
other exception is a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .check_inputs import make_inputs
from .core.errors import KVSmoothError

SITES = ("cache", "kv_proj")
NEW_TOKENS = 5
#: scorer tried when the default (row_entropy) is refused for reading attention rows
FALLBACK_SCORER = "key_similarity"


class HarnessError(KVSmoothError, RuntimeError):
    """The model could not be built or run unhooked (a statement about the inputs, not about kvsmooth_hooks)."""


# ---------------------------------------------------------------------------------------------- runs
def prepare(model) -> None:
    """Generation settings for a check: exactly NEW_TOKENS tokens (no EOS), with a KV cache."""
    g = model.generation_config
    g.eos_token_id, g.pad_token_id, g.forced_eos_token_id, g.use_cache = None, 0, None, True
    if getattr(model.config, "is_encoder_decoder", False) and g.decoder_start_token_id is None:
        g.decoder_start_token_id = 0
    langs = getattr(model.config, "languages", None)
    if hasattr(model, "set_default_language") and langs:  # X-MOD: one adapter per language
        model.set_default_language(langs[0])
    if g.bos_token_id is None:
        g.bos_token_id = 1


def generate_logits(model, inputs: dict) -> torch.Tensor:
    """Greedy generation of NEW_TOKENS tokens: the logits ``[B, NEW_TOKENS, V]`` (float)."""
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                         num_beams=1, output_logits=True, return_dict_in_generate=True)
    return torch.stack([l.float() for l in out.logits], 1)


def baseline(model) -> tuple[dict, torch.Tensor]:
    """The first candidate input the unhooked model generates from, and its logits; HarnessError otherwise."""
    errors = []
    for inputs in make_inputs(model):
        try:
            return inputs, generate_logits(model, inputs)
        except Exception as exc:  # noqa: BLE001 - next candidate
            errors.append(exc)
    raise HarnessError(f"{type(errors[0]).__name__}: {str(errors[0])[:300]}")


# ---------------------------------------------------------------------------------------------- checks
def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _attn_impls(model) -> list:
    return [getattr(m.config, "_attn_implementation_internal", None) for m in model.modules() if hasattr(m, "config")
            and hasattr(m.config, "_attn_implementation_internal")]


def check_site(model, inputs, base, site: str, scorer: str | None = None) -> dict:
    """One site on one model: ``{"status": ok|refused|fail|crash, "detail": ...}``."""
    from .core.adapters import UnsupportedModelError
    from .core.config import KVSmoothConfig
    from .core.errors import SessionError
    from .core.plan import PlanError
    from .core.session import smooth

    extra = {"scorer": scorer} if scorer else {}
    hooks, impls, modes = _hook_count(model), _attn_impls(model), torch._C._len_torch_function_stack()
    try:
        with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0, **extra), trace=False):
            zero = generate_logits(model, inputs)
        with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.9, **extra), trace=False):
            smoothed = generate_logits(model, inputs)
        try:  # keys alone must reach the attention too (a late key edit would leave them unsmoothed)
            with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.9, targets=["key"], **extra),
                        trace=False):
                keys_only = generate_logits(model, inputs)
        except (UnsupportedModelError, PlanError):  # keys and values smoothed together only (MLA latents)
            keys_only = None
    except (UnsupportedModelError, SessionError, PlanError) as exc:
        return {"status": "refused", "detail": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - recorded as a crash
        return {"status": "crash", "detail": f"{type(exc).__name__}: {str(exc)[:400]}"}
    finally:
        left = _hook_count(model) - hooks
        marker = getattr(model, "_kvsmooth_session", None) is not None
        restored = _attn_impls(model) == impls and torch._C._len_torch_function_stack() == modes
    if left or marker or not restored:
        return {"status": "fail", "detail": f"left behind: {left} hooks, session marker {marker}, "
                                            f"attention implementation and torch function modes restored {restored}"}
    if not torch.equal(zero, base):
        return {"status": "fail", "detail": f"lambda 0 changed the logits (max diff {(zero - base).abs().max():.3g})"}
    diff = float((smoothed - base).abs().max())
    if not diff > 0:
        return {"status": "fail", "detail": "lambda 0.9 left the logits unchanged"}
    note = "" if keys_only is not None else "; keys only: refused (keys with values)"
    if keys_only is not None and not float((keys_only - base).abs().max()) > 0:
        if not _zero_keys(model, inputs):
            return {"status": "fail", "detail": "lambda 0.9 on the keys alone left the logits unchanged"}
        note = "; keys only: no change, this random model's cached keys are all zero"
    return {"status": "ok", "detail": f"max logit change {diff:.3g}" + note}


def _zero_keys(model, inputs) -> bool:
    """Whether every cached key is exactly zero for ``inputs`` (a random init can zero them: smoothing changes nothing)."""
    from .core.adapters.cache_access import self_attention_part

    try:
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
        cache = self_attention_part(getattr(out, "past_key_values", None))
        keys = [l.keys for l in getattr(cache, "layers", []) if isinstance(getattr(l, "keys", None), torch.Tensor)]
        return bool(keys) and all(not bool(k.any()) for k in keys)
    except Exception:  # noqa: BLE001 - unknown: not degenerate
        return False


@torch.no_grad()
def reference_loop(model, inputs: dict, layers: list[int], lam: float) -> torch.Tensor:
    """Greedy decoding written out: the model's forward step by step, and after every decode step each of ``layers``
    (cache indices) gets its newest entry blended by hand, ``K[-1] <- (1 - lam) K[-1] + lam K[-2]`` (values alike).
    Returns the tokens ``[B, NEW_TOKENS]``."""
    import inspect

    from .core.adapters.cache_access import self_attention_part

    enc = getattr(model.config, "is_encoder_decoder", False)
    first, mask = dict(inputs), inputs.get("attention_mask")
    if enc:
        batch = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
        first["decoder_input_ids"] = torch.full((batch, 1), model.generation_config.decoder_start_token_id)
    positions = "position_ids" in inspect.signature(model.forward).parameters and not enc  # as generate passes them
    if positions and mask is not None and "input_ids" in first:
        first["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
    step = model(**first, use_cache=True)
    cache, tokens = step.past_key_values, [step.logits[:, -1].argmax(-1)]
    for _ in range(NEW_TOKENS - 1):
        kw = {_cache_keyword(model): cache, "use_cache": True}
        if enc:
            kw.update({k: v for k, v in inputs.items() if k != "decoder_input_ids"}, decoder_input_ids=tokens[-1][:, None])
        else:
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1)
            kw.update(input_ids=tokens[-1][:, None], attention_mask=mask)
            if positions and mask is not None:
                kw["position_ids"] = mask.long().sum(-1, keepdim=True) - 1
        step = model(**kw)
        cache = step.past_key_values
        for i in layers:
            entry = self_attention_part(cache).layers[i]
            for t in (entry.keys, entry.values):
                t[:, :, -1] = (1 - lam) * t[:, :, -1] + lam * t[:, :, -2]
        tokens.append(step.logits[:, -1].argmax(-1))
    return torch.stack(tokens, 1)


def _generate_tokens(model, inputs: dict) -> torch.Tensor:
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1,
                         return_dict_in_generate=True)
    return out.sequences[:, -NEW_TOKENS:]


@torch.no_grad()
def reference_check(model, inputs: dict, lam: float = 0.9) -> dict:
    """Cache site, fixed lambda: ``generate`` inside a session against :func:`reference_loop`. The loop is first
    required to reproduce the unhooked ``generate`` at lambda 0 (else it cannot drive this model: ``skip``)."""
    from .core.adapters import get_adapter
    from .core.config import KVSmoothConfig
    from .core.session import smooth

    cfg = KVSmoothConfig(layers="all", site="cache", lambda_ref=lam, clip=0.0, policy="fixed")
    try:
        with smooth(model, cfg, trace=False) as session:
            mine = _generate_tokens(model, inputs)
            layers = [get_adapter(model).cache_index(i) for i in session.state.layers]
    except Exception as exc:  # noqa: BLE001 - the site checks report refusals and crashes
        return {"status": "skip", "detail": f"the session did not run: {type(exc).__name__}: {str(exc)[:200]}"}
    try:
        plain = reference_loop(model, inputs, layers, 0.0)
        drives = torch.equal(plain, _generate_tokens(model, inputs))
        ref = reference_loop(model, inputs, layers, lam) if drives else None
    except Exception as exc:  # noqa: BLE001 - this model's forward cannot be driven by hand here
        return {"status": "skip", "detail": f"the reference loop could not drive this model's forward: "
                                            f"{type(exc).__name__}: {str(exc)[:200]}"}
    if not drives:
        return {"status": "skip", "detail": "the reference loop does not reproduce this model's own generate at "
                                            "lambda 0 (its generate prepares inputs the loop does not)"}
    if torch.equal(mine, ref):
        return {"status": "ok", "detail": f"{NEW_TOKENS} tokens equal the reference loop's"}
    return {"status": "fail", "detail": f"tokens {mine.tolist()} differ from the reference loop's {ref.tolist()}"}


def _cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.24) or ``past_key_values``: what this model's forward takes."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params or "past_key_values" not in params else "past_key_values"


# ---------------------------------------------------------------------------------------------- one model
@dataclass
class Report:
    """What :func:`check_model` found: the structure, each site's result, the reference loop's."""

    name: str
    structure: dict = field(default_factory=dict)
    sites: dict = field(default_factory=dict)
    reference: dict | None = None
    error: str | None = None

    def passed(self) -> bool:
        return self.error is None and all(r["status"] == "ok" for r in self.sites.values()) and \
            (self.reference is None or self.reference["status"] != "fail")


def structure(model) -> dict:
    """The decoder kvsmooth_hooks found: layers, attention layers, KV heads, where rows come from."""
    from .core.adapters import get_adapter

    ad = get_adapter(model)
    out = {"adapter": ad.name, "model_type": ad.model_type(), "n_kv_heads": ad.n_kv_heads, "n_heads": ad.n_heads}
    s = getattr(ad, "structure", None)
    if s is not None:
        out.update(decoder=s.path or "(model)", layers=len(s.layers), attention_layers=len(s.attention_layers()),
                   layer_kinds=sorted({l.kind for l in s.layers}))
    else:
        out.update(layers=ad.n_layers, attention_layers=len(ad.smoothable_layers()))
    layers = ad.smoothable_layers()
    if layers:
        first = layers[0]
        out["rows"] = "row module" if ad.row_module(first) is not None else \
            "inline (the module's own softmax / sdpa call)" if ad.inline_attention(first) else "attention interface"
        try:
            out["kv_proj_ops"] = 1 if ad.key_slot(first).module is ad.value_slot(first).module or \
                ad.key_blend_waits(first) else 2  # blend ops per layer and step at kv_proj (sites/kv_proj.py)
        except Exception:  # noqa: BLE001 - no kv_proj slots: the kv_proj check records the refusal
            pass
    return out


def check_model(model, name: str = "", reference: bool = True, sites=SITES) -> Report:
    """Every check on ``model`` (see the module doc); the row scorer falls back to key_similarity only to say
    whether the rest works (the site is still reported refused for the default scorer's sake)."""
    prepare(model)
    report = Report(name or type(model).__name__)
    try:
        inputs, base = baseline(model)
    except HarnessError as exc:
        report.error = str(exc)
        return report
    try:
        report.structure = structure(model)
    except Exception as exc:  # noqa: BLE001 - the site checks record the refusal
        report.structure = {"adapter_error": f"{type(exc).__name__}: {exc}"}
    for site in sites:
        r = check_site(model, inputs, base, site)
        if r["status"] == "refused" and "reads no row" in r["detail"]:
            alt = check_site(model, inputs, base, site, FALLBACK_SCORER)
            r = {**r, "fallback": alt}
        report.sites[site] = r
    if reference and report.sites.get("cache", {}).get("status") == "ok":
        report.reference = reference_check(model, inputs)
    return report
