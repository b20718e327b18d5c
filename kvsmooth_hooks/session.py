"""Sessions: hooks on one model, per-sequence state, and the trace.

``with smooth(model, cfg) as session:`` registers

* one forward pre-hook and one forward hook on the language decoder (classify each forward as
  prefill / decode / extend, reset per-sequence state at every new generation, record the trace);
* site ``cache``: one forward hook per selected layer's attention module, which edits the newest
  cache entry after the attention ran;
* site ``kv_proj``: one forward hook per selected layer on each of the key and value projection
  modules (one on a fused QKV module), which rewrite the newest projection output;
* if the scorer needs attention rows: a session-scoped attention implementation
  (:mod:`kvsmooth_hooks.probe`).

Everything is removed on exit, also when generation raises.
"""

from __future__ import annotations

import warnings
import weakref

import torch

from .adapters import Adapter, get_adapter
from .config import KVSmoothConfig
from .plan import SmoothingPlan, resolve
from .probe import AttentionProbe, query_probs
from .scorers import ScoreInputs, build_scorer
from .smoothing import coefficient_bounds
from .state import CoefficientGroup, LayerState, build_groups
from .trace import Trace

PREFILL, DECODE, EXTEND, NOCACHE = "prefill", "decode", "extend", "nocache"


class SessionError(RuntimeError):
    """Misuse of a session (a second session on one model, unsupported generation mode...)."""


