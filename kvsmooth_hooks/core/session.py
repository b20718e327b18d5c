"""Sessions: lifecycle, forward classification and dispatch for one model and one plan.

``with smooth(model, cfg) as session:`` registers, through the model's adapter,

* a forward pre-hook on the adapter's entry module (the decoder; block 0 in TransformerLens) that
  classifies each forward as prefill / decode / extend and starts a new run when a generation starts,
  and a forward hook on its exit module that ends the forward;
* the site's hooks (:mod:`kvsmooth_hooks.core.sites`: ``cache`` or ``kv_proj``);
* if a scorer needs attention rows: the session-scoped attention probe (:mod:`kvsmooth_hooks.core.probe`), inline
  capture (:mod:`kvsmooth_hooks.core.inline`) or the adapter's row hooks; decode steps score all layers' rows in
  one step (:mod:`kvsmooth_hooks.core.rowbatch`);
* a ``generate`` wrapper that refuses generation modes smoothing cannot serve (assisted and
  prompt-lookup decoding) and starts one trace run per call, and a refusal of continuous batching
  (:mod:`kvsmooth_hooks.core.modes`).

Per-sequence state lives in one :class:`~kvsmooth_hooks.core.state.GenerationState`, so a session serves **one
generation at a time**: a ``generate`` call or forward from a second thread while another thread generates raises
:class:`SessionError` at once, and removing the session waits for a generation running in another thread (up to
``remove_timeout`` seconds, then ends it with an error saying how many steps were smoothed): see
:mod:`kvsmooth_hooks.core.guard` and docs/serving.md. Attaching is atomic, and a module (the model, its decoder, its
smoothed attention modules) belongs to one session. Everything is removed on exit, also when generation raises.
``torch.compile`` wrappers are unwrapped; under ``torch.compile`` the entry/exit hooks run eagerly (``eager_only``).
"""

from __future__ import annotations

import threading
import warnings

from .adapters import Adapter, get_adapter
from .config import KVSmoothConfig
from .errors import SessionError
from .forwards import Forwards
from .guard import Owner, claim_modules, forget_compiled_graphs, release_modules, unwrap_compiled
from .modes import install, uninstall
from .plan import SmoothingPlan, resolve
from .rowbatch import RowBatch
from .inline import InlineRows
from .probe import AttentionProbe, eager_only
from .scorers import build_scorer
from .sites import build_site
from .sites.base import SITES
from .smoothing import coefficient_bounds
from .state import GenerationState
from .trace import Trace

_ATTACH = threading.RLock()  # attach and remove, on every model: one at a time (never taken by forwards)


