"""Sessions: lifecycle, forward classification and dispatch for one model and one plan.

``with smooth(model, cfg) as session:`` registers, through the model's adapter,

* a forward pre-hook on the adapter's entry module (the decoder; block 0 in TransformerLens) that
  classifies each forward as prefill / decode / extend and starts a new run when a generation starts,
  and a forward hook on its exit module that ends the forward;
* the site's hooks (:mod:`kvsmooth_hooks.core.sites`: ``cache`` or ``kv_proj``);
* if a scorer needs attention rows: the session-scoped attention probe (:mod:`kvsmooth_hooks.core.probe`; decode
  steps score all layers' rows in one step, :mod:`kvsmooth_hooks.core.rowbatch`), or the adapter's row hooks;
* a ``generate`` wrapper that refuses generation modes smoothing cannot serve (assisted and
  prompt-lookup decoding) and starts one trace run per call.

Per-sequence state lives in one :class:`~kvsmooth_hooks.core.state.GenerationState`. Everything is removed on exit,
also when generation raises. Under ``torch.compile`` the entry/exit hooks run eagerly (``eager_only``).
"""

from __future__ import annotations

import types
import warnings

import torch

from .adapters import Adapter, get_adapter
from .config import KVSmoothConfig
from .errors import SessionError
from .modes import _generate
from .plan import SmoothingPlan, resolve
from .rowbatch import RowBatch
from .probe import AttentionProbe, eager_only, query_probs
from .scorers import build_scorer
from .sites import DECODE, EXTEND, PREFILL, build_site
from .sites.base import SITES
from .smoothing import coefficient_bounds
from .state import GenerationState, check_prompt_mask
from .trace import Trace


