"""TransformerLens 4 ``TransformerBridge``: smoothing through the Hugging Face model it wraps.

The bridge (``TransformerBridge.boot_transformers(...)``, TransformerLens 4.3) keeps the Hugging Face model
(``bridge.original_model``) and replaces its submodules in place by bridge components that wrap the
originals: decoder layers become ``BlockBridge``, attention modules attention bridges that compute
attention themselves (eager, so that ``hook_pattern`` fires), projections ``LinearBridge``.
``bridge.generate(..., use_past_kv_cache=True)`` runs the Hugging Face decoder with a transformers
``DynamicCache``. So the structure is discovered on ``bridge.original_model`` like any decoder:

* site ``cache``: the attention bridge receives the transformers cache; its newest entry is edited
  (post-RoPE keys, exactly as on the Hugging Face model);
* site ``kv_proj``: the ``LinearBridge`` key / value projections (the bridge attention's ``k`` / ``v``);
* attention rows (row scorers): the attention bridge's ``hook_pattern`` output ``[B, H, Q, T]``;
* head counts: read from the wrapped Hugging Face attention module (``_original_component``);
* ``bridge.generate`` calls the decoder without a cache at the prompt (the decoder makes its own): the
  adapter passes it the same ``DynamicCache`` the decoder would have made, so the prompt forward is seen.

**Known upstream problem (TransformerLens 4.3 with transformers 5.24):** the attention bridges look for the
cache under ``past_key_values`` / ``layer_past``, but transformers 5.24 decoders pass it as ``cache``; the
bridge then never writes the cache, and ``generate(use_past_kv_cache=True)`` silently ignores every earlier
token (its greedy tokens differ from the Hugging Face model's after the first one). :func:`fix_bridge_cache`
adds one permanent pre-hook per attention bridge that also passes the cache under ``past_key_values``
(cached generation then equals the Hugging Face model); a session on an unfixed bridge refuses with a
message naming it.

TransformerLens is not imported here: a bridge is recognised by its class name.
"""

from __future__ import annotations

import inspect

from .discover import head_layout
from .generic import GenericAdapter
from .runtime import UnsupportedModelError
from .registry import register_adapter

_FIXED = "_kvsmooth_cache_fix"


def is_transformer_bridge(model) -> bool:
    return any(c.__name__ == "TransformerBridge" for c in type(model).__mro__)


def _misses_cache_kwarg(attn) -> bool:
    """Whether an attention bridge reads the cache only under older keywords (not ``cache``)."""
    fn = getattr(type(attn), "_update_kv_cache", None)
    if fn is None:
        return False
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return '"past_key_values"' in src and '"cache"' not in src


def fix_bridge_cache(bridge) -> list:
    """Make ``bridge``'s attention bridges see the transformers cache (see the module doc). Idempotent; returns
    the hook handles (``.remove()`` undoes it)."""
    handles = []
    for _, mod in bridge.original_model.named_modules():
        if _misses_cache_kwarg(mod) and not getattr(mod, _FIXED, False):
            def pre(module, args, kwargs):
                if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
                    return args, {**kwargs, "past_key_values": kwargs["cache"]}
                return None

            handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            setattr(mod, _FIXED, True)
    return handles


@register_adapter
class TransformerBridgeAdapter(GenericAdapter):
    name = "transformer_bridge"
    model_types = ()
    cache_at_end = False  # attention bridges may hold the cache under other names: the cache site hooks each one

    @classmethod
    def accepts(cls, model) -> bool:
        return is_transformer_bridge(model)

    def __init__(self, bridge):
        self.bridge = bridge
        super().__init__(bridge.original_model)
        for i in self.smoothable_layers():
            attn = self.structure.layers[i].attention
            self._heads[i] = head_layout(getattr(attn, "_original_component", attn), self.config)

    def check_session(self, site: str, needs_row: bool, plan=None) -> None:
        layers = self.smoothable_layers() if plan is None else plan.active_layers()
        broken = [i for i in layers if _misses_cache_kwarg(self.attention(i)) and not getattr(self.attention(i), _FIXED, False)]
        if broken:
            raise UnsupportedModelError(
                f"this TransformerBridge's attention ({type(self.attention(broken[0])).__name__}) reads the KV cache only "
                "as `past_key_values` / `layer_past`, but transformers passes it as `cache`: its cached generation "
                "ignores earlier tokens (a TransformerLens 4.3 / transformers 5.24 mismatch), so there is no cache to "
                "smooth. Call kvsmooth_hooks.core.adapters.bridge.fix_bridge_cache(bridge) once after booting it"
            )
        super().check_session(site, needs_row, plan)

    def forward_info(self, args: tuple, kwargs: dict, known_past=None):
        """``bridge.generate`` starts with ``cache=None`` and lets the decoder create its ``DynamicCache``; the session
        must see that cache from the prompt on, so the same ``DynamicCache(config=...)`` the decoder would make is
        passed in (the decoder's own default, so the run is unchanged)."""
        if kwargs.get("use_cache") and all(kwargs.get(n) is None for n in ("cache", "past_key_values")):
            from transformers import DynamicCache

            kwargs["cache"] = DynamicCache(config=self.decoder().config)  # in place: the forward receives it
        return super().forward_info(args, kwargs, known_past)

    def row_module(self, layer: int):
        return getattr(self.attention(layer), "hook_pattern", None)

    def identity(self) -> dict:
        return {**super().identity(), "class": f"TransformerBridge({type(self.model).__name__})"}