class Session(Forwards):
    """Smoothing on one model from one plan. Use :func:`smooth` or :func:`attach` to make one.

    Attributes: ``model``, ``adapter``, ``plan``, ``config``, ``site`` (the :class:`~kvsmooth_hooks.core.sites.Site`),
    ``state`` (:class:`~kvsmooth_hooks.core.state.GenerationState`), ``trace`` (:class:`~kvsmooth_hooks.core.trace.Trace`),
    ``handles`` (registered hook handles while attached), ``kind`` (the running forward's kind, or None).

    Options: ``trace`` (record coefficients, default True), ``trace_runs`` (keep only the last N runs; default the
    last 100, with a warning when the first one is dropped; None keeps all), ``record_deltas`` (norms of the K/V
    changes, default False), ``remove_timeout`` (seconds :meth:`remove` waits for a generation running in another
    thread before ending it; default 300, None waits as long as it runs).
    """

    def __init__(self, model, config: KVSmoothConfig | SmoothingPlan | None = None, *, trace: bool = True,
                 record_deltas: bool = False, trace_runs: int | None = ..., adapter: Adapter | None = None,
                 remove_timeout: float | None = 300.0):
        self.compiled = unwrap_compiled(model) is not model  # a torch.compile wrapper: its graphs are retraced
        model = unwrap_compiled(model)
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
        self.fresh_generate = False  # set by the generate wrapper: the next forward starts a run
        self.prefill_chunks = True  # set by the generate wrapper: whether this call may feed the prompt in chunks
        self._undo_reorder = None
        self.owner = Owner(model, self.adapter.entry_module())  # the thread generating now (kvsmooth_hooks.core.guard)
        self.remove_timeout, self.removed_at_step = remove_timeout, None
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
                           self._notes(scorers, active), max_runs=100 if trace_runs is ... else trace_runs,
                           warn_dropped=trace_runs is ...)
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
    def __repr__(self) -> str:
        return (f"<kvsmooth Session on {type(self.model).__name__} (site {self.plan.site}, layers "
                f"{self.plan.active_layers()}){', attached' if self.attached else ''}>")

    def _claims(self) -> list:
        ad = self.adapter
        return ([("the model", self.model), ("its decoder entry", ad.entry_module()), ("its decoder exit", ad.exit_module())]
                + [(f"layer {i}'s attention", layer.attn) for i, layer in self.state.layers.items()])

    def attach(self) -> "Session":
        """Register every hook. A model holds one session at a time; attaching is atomic (one lock for all models)."""
        with _ATTACH:
            if self.attached:
                return self
            other = vars(self.model).get("_kvsmooth_session")
            if other is not None:
                raise SessionError(
                    f"{type(self.model).__name__} already has an active kvsmooth session ({other!r}); remove it first "
                    "(leave its `with` block or call .remove())"
                )
            try:
                claim_modules(self, self._claims())
                self._register()
            except BaseException:
                self.remove()
                raise
            forget_compiled_graphs(self.model, self.compiled)  # graphs traced without these hooks
            self.model._kvsmooth_session = self
            self.attached = True
            return self

    def remove(self, timeout: float | None = ...) -> None:
        """Remove every hook, the attention implementation and the generate wrapper; restore wrapped caches.
        A generation running in another thread is waited for first, up to ``timeout`` seconds (default: the session's
        ``remove_timeout``), then ended with a :class:`SessionError` in that thread."""
        note = self.owner.wait_idle(self.remove_timeout if timeout is ... else timeout, lambda: self.state.step)
        if note:
            warnings.warn(note, stacklevel=3)
        with _ATTACH:
            self._remove()

    def _remove(self) -> None:
        self.removed_at_step = self.state.step
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self.probe is not None:
            self.probe.remove()
            self.probe = None
        if self._undo_reorder is not None:
            self._undo_reorder()
            self._undo_reorder = None
        uninstall(self)
        release_modules(self, self._claims())
        if self.attached:
            forget_compiled_graphs(self.model, self.compiled)  # graphs traced with these hooks
        if vars(self.model).get("_kvsmooth_session") is self:
            del self.model._kvsmooth_session
        self.attached, self._depth, self.kind = False, 0, None
        self.state.cache = None

    def __enter__(self) -> "Session":
        self.attach()  # first: a refused attach leaves no depth behind
        self._depth += 1
        return self

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
            probed = [l for l in self.state.layers.values() if ad.row_module(l.index) is None and not ad.inline_attention(l.index)]
            for layer in self.state.layers.values():
                if (mod := ad.row_module(layer.index)) is not None:
                    self.handles.append(mod.register_forward_hook(self._pattern_hook(layer)))
                elif layer not in probed:  # attention written in the module's own forward (core/inline.py)
                    self.handles += InlineRows(layer.attn, layer.n_heads, self._row_listener(layer), self).register()
            self.rows = RowBatch.for_groups(self.state.groups) if self.site.batch_rows else None
            if probed:
                configs = ad.attention_configs()
                self.probe = AttentionProbe(configs, configs[0]._attn_implementation if configs else "sdpa")
                for layer in probed:
                    self.probe.listen(layer.attn, self._row_listener(layer))
                self.probe.install()
        install(self)  # generate wrapper, continuous batching refused (kvsmooth_hooks.core.modes)


def smooth(model, config: KVSmoothConfig | SmoothingPlan | None = None, **options) -> Session:
    """Context manager: ``with smooth(model, cfg) as session: model.generate(...)``. Hooks are registered on
    entry and removed on exit, also when the block raises. Options: ``trace`` (default True), ``trace_runs``
    (keep the last N runs, default 100), ``record_deltas`` (default False), ``remove_timeout`` (default 300 s)."""
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