class Session:
    """Smoothing on one model from one plan. Use :func:`smooth` or :func:`attach` to make one.

    Attributes: ``model``, ``adapter``, ``plan``, ``config``, ``site`` (the :class:`~kvsmooth_hooks.core.sites.Site`),
    ``state`` (:class:`~kvsmooth_hooks.core.state.GenerationState`), ``trace`` (:class:`~kvsmooth_hooks.core.trace.Trace`),
    ``handles`` (registered hook handles while attached), ``kind`` (the running forward's kind, or None).

    Options: ``trace`` (record coefficients, default True), ``trace_runs`` (keep only the last N runs; default
    all), ``record_deltas`` (norms of the K/V changes, default False).
    """

    def __init__(self, model, config: KVSmoothConfig | SmoothingPlan | None = None, *, trace: bool = True,
                 record_deltas: bool = False, trace_runs: int | None = None, adapter: Adapter | None = None):
        self.model = model
        self.adapter = adapter or get_adapter(model)
        if config is None:
            config = KVSmoothConfig()
        if isinstance(config, SmoothingPlan):
            config.check_model(model)
            self.plan = config
        elif isinstance(config, KVSmoothConfig):
            self.plan = resolve(config, self.adapter)
        else:
            raise TypeError(f"config must be a KVSmoothConfig or SmoothingPlan, got {type(config).__name__}")
        self.config = self.plan.config
        self.record_deltas = record_deltas
        self.handles: list = []
        self.probe: AttentionProbe | None = None
        self.rows: RowBatch | None = None  # decode-step rows of all batched layers (kvsmooth_hooks.core.rowbatch)
        self.kind, self.total = None, 0  # the running forward's kind; positions its cache holds after it
        self.attached, self._depth = False, 0
        self._generating = self._fresh_generate = False
        self._undo_reorder = None
        self._original_generate = None
        active = self.plan.active_layers()
        if not active:
            warnings.warn(
                f"kvsmooth: the config selects no layer of this {self.adapter.n_layers}-layer model "
                f"(layers={self.config.layers!r}); nothing will be smoothed",
                stacklevel=3,
            )
        scorers = {i: build_scorer(self.plan.scorer[i].name, self.plan.scorer[i].params) for i in active}  # once
        self.needs_row = any(sc.needs_row for sc in scorers.values())
        site_cls = SITES[self.plan.site]
        site_cls.check(self.config, self.needs_row)
        self.trace = Trace(active, self.adapter.n_kv_heads, self.config, self.adapter.identity(),
                           self._notes(scorers, active), max_runs=trace_runs)
        self.state = GenerationState(self.plan, self.adapter, scorers, self.trace, trace)
        self.site = build_site(self.plan.site, self)
        self.state.build_groups(self.site.immediate)

    def _notes(self, scorers, active) -> dict:
        """What ran, for the trace: the site, score timing and the plan's own per-layer settings."""
        p, site = self.plan, self.plan.site
        lo, hi = coefficient_bounds(p.lambda_ref[active], p.clip[active])
        return {"site": site, "score_timing": {str(i): sc.describe(site) for i, sc in scorers.items()},
                "lambda_lo": lo.tolist(), "lambda_hi": hi.tolist(), "policy": [p.policy[i] for i in active],
                "plan": {"lambda_ref": p.lambda_ref[active].tolist(), "clip": p.clip[active].tolist(),
                         "window": p.window[active].tolist(), "scorer": [p.scorer[i].dump() for i in active]}}

    layers = property(lambda self: self.state.layers)
    groups = property(lambda self: self.state.groups)

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> "Session":
        """Register every hook. A model holds one session at a time."""
        if self.attached:
            return self
        if getattr(self.model, "_kvsmooth_session", None) is not None:
            raise SessionError(
                f"{type(self.model).__name__} already has an active kvsmooth session; remove it first "
                "(leave its `with` block or call .remove())"
            )
        try:
            self._register()
        except BaseException:
            self.remove()
            raise
        self.model._kvsmooth_session = self
        self.attached = True
        return self

    def remove(self) -> None:
        """Remove every hook, the attention implementation and the generate wrapper; restore wrapped caches."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self.probe is not None:
            self.probe.remove()
            self.probe = None
        if self._undo_reorder is not None:
            self._undo_reorder()
            self._undo_reorder = None
        if getattr(vars(self.model).get("generate"), "__func__", None) is _generate:
            del self.model.__dict__["generate"]
            if self._original_generate is not None:
                self.model.__dict__["generate"] = self._original_generate
        if getattr(self.model, "_kvsmooth_session", None) is self:
            del self.model._kvsmooth_session
        self.attached, self._depth, self.kind = False, 0, None
        self.state.cache = None

    def __enter__(self) -> "Session":
        self._depth += 1
        return self.attach()

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth <= 0:  # the outermost `with` removes; re-entering inside it is harmless
            self.remove()

    def __deepcopy__(self, memo):
        raise SessionError(
            "copy.deepcopy of a model with an attached kvsmooth session would copy the session's hooks into the "
            "copy: remove the session first (leave its `with` block or call .remove()), copy the model, then attach "
            "a session to each model"
        )

    # ------------------------------------------------------------------ registration
    def _register(self) -> None:
        ad = self.adapter
        ad.check_session(self.plan.site, self.needs_row, self.plan)
        self.handles.append(ad.entry_module().register_forward_pre_hook(eager_only(self._pre_forward), with_kwargs=True))
        self.handles.append(ad.exit_module().register_forward_hook(eager_only(self._post_forward)))
        self.handles.extend(self.site.register())
        if self.needs_row:
            for layer in self.state.layers.values():
                mod = ad.row_module(layer.index)
                if mod is not None:
                    self.handles.append(mod.register_forward_hook(self._pattern_hook(layer)))
            if any(ad.row_module(i) is None for i in self.state.layers):
                configs = ad.attention_configs()
                self.probe = AttentionProbe(configs, configs[0]._attn_implementation if configs else "sdpa")
                for layer in self.state.layers.values():
                    self.probe.listen(layer.attn, self._row_listener(layer))
                self.rows = RowBatch.for_groups(self.state.groups) if self.site.batch_rows else None
                self.probe.install()
        if callable(getattr(self.model, "generate", None)):
            self._original_generate = vars(self.model).get("generate")  # None: the class's own method
            self.model.__dict__["generate"] = types.MethodType(_generate, self.model)

    # ------------------------------------------------------------------ forwards
    def _pre_forward(self, module, args, kwargs):
        self.kind = None
        info = self.adapter.forward_info(args, kwargs, self._known_past)
        if info is None:
            return None
        if self.probe is not None and not self.probe.active():
            raise SessionError(
                "kvsmooth: the model's attention implementation was changed (set_attn_implementation) while a session "
                "is attached; the session reads attention rows through its own implementation. Remove the session, "
                "change the implementation, then attach again"
            )
        st = self.state
        current = st.cache() if st.cache is not None else None
        if self._fresh_generate or current is not info.cache or info.past == 0:
            kind = self._new_run(info)
        elif info.batch != st.batch:
            raise SessionError(
                f"kvsmooth: the batch changed from {st.batch} to {info.batch} sequences on the same cache in the middle "
                "of a generation; this generation mode reshapes the cache: use greedy, sampling or beam search"
            )
        elif info.q_len == 1:
            kind = DECODE
        elif self._generating and st.step > 0:
            raise SessionError(
                f"kvsmooth: generate() ran a forward of {info.q_len} new tokens after decoding began (assisted, "
                "prompt-lookup or speculative decoding verify several draft tokens at once); smoothing needs one "
                "token per forward: use greedy, sampling or beam search"
            )
        else:  # more prompt (chunked prefill) or a manual loop feeding several tokens: not smoothed, the state follows
            if self.config.smooth_prefill:
                raise SessionError("kvsmooth: smooth_prefill needs the whole prompt in one forward; this one adds "
                                   f"{info.q_len} tokens to a cache of {info.past} (chunked prefill?): set "
                                   "prefill_chunk_size=None or smooth_prefill: false")
            kind = EXTEND
            st.extend(info.mask, info.q_len)
        if kind == DECODE and st.step == 0:
            check_prompt_mask(st.valid)  # the whole prompt is known now (also after a chunked prefill)
        self.kind, self.total = kind, info.past + info.q_len
        self.site.begin(kind, info)
        return None

    def _new_run(self, info) -> str:
        total = info.past + info.q_len
        valid = info.mask if info.mask is not None else torch.ones(info.batch, total, dtype=torch.bool)
        valid = valid.to(info.device)
        self._fresh_generate = False
        # a manual loop that continues a cache: this token is a decode step; inside generate() the first forward
        # holds the rest of the prompt, which is never smoothed
        kind = DECODE if info.past > 0 and info.q_len == 1 and not self._generating else PREFILL
        self.state.reset(info.cache, info.batch, valid, prompt_len=total, mid_stream=kind == DECODE)
        if self._undo_reorder is not None:
            self._undo_reorder()
        self._undo_reorder = self.adapter.watch_reorder(info.cache, self._on_reorder)
        return kind

    def _known_past(self, cache) -> int | None:
        """Inside generate() a static cache grows by each forward's tokens: its length without a host sync."""
        st = self.state
        return self.total if self._generating and not self._fresh_generate and st.cache and st.cache() is cache else None

    def _on_reorder(self, beam_idx: torch.Tensor) -> None:
        if self.attached:
            self.state.reorder(beam_idx)

    def _post_forward(self, module, args, output):
        kind, self.kind = self.kind, None
        if kind is None:
            return None
        if kind == DECODE and self.rows is not None:  # every batched layer's score, before the site's step
            self.rows.score(self.state.first_index)
        self.site.end(kind)
        if kind == DECODE:
            self.state.record()
            self.state.step += 1
        return None

    # ------------------------------------------------------------------ attention rows
    def _row_listener(self, layer):
        def listener(module, query, key, mask, kwargs, weights):
            kind = self.kind
            if kind is None or (kind == DECODE and weights is None and self.rows is not None
                                and self.rows.write(module, query, key, mask, kwargs)):  # scored at the end
                return

            def rows(rows=slice(-1, None)):  # [..., :total]: a static cache also holds unwritten positions
                p = query_probs(module, query, key, mask, kwargs, rows=rows) if weights is None else weights[:, :, rows]
                return p.float()[..., : self.total]

            self.site.on_row(layer, kind, rows)

        return listener

    def _pattern_hook(self, layer):
        def hook(module, args, pattern):  # [B, Hq, Q, T]
            if self.kind is not None:
                self.site.on_row(layer, self.kind, lambda rows=slice(-1, None): pattern[:, :, rows].float())

        return hook


def smooth(model, config: KVSmoothConfig | SmoothingPlan | None = None, **options) -> Session:
    """Context manager: ``with smooth(model, cfg) as session: model.generate(...)``. Hooks are registered on
    entry and removed on exit, also when the block raises. Options: ``trace`` (default True), ``trace_runs``
    (keep the last N runs), ``record_deltas`` (default False)."""
    return Session(model, config, **options)


def attach(model, config: KVSmoothConfig | SmoothingPlan | None = None, **options) -> Session:
    """Register the hooks now and return the session; call ``.remove()`` when done."""
    return Session(model, config, **options).attach()


def generate(model, config: KVSmoothConfig | SmoothingPlan | None = None, **generate_kwargs):
    """``model.generate(**generate_kwargs)``, inside ``smooth(model, config, trace=False)`` unless ``config`` is None:
    how evaluation runners run a baseline arm (``None``) and a smoothed arm the same way."""
    if config is None:
        return model.generate(**generate_kwargs)
    with smooth(model, config, trace=False):
        return model.generate(**generate_kwargs)
