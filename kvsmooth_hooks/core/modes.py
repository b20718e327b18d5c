"""Generation modes inside a session: the entry points a session replaces on its model while it is attached.

``model.generate`` becomes a :class:`GenerateWrapper` bound to the session: it refuses the modes whose forwards verify
several draft tokens at once (assisted, prompt-lookup and self-speculative decoding: smoothing needs one token per
forward) before anything runs, makes the calling thread the session's owner (a second concurrent call raises, see
:mod:`kvsmooth_hooks.core.guard`), and tells the session that a new generation starts, so each call is one trace run
even when it continues an earlier cache. The forward hooks refuse draft verification too
(:func:`~kvsmooth_hooks.core.guard.generation_roles`), so entry points that skip the wrapper are covered.

``model.init_continuous_batching`` (behind ``generate_batch``, ``continuous_batching_context_manager`` and
``generate(cache_implementation="paged")``) raises :class:`SessionError` in the caller's thread: continuous batching
runs its forwards in a background thread, where an error would only reach a log line.
"""

from __future__ import annotations

from .errors import SessionError

#: generate() options whose forwards verify several draft tokens at once.
REFUSED_MODES = (("assistant_model", "assisted decoding (assistant_model)"),
                 ("prompt_lookup_num_tokens", "prompt-lookup decoding (prompt_lookup_num_tokens)"),
                 ("assistant_early_exit", "self-speculative decoding (assistant_early_exit)"))

DRAFT = ("smoothing needs one token per forward, and these forwards verify several draft tokens at once, so most steps "
         "would not be smoothed and the output would match neither the smoothed nor the plain model. Use greedy, "
         "sampling or beam search")

CONTINUOUS = (
    "kvsmooth: continuous batching (generate_batch, init_continuous_batching, continuous_batching_context_manager, "
    "generate(cache_implementation='paged')) is not supported inside a session: it runs every request's forwards in a "
    "background thread on a paged cache that packs all sequences into one, so nothing could be smoothed and errors "
    "would only reach a log line. Use model.generate with the prompts batched (left padding) inside the session"
)


class GenerateWrapper:
    """``model.generate`` while ``session`` is attached (see the module doc). ``original``: an instance-level
    ``generate`` the model had before (None: the class's own method)."""

    def __init__(self, session, original):
        self.session, self.original = session, original

    def __call__(self, *args, **kwargs):
        s = self.session
        model = s.model
        if not s.attached:
            current = vars(model).get("generate")
            if isinstance(current, GenerateWrapper) and current is not self:  # a newer session is attached now
                return current(*args, **kwargs)
            raise SessionError(
                f"kvsmooth: this generate method was taken from {type(model).__name__} while a session was attached, "
                "and that session was removed before this call: its output would not be smoothed. Call "
                "model.generate inside the `with` block (start worker threads and join them inside it: docs/serving.md)"
            )
        gen_cfg = kwargs.get("generation_config") or getattr(model, "generation_config", None)
        for name, mode in REFUSED_MODES:
            value = kwargs.get(name, getattr(gen_cfg, name, None))
            if value is not None and value is not False:
                raise SessionError(f"kvsmooth: {mode} is not supported inside a session: {DRAFT}")
        s.owner.claim("generate call", call=True)
        s.fresh_generate = True
        # inside this call a forward of several tokens after the prompt is a prompt chunk only with chunked prefill
        s.prefill_chunks = kwargs.get("prefill_chunk_size", getattr(gen_cfg, "prefill_chunk_size", None)) is not None
        s.state.cache = None  # set again by the first forward that carries a cache (every call starts a run anyway)
        try:
            out = self.original(*args, **kwargs) if self.original is not None else type(model).generate(model, *args, **kwargs)
        finally:
            s.fresh_generate = False
            s.owner.release()
        if not s.attached:
            raise SessionError(
                f"kvsmooth: the session was removed while this generate call ran; {s.removed_at_step} of its decode "
                "steps were smoothed. Keep the `with` block around the whole generation (docs/serving.md)"
            )
        if s.state.cache is None and s.plan.active_layers():
            raise SessionError(
                f"kvsmooth: {type(model).__name__}.generate ran without passing a KV cache to its decoder (this model "
                "recomputes every position at each step, or generate was told not to cache), so nothing could be "
                "smoothed; KVSmooth needs generation with a KV cache"
            )
        return out


def _refuse_continuous_batching(*args, **kwargs):
    raise SessionError(CONTINUOUS)


def install(session) -> None:
    """Replace the model's ``generate`` and ``init_continuous_batching`` for the session's lifetime."""
    model = session.model
    if callable(getattr(model, "generate", None)):
        model.__dict__["generate"] = GenerateWrapper(session, vars(model).get("generate"))
    if callable(getattr(model, "init_continuous_batching", None)):
        model.__dict__["init_continuous_batching"] = _refuse_continuous_batching


def uninstall(session) -> None:
    """Undo :func:`install` (only what this session installed)."""
    attrs = vars(session.model)
    wrapper = attrs.get("generate")
    if isinstance(wrapper, GenerateWrapper) and wrapper.session is session:
        del attrs["generate"]
        if wrapper.original is not None:
            attrs["generate"] = wrapper.original
    if attrs.get("init_continuous_batching") is _refuse_continuous_batching:
        del attrs["init_continuous_batching"]