class Session:
    """Smoothing on one model from one plan. Use :func:`smooth` or :func:`attach` to make one.

    Attributes: ``model``, ``adapter``, ``plan``, ``config``, ``trace``
    (:class:`~kvsmooth_hooks.trace.Trace`), ``handles`` (registered hook handles while attached).
    """

    def __init__(self, model, config: KVSmoothConfig | SmoothingPlan | None = None, *, trace: bool = True,
                 record_deltas: bool = False, adapter: Adapter | None = None):
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
        self.site = self.config.site
        self.tracing = trace
        self.record_deltas = record_deltas
        self.handles: list = []
        self.probe: AttentionProbe | None = None
        self.kind = NOCACHE
        self.step = 0
        self.batch = 0
        self.cache = None
        self.first_index: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self._caches: list = []
        self._checked_cache, self._cache_layers = (lambda: None), {}
        self.attached = False
        self.layers: dict[int, LayerState] = {}
        self.groups: list[CoefficientGroup] = []
        active = self.plan.active_layers()
        if not active:
            warnings.warn(
                f"kvsmooth: the config selects no layer of this {self.adapter.n_layers}-layer model "
                f"(layers={self.config.layers!r}); nothing will be smoothed",
                stacklevel=3,
            )
        scorers = {i: build_scorer(self.plan.scorer[i].name, self.plan.scorer[i].params) for i in active}
        self.needs_row = any(sc.needs_row for sc in scorers.values())
        if self.config.smooth_prefill and self.site == "kv_proj" and self.needs_row:
            raise SessionError(
                "smooth_prefill with site 'kv_proj' needs a scorer that reads no attention row (prompt rows do "
                "not exist before the projections run): use key_similarity, constant or random, or site 'cache'"
            )
        timing = {str(i): sc.describe(self.site) for i, sc in scorers.items()}
        lo, hi = coefficient_bounds(self.plan.lambda_ref[active], self.plan.clip[active])
        notes = {"site": self.site, "score_timing": timing, "lambda_lo": lo.tolist(), "lambda_hi": hi.tolist(),
                 "policy": [self.plan.policy[i] for i in active]}
        self.trace = Trace(active, self.adapter.n_kv_heads, self.config, self.adapter.identity(), notes)

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
        """Remove every hook and the attention implementation; restore wrapped caches."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        if self.probe is not None:
            self.probe.remove()
            self.probe = None
        for ref in self._caches:
            cache = ref()
            if cache is not None and "reorder_cache" in vars(cache):
                del cache.reorder_cache
        self._caches.clear()
        if getattr(self.model, "_kvsmooth_session", None) is self:
            del self.model._kvsmooth_session
        self.attached = False
        self.kind, self.cache = NOCACHE, None

    def __enter__(self) -> "Session":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ registration
    def _immediate(self, layer: LayerState) -> bool:
        """kv_proj layers whose coefficient needs this step's key (or a smoothed prompt)."""
        return self.site == "kv_proj" and (layer.scorer.needs_key or self.config.smooth_prefill)

    def _register(self) -> None:
        ad = self.adapter
        ad.check_session(self.site, self.needs_row, self.plan.active_layers(), self.plan)
        decoder = ad.decoder()
        self.handles.append(decoder.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        self.handles.append(decoder.register_forward_hook(self._post_forward))
        self.layers = {i: LayerState(self.plan, i, ad) for i in self.plan.active_layers()}
        self.groups = build_groups(self.plan, self.layers, self._immediate)
        order = [l.index for g in self.groups for l in g.layers]
        self._trace_perm = None if order == list(self.layers) else torch.tensor([order.index(i) for i in self.layers])
        for i, rt in self.layers.items():
            if self.site == "cache":
                self.handles.append(rt.attn.register_forward_hook(self._cache_hook(rt), with_kwargs=True))
                continue
            rt.key_slot, rt.value_slot = ad.key_slot(i), ad.value_slot(i)
            if rt.key_slot.module is rt.value_slot.module:
                self.handles.append(rt.key_slot.module.register_forward_hook(self._proj_hook(rt, ("key", "value"))))
            else:
                self.handles.append(rt.key_slot.module.register_forward_hook(self._proj_hook(rt, ("key",))))
                self.handles.append(rt.value_slot.module.register_forward_hook(self._proj_hook(rt, ("value",))))
        if self.needs_row:
            configs = ad.attention_configs()
            self.probe = AttentionProbe(configs, configs[0]._attn_implementation if configs else "sdpa")
            for rt in self.layers.values():
                self.probe.listeners[id(rt.attn)] = self._row_listener(rt)
            self.probe.install()

    # ------------------------------------------------------------------ decoder hooks
    def _pre_forward(self, module, args, kwargs):
        cache = Adapter.find_cache(kwargs)
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            raise SessionError("kvsmooth: the decoder was called without input_ids or inputs_embeds")
        batch, q_len = int(x.shape[0]), int(x.shape[1])
        self.cache = cache
        if cache is None:
            self.kind = NOCACHE
            return None
        past = int(cache.get_seq_length())
        if past == 0:
            self.kind = PREFILL
            self._new_run(cache, batch, q_len, kwargs.get("attention_mask"), x.device)
        elif batch != self.batch:
            raise SessionError(
                f"kvsmooth: the batch changed from {self.batch} to {batch} sequences in the middle of a generation "
                "(contrastive search and assisted decoding reshape the cache); use greedy, sampling or beam search"
            )
        elif q_len == 1:
            self.kind = DECODE
            if self.site == "kv_proj":  # coefficients from the rows of the previous forward, all layers at once
                for group in self.groups:
                    if not self._immediate(group.layers[0]):
                        for rt in group.layers:
                            if not rt.scorer.needs_row:
                                rt.score(ScoreInputs(first_index=self.first_index))
                        self._proj_weights(group, group.step(tracing=self.tracing))
        else:
            self.kind = EXTEND
        return None

    def _post_forward(self, module, args, output):
        try:
            if self.kind == DECODE:
                if self.site == "cache":
                    for group in self.groups:
                        self._edit_cache(group, group.step(tracing=self.tracing), -1, -2)
                if self.tracing and self.layers:
                    self._record()
                self.step += 1
            elif self.kind == PREFILL and self.site == "cache" and self.config.smooth_prefill:
                self._smooth_prompt_cache()
        finally:
            self.kind, self.cache = NOCACHE, None
        return None

    def _record(self) -> None:
        names = ("score", "rank", "lambda") + (("dk", "dv") if self.record_deltas else ())
        recs = [g.record for g in self.groups]
        out = {}
        for n in names:
            parts = [r[n] for r in recs if r is not None and n in r]
            if len(parts) != len(recs):
                continue
            t = parts[0] if len(parts) == 1 else torch.cat([p.to(parts[0].device) for p in parts], 1)  # device_map
            out[n] = t if self._trace_perm is None else t.index_select(1, self._trace_perm.to(t.device))
        self.trace.record(**out)

    def _new_run(self, cache, batch, q_len, mask2d, device) -> None:
        self.batch, self.step = batch, 0
        if mask2d is not None and mask2d.dim() == 2:
            valid = mask2d.to(device=device, dtype=torch.bool)[:, -q_len:]
            if not bool(valid[:, -1].all()):
                raise SessionError(
                    "kvsmooth: a prompt ends with padding (right padding); smoothing needs each prompt's last "
                    "position to be real: set tokenizer.padding_side = 'left'"
                )
        else:
            valid = torch.ones(batch, q_len, dtype=torch.bool, device=device)
        self.valid = valid
        self.first_index = valid.to(torch.int8).argmax(-1)
        for rt in self.layers.values():
            rt.reset(batch, rt.device or device)
        for group in self.groups:
            group.reset(batch, group.layers[0].device or device)
        self.trace.begin_run(batch, q_len)
        if "reorder_cache" not in vars(cache) and hasattr(cache, "reorder_cache"):
            original = cache.reorder_cache

            def reorder_cache(beam_idx, _orig=original, _self=weakref.ref(self)):
                _orig(beam_idx)
                sess = _self()
                if sess is not None and sess.attached:
                    sess._reorder(beam_idx)

            cache.reorder_cache = reorder_cache
            self._caches.append(weakref.ref(cache))

    def _reorder(self, beam_idx: torch.Tensor) -> None:
        """Beam search reordered the cache: make every per-sequence state follow it."""
        for rt in self.layers.values():
            rt.reorder(beam_idx)
        for group in self.groups:
            group.reorder(beam_idx)
        self.first_index = self.first_index.index_select(0, beam_idx.to(self.first_index.device))
        if self.tracing:
            self.trace.reorder(beam_idx)

    # ------------------------------------------------------------------ attention rows
    def _row_listener(self, rt: LayerState):
        def listener(module, query, key, mask, kwargs, weights):
            kind = self.kind
            if kind == NOCACHE or (self.site == "cache" and kind != DECODE):
                if kind == PREFILL and self.config.smooth_prefill:
                    rt.stash = (query, key, mask, kwargs)
                return
            row = weights[:, :, -1].float() if weights is not None else query_probs(module, query, key, mask, kwargs)[:, :, -1]
            # cache site: this token's score; kv_proj: the newest row, used at the next decode step
            rt.score(ScoreInputs(row=row, first_index=self.first_index))

        return listener

    # ------------------------------------------------------------------ cache site
    def _cache_hook(self, rt: LayerState):
        def hook(module, args, kwargs, output):
            kind = self.kind
            if kind not in (DECODE, PREFILL) or rt.scorer.needs_row:
                return None
            if self.cache is None:
                return None
            layer = self._cache_layer(rt.cache_index)
            with torch.no_grad():
                if kind == PREFILL:
                    if rt.scorer.needs_key:
                        rt.scorer.observe_prompt(rt.scorer_state, layer.keys, self.valid[:, -layer.keys.shape[2]:])
                else:
                    rt.score(ScoreInputs(key=layer.keys[:, :, -1] if rt.scorer.needs_key else None,
                                         first_index=self.first_index))
            return None

        return hook

    def _cache_layer(self, index: int):
        """The current cache's layer ``index``, type-checked once per generation (layer objects persist
        across steps and beam reorders; only their tensors change)."""
        if self._checked_cache() is not self.cache:  # weak references: a finished generation's cache is freed
            self._checked_cache, self._cache_layers = weakref.ref(self.cache), {}
        ref = self._cache_layers.get(index)
        layer = ref() if ref is not None else None
        if layer is None:
            layer = Adapter.check_cache_layer(self.cache, index)
            self._cache_layers[index] = weakref.ref(layer)
        return layer

    def _edit_cache(self, group: CoefficientGroup, lam: torch.Tensor, pos: int, prev: int) -> None:
        """Blend cache position ``pos`` with ``prev`` for every layer of ``group``; lam ``[B, La, H]``."""
        layers = [self._cache_layer(rt.cache_index) for rt in group.layers]
        if layers[0].keys.shape[2] < 2:
            return
        c = group.consts(lam.device)
        with torch.no_grad():
            for name, attr, on in (("dk", "keys", group.smooth_key), ("dv", "values", group.smooth_value)):
                if not on:
                    if self.record_deltas and self.tracing:
                        group.record[name] = torch.zeros_like(lam)
                    continue
                tensors = [getattr(layer, attr) for layer in layers]
                current = [t[:, :, pos] for t in tensors]
                weights = (lam * c["kmask" if attr == "keys" else "vmask"]).unsqueeze(-1).to(tensors[0].dtype)
                before = torch.stack(current, 1).float() if self.record_deltas and self.tracing else None
                torch._foreach_lerp_(current, [t[:, :, prev] for t in tensors], list(weights.unbind(1)))
                if before is not None:
                    group.record[name] = (torch.stack(current, 1).float() - before).norm(dim=-1)

    def _smooth_prompt_cache(self) -> None:
        """smooth_prefill at the cache site: walk the prompt positions in order, like decode steps."""
        for group in self.groups:
            layers = [self._cache_layer(rt.cache_index) for rt in group.layers]
            t = layers[0].keys.shape[2]
            if any(layer.keys.shape[2] != t for layer in layers):  # sliding-window layers next to global ones
                raise SessionError(
                    "smooth_prefill at the cache site needs the smoothed layers' caches to hold the same prompt "
                    "positions, but sliding-window and global layers differ (Gemma 2/3 style): use site 'kv_proj', "
                    "or select only sliding or only global layers"
                )
            valid = self.valid[:, -t:].to(layers[0].keys.device)
            for pos in range(t):
                for rt, layer in zip(group.layers, layers):
                    row = None
                    if rt.stash is not None:
                        query, key, mask, kwargs = rt.stash
                        qi = pos - (t - query.shape[2])
                        row = query_probs(rt.attn, query, key, mask, kwargs, rows=slice(qi, qi + 1))[:, :, 0]
                    rt.score(ScoreInputs(row=row, key=layer.keys[:, :, pos] if rt.scorer.needs_key else None,
                                         first_index=self.first_index))
                real = valid[:, pos]
                has_prev = real & (valid[:, pos - 1] if pos > 0 else torch.zeros_like(real))
                lam = group.step(valid=real, tracing=False) * has_prev[:, None, None]
                if pos > 0:
                    self._edit_cache(group, lam, pos, pos - 1)
            for rt in group.layers:
                rt.stash = None

    # ------------------------------------------------------------------ kv_proj site
    def _proj_hook(self, rt: LayerState, which: tuple[str, ...]):
        slots = {"key": lambda: rt.key_slot, "value": lambda: rt.value_slot}
        group = rt.group

        def hook(module, args, output):
            kind = self.kind
            if kind == NOCACHE:
                return None
            out = output
            with torch.no_grad():
                for name in which:
                    slot = slots[name]()
                    heads = slot.heads(out, rt.n_kv, rt.head_dim)  # [B, T, Hkv, D] view of the output
                    b, t = heads.shape[:2]
                    if kind in (PREFILL, EXTEND):
                        if kind == PREFILL and name == "key" and rt.scorer.needs_key:
                            rt.scorer.observe_prompt(rt.scorer_state, heads.transpose(1, 2), self.valid[:, -t:])
                        if kind == PREFILL and self.config.smooth_prefill:
                            out = self._smooth_prompt_proj(rt, name, out, slot, heads)
                        else:
                            rt.prev[name] = heads[:, -1].clone()
                        continue
                    if group.lam_step != self.step:  # own group: needs this step's key
                        if name != "key" and rt.scorer.needs_key:
                            raise SessionError(
                                f"layer {rt.index}: the value projection ran before the key projection, but scorer "
                                f"'{rt.scorer.name}' needs the key; use site 'cache' for this model"
                            )
                        rt.score(ScoreInputs(key=heads[:, -1], first_index=self.first_index))
                        self._proj_weights(group, group.step(tracing=self.tracing))
                    weight = group.proj_w[name][rt.slot]  # [B, Hkv, 1]
                    if weight.dtype != heads.dtype:
                        weight = weight.to(heads.dtype)
                    if out.requires_grad:
                        out = out.clone()
                        heads = slot.heads(out, rt.n_kv, rt.head_dim)
                    current = heads[:, -1]
                    before = current.float() if self.record_deltas and self.tracing else None
                    new = current.lerp_(rt.prev[name], weight)  # in place: heads is a view of the module output
                    rt.prev[name] = new
                    if before is not None:
                        rec = group.record
                        key = "dk" if name == "key" else "dv"
                        if key not in rec or rec[key].shape[1] != len(group.layers):
                            rec[key] = torch.zeros_like(group.lam)
                        rec[key][:, rt.slot] = (new.float() - before).norm(dim=-1)
            return out

        return hook

    def _proj_weights(self, group: CoefficientGroup, lam: torch.Tensor) -> None:
        """kv_proj: this step's blend weights per layer of ``group``, for keys and values (``[B, Hkv, 1]`` each)."""
        c = group.consts(lam.device)
        group.proj_w = {"key": (lam * c["kmask"]).unsqueeze(-1).unbind(1), "value": (lam * c["vmask"]).unsqueeze(-1).unbind(1)}
        group.lam_step = self.step

    def _smooth_prompt_proj(self, rt: LayerState, name: str, out, slot, heads):
        """smooth_prefill at kv_proj (scorers without attention rows): sequential EMA over the prompt."""
        b, t = heads.shape[:2]
        valid = self.valid[:, -t:].to(heads.device)
        group = rt.group
        if rt.prefill_lam is None:  # coefficients once per prompt, shared by the key and value hooks
            if rt.scorer.needs_key and name != "key":
                raise SessionError(f"layer {rt.index}: the value projection ran before the key projection")
            lams = []
            for pos in range(t):
                rt.score(ScoreInputs(key=heads[:, pos], first_index=self.first_index))
                lams.append(group.step(valid=valid[:, pos], tracing=False)[:, rt.slot])
            rt.prefill_lam = lams
        if out.requires_grad:
            out = out.clone()
        mask = group.consts(heads.device)["kmask" if name == "key" else "vmask"][rt.slot]
        prev = heads[:, 0]
        for pos in range(1, t):
            has_prev = valid[:, pos] & valid[:, pos - 1]
            lam = rt.prefill_lam[pos] * mask * has_prev[:, None]
            prev = torch.lerp(heads[:, pos], prev, lam.unsqueeze(-1).to(prev.dtype))
            slot.heads(out, rt.n_kv, rt.head_dim)[:, pos] = prev
        rt.prev[name] = prev.clone()
        return out


def smooth(model, config: KVSmoothConfig | SmoothingPlan | None = None, **options) -> Session:
    """Context manager: ``with smooth(model, cfg) as session: model.generate(...)``.

    Hooks are registered on entry and removed on exit, also when the block raises.
    Options: ``trace`` (default True), ``record_deltas`` (norms of the K/V changes, default False).
    """
    return _session_class(model)(model, config, **options)


def attach(model, config: KVSmoothConfig | SmoothingPlan | None = None, **options) -> Session:
    """Register the hooks now and return the session; call ``.remove()`` when done."""
    return _session_class(model)(model, config, **options).attach()


def _session_class(model) -> type[Session]:
    """:class:`Session`, or :class:`~kvsmooth_hooks.lens.LensSession` for a TransformerLens model."""
    from .adapters.lens import is_hooked_transformer

    if is_hooked_transformer(model):
        from .lens import LensSession

        return LensSession
    return Session


def generate(model, config: KVSmoothConfig | SmoothingPlan | None = None, **generate_kwargs):
    """``model.generate(**generate_kwargs)``, inside ``smooth(model, config, trace=False)`` unless ``config`` is None.

    The one-liner evaluation runners use to run a baseline arm (``None``) and a smoothed arm the same way.
    """
    if config is None:
        return model.generate(**generate_kwargs)
    with smooth(model, config, trace=False):
        return model.generate(**generate_kwargs)

