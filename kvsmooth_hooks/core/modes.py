"""Generation modes inside a session: the ``generate`` wrapper a session installs on its model.

It refuses the modes whose forwards verify several draft tokens at once (assisted, prompt-lookup and
self-speculative decoding: smoothing needs one token per forward) and tells the session that a new
generation starts, so each ``generate`` call is one trace run even when it continues an earlier cache.
"""

from __future__ import annotations

from .errors import SessionError

#: generate() options whose forwards verify several draft tokens at once.
REFUSED_MODES = (("assistant_model", "assisted decoding (assistant_model)"),
                 ("prompt_lookup_num_tokens", "prompt-lookup decoding (prompt_lookup_num_tokens)"),
                 ("assistant_early_exit", "self-speculative decoding (assistant_early_exit)"))


def _generate(model, *args, **kwargs):
    """``model.generate`` while a session is attached: refuse draft-verifying modes, mark a new run."""
    session = getattr(model, "_kvsmooth_session", None)
    if session is None:
        return type(model).generate(model, *args, **kwargs)
    gen_cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    for name, mode in REFUSED_MODES:
        value = kwargs.get(name, getattr(gen_cfg, name, None))
        if value is not None and value is not False:
            raise SessionError(
                f"kvsmooth: {mode} is not supported inside a session: its verification forwards feed several draft "
                "tokens at once, so most steps would not be smoothed and the output would match neither the smoothed "
                "nor the plain model. Use greedy, sampling or beam search"
            )
    original = session._original_generate
    session._generating = session._fresh_generate = True
    session.state.cache = None  # set again by the first forward that carries a cache (every call starts a run anyway)
    try:
        out = original(*args, **kwargs) if original is not None else type(model).generate(model, *args, **kwargs)
    finally:
        session._generating = session._fresh_generate = False
    if session.state.cache is None and session.plan.active_layers():
        raise SessionError(
            f"kvsmooth: {type(model).__name__}.generate ran without passing a KV cache to its decoder (this model "
            "recomputes every position at each step, or generate was told not to cache), so nothing could be "
            "smoothed; KVSmooth needs generation with a KV cache"
        )
    return out
