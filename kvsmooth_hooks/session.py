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
from typing import Any

import torch

from .adapters import Adapter, ProjSlot, get_adapter
from .config import KVSmoothConfig
from .plan import SmoothingPlan, resolve
from .probe import AttentionProbe, query_probs
from .scorers import ScoreInputs, build_scorer
from .smoothing import coefficient, coefficient_bounds, ema_update, fifo_rank, linear_position, new_window, push_window
from .trace import Trace

PREFILL, DECODE, EXTEND, NOCACHE = "prefill", "decode", "extend", "nocache"


class SessionError(RuntimeError):
    """Misuse of a session (a second session on one model, unsupported generation mode...)."""


class _Layer:
    """Runtime of one smoothed layer: constants from the plan and per-sequence state."""

    def __init__(self, session: "Session", index: int):
        plan, adapter = session.plan, session.adapter
        self.session = session
        self.index = index
        self.cache_index = adapter.cache_index(index)
        self.attn = adapter.attention(index)
        spec = plan.scorer[index]
        self.scorer = build_scorer(spec.name, spec.params)
        self.policy = plan.policy[index]
        self.n_heads, self.n_kv = adapter.n_heads, adapter.n_kv_heads
        self.head_dim = adapter.head_dim
        self.per_head = plan.granularity == "head"
        window = plan.window[index]
        self.unit_window = window if self.per_head else window[:1]
        self.window_len = int(self.unit_window.max())
        self.uniform_window = bool((self.unit_window == self.window_len).all())
        enabled = plan.enabled[index]
        lo, hi = coefficient_bounds(plan.lambda_ref[index], plan.clip[index])
        self._cpu = {
            "lo": lo,
            "hi": hi,
            "lambda_ref": plan.lambda_ref[index].clamp(0.0, 1.0),
            "on": enabled.to(torch.float32),
            "kmask": (enabled & plan.key[index]).to(torch.float32),
            "vmask": (enabled & plan.value[index]).to(torch.float32),
            "unit_window": self.unit_window,
        }
        self.smooth_key = bool(self._cpu["kmask"].any())
        self.smooth_value = bool(self._cpu["vmask"].any())
        self._dev: dict[Any, dict[str, torch.Tensor]] = {}
        self.key_slot: ProjSlot | None = None
        self.value_slot: ProjSlot | None = None
        self.reset(0, None)

    def consts(self, device) -> dict[str, torch.Tensor]:
        c = self._dev.get(device)
        if c is None:
            c = self._dev[device] = {k: v.to(device) for k, v in self._cpu.items()}
        return c

    # ------------------------------------------------------------------ state
    def reset(self, batch: int, device) -> None:
        self.batch = batch
        self.window = new_window(batch, self.n_kv if self.per_head else 1, self.window_len, device) if batch else None
        self.scorer_state = (
            self.scorer.init_state(batch, self.n_heads, self.n_kv, device, layer=self.index) if batch else {}
        )
        self.row: torch.Tensor | None = None
        self.prev = {"key": None, "value": None}  # kv_proj site: last smoothed projection [B, Hkv, D]
        self.lam: torch.Tensor | None = None
        self.lam_step = -1
        self.prefill_lam: list[torch.Tensor] | None = None
        self.rec: dict[str, torch.Tensor | None] = {}

    def reorder(self, idx: torch.Tensor) -> None:
        def sel(t):
            return t.index_select(0, idx.to(t.device)) if isinstance(t, torch.Tensor) and t.dim() > 0 else t

        self.window = sel(self.window)
        self.row = sel(self.row)
        self.prev = {k: sel(v) for k, v in self.prev.items()}
        self.scorer_state = {k: sel(v) for k, v in self.scorer_state.items()}

    # ------------------------------------------------------------------ coefficient
    def compute_lambda(self, inputs: ScoreInputs, device) -> torch.Tensor:
        """Score -> window -> rank -> coefficient for the current step. Returns ``[B, Hkv]``."""
        c = self.consts(device)
        raw = self.scorer.score(self.scorer_state, inputs)  # [B, Hq] or [B, Hkv]
        b = raw.shape[0]
        if self.scorer.head_axis == "query" and self.per_head:
            unit = raw.view(b, self.n_kv, -1).mean(-1)
        elif self.per_head:
            unit = raw
        else:
            unit = raw.mean(-1, keepdim=True)
        unit = unit.to(torch.float32)
        if self.policy == "fixed":
            rank = torch.zeros_like(unit)
            lam = c["lambda_ref"].expand(b, -1)
        else:
            self.window = push_window(self.window, unit)
            if self.policy == "fifo_rank":
                length = self.window_len if self.uniform_window else c["unit_window"]
                rank = fifo_rank(self.window, unit, length)
            else:  # linear: the score's position in the window, scaled into the clip band
                pos = linear_position(self.window, unit)
                rank = pos
            if self.policy == "linear":
                lam = c["lo"] + rank * (c["hi"] - c["lo"])
            else:
                lam = coefficient(rank, c["lo"], c["hi"])
        lam = lam * c["on"]
        if self.session.tracing:
            h = self.n_kv
            self.rec = {"score": unit.expand(b, h), "rank": rank.expand(b, h), "lambda": lam}
        return lam

    def lambda_for_step(self, step: int, key: torch.Tensor | None, device) -> torch.Tensor:
        """kv_proj site: one coefficient per step, shared by the key and value hooks."""
        if self.lam_step != step:
            if self.scorer.needs_key and key is None:
                raise SessionError(
                    f"layer {self.index}: the value projection ran before the key projection, but scorer "
                    f"'{self.scorer.name}' needs the key; use site 'cache' for this model"
                )
            if self.scorer.needs_row and self.row is None:
                raise SessionError(f"layer {self.index}: no attention row was captured before this decode step")
            inputs = ScoreInputs(row=self.row, key=key, first_index=self.session.first_index)
            self.lam = self.compute_lambda(inputs, device)
            self.lam_step = step
        return self.lam


class Session:
    """Smoothing on one model from one plan. Use :func:`smooth` or :func:`attach` to make one.

    Attributes: ``model``, ``adapter``, ``plan``, ``trace`` (:class:`~kvsmooth_hooks.trace.Trace`),
    ``handles`` (the registered hook handles while attached).
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
        self.tracing = trace
        self.record_deltas = record_deltas
        self.layers: dict[int, _Layer] = {}
        self.handles: list = []
        self.probe: AttentionProbe | None = None
        self.kind = NOCACHE
        self.step = 0
        self.batch = 0
        self.first_index: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self._caches: list = []
        self.attached = False
        active = self.plan.active_layers()
        if not active:
            warnings.warn(
                f"kvsmooth: the config selects no layer of this {self.adapter.n_layers}-layer model "
                f"(layers={self.config.layers!r}); nothing will be smoothed",
                stacklevel=3,
            )
        needs_row = any(build_scorer(self.plan.scorer[i].name, self.plan.scorer[i].params).needs_row for i in active)
        if self.config.smooth_prefill and self.config.site == "kv_proj" and needs_row:
            raise SessionError(
                "smooth_prefill with site 'kv_proj' needs a scorer that reads no attention row (prompt rows do "
                "not exist before the projections run): use key_similarity, constant or random, or site 'cache'"
            )
        self.needs_row = needs_row
        exact = {i: build_scorer(self.plan.scorer[i].name, self.plan.scorer[i].params).describe(self.config.site)
                 for i in active}
        self.trace = Trace(active, self.adapter.n_kv_heads, self.config, self.adapter.identity(),
                           {"site": self.config.site, "score_timing": exact})

    # ------------------------------------------------------------------ lifecycle
    def attach(self) -> "Session":
        """Register every hook (idempotent errors: a model holds one session at a time)."""
        if self.attached:
            return self
        owner = getattr(self.model, "_kvsmooth_session", None)
        if owner is not None:
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
        self.kind = NOCACHE

    def __enter__(self) -> "Session":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    # ------------------------------------------------------------------ registration
    def _register(self) -> None:
        ad = self.adapter
        decoder = ad.decoder()
        self.handles.append(decoder.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        self.handles.append(decoder.register_forward_hook(self._post_forward))
        for i in self.plan.active_layers():
            rt = self.layers[i] = _Layer(self, i)
            if self.config.site == "cache":
                self.handles.append(rt.attn.register_forward_hook(self._cache_hook(rt), with_kwargs=True))
            else:
                rt.key_slot, rt.value_slot = ad.key_slot(i), ad.value_slot(i)
                if rt.key_slot.module is rt.value_slot.module:
                    self.handles.append(rt.key_slot.module.register_forward_hook(self._proj_hook(rt, ("key", "value"))))
                else:
                    self.handles.append(rt.key_slot.module.register_forward_hook(self._proj_hook(rt, ("key",))))
                    self.handles.append(rt.value_slot.module.register_forward_hook(self._proj_hook(rt, ("value",))))
        if self.needs_row or (self.config.site == "cache" and self.config.smooth_prefill):
            configs = ad.attention_configs()
            base = configs[0]._attn_implementation if configs else "sdpa"
            self.probe = AttentionProbe(configs, base)
            for i, rt in self.layers.items():
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
        else:
            self.kind = EXTEND
        return None

    def _post_forward(self, module, args, output):
        if self.kind == DECODE:
            if self.tracing and self.layers:
                recs = [rt.rec for rt in self.layers.values()]
                names = ("score", "rank", "lambda") + (("dk", "dv") if self.record_deltas else ())
                self.trace.record(**{n: torch.stack([r[n] for r in recs], 1) for n in names if n in recs[0]})
            self.step += 1
        self.kind = NOCACHE
        return None

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
            rt.reset(batch, device)
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
        for rt in self.layers.values():
            rt.reorder(beam_idx)
        if self.first_index is not None:
            self.first_index = self.first_index.index_select(0, beam_idx.to(self.first_index.device))
        if self.tracing:
            self.trace.reorder(beam_idx)

    # ------------------------------------------------------------------ attention rows
    def _row_listener(self, rt: _Layer):
        site = self.config.site

        def listener(module, query, key, mask, kwargs, weights):
            kind = self.kind
            if site == "cache":
                if kind == DECODE:
                    rt.row = weights[:, :, -1].float() if weights is not None else query_probs(module, query, key, mask, kwargs)[:, :, -1]
                elif kind == PREFILL and self.config.smooth_prefill:
                    rt.row = (query, key, mask, kwargs)  # rows computed position by position in the cache hook
            elif kind != NOCACHE:  # kv_proj: keep the newest row for the next step's coefficient
                rt.row = weights[:, :, -1].float() if weights is not None else query_probs(module, query, key, mask, kwargs)[:, :, -1]

        return listener

    # ------------------------------------------------------------------ cache site
    def _cache_hook(self, rt: _Layer):
        def hook(module, args, kwargs, output):
            kind = self.kind
            if kind not in (DECODE, PREFILL):
                return None
            cache = Adapter.find_cache(kwargs)
            if cache is None:
                return None
            layer = Adapter.check_cache_layer(cache, rt.cache_index)
            keys, values = layer.keys, layer.values  # [B, Hkv, T, D]
            with torch.no_grad():
                if kind == PREFILL:
                    if rt.scorer.needs_key:
                        rt.scorer.observe_prompt(rt.scorer_state, keys, self.valid[:, -keys.shape[2]:])
                    if self.config.smooth_prefill:
                        self._smooth_prompt_cache(rt, keys, values)
                    return None
                if keys.shape[2] < 2:
                    return None
                new_key = keys[:, :, -1]
                inputs = ScoreInputs(row=rt.row, key=new_key if rt.scorer.needs_key else None,
                                     first_index=self.first_index)
                lam = rt.compute_lambda(inputs, keys.device)
                rt.row = None
                self._apply(rt, lam, keys, values, -1, -2)
            return None

        return hook

    def _apply(self, rt: _Layer, lam, keys, values, pos: int, prev: int) -> None:
        """Blend cache position ``pos`` with position ``prev`` for the targeted heads."""
        c = rt.consts(keys.device)
        lam3 = lam.unsqueeze(-1)
        for name, cache_t, mask, on in (("dk", keys, c["kmask"], rt.smooth_key), ("dv", values, c["vmask"], rt.smooth_value)):
            if not on:
                if self.record_deltas and self.tracing:
                    rt.rec[name] = torch.zeros_like(lam)
                continue
            current = cache_t[:, :, pos]
            new = ema_update(current, cache_t[:, :, prev], lam3 * mask[:, None])
            if self.record_deltas and self.tracing:
                rt.rec[name] = (new - current).float().norm(dim=-1)
            cache_t[:, :, pos] = new

    def _smooth_prompt_cache(self, rt: _Layer, keys, values) -> None:
        """smooth_prefill at the cache site: walk the prompt positions in order, like decode steps."""
        t = keys.shape[2]
        valid = self.valid[:, -t:]
        stash = rt.row if isinstance(rt.row, tuple) else None
        rt.row = None
        for pos in range(t):
            row = None
            if stash is not None:
                query, key, mask, kwargs = stash
                q_len = query.shape[2]
                qi = pos - (t - q_len)
                if qi < 0:
                    continue
                row = query_probs(rt.attn, query, key, mask, kwargs, rows=slice(qi, qi + 1))[:, :, 0]
            inputs = ScoreInputs(row=row, key=keys[:, :, pos] if rt.scorer.needs_key else None,
                                 first_index=self.first_index)
            saved_window = rt.window
            lam = rt.compute_lambda(inputs, keys.device)
            real = valid[:, pos]
            has_prev = real & (valid[:, pos - 1] if pos > 0 else torch.zeros_like(real))
            if rt.window is not None and saved_window is not None:  # padding never enters the window
                rt.window = torch.where(real[:, None, None], rt.window, saved_window)
            lam = lam * has_prev[:, None]
            if pos > 0:
                self._apply(rt, lam, keys, values, pos, pos - 1)
        rt.rec = {}

    # ------------------------------------------------------------------ kv_proj site
    def _proj_hook(self, rt: _Layer, which: tuple[str, ...]):
        slots = {"key": lambda: rt.key_slot, "value": lambda: rt.value_slot}

        def hook(module, args, output):
            kind = self.kind
            if kind == NOCACHE:
                return None
            out = output
            with torch.no_grad():
                for name in which:
                    slot = slots[name]()
                    x = out[..., slot.start:slot.stop]  # [B, T, Hkv*D]
                    b, t, _ = x.shape
                    heads = x.reshape(b, t, rt.n_kv, rt.head_dim)
                    if kind in (PREFILL, EXTEND):
                        if kind == PREFILL and name == "key" and rt.scorer.needs_key:
                            rt.scorer.observe_prompt(rt.scorer_state, heads.transpose(1, 2), self.valid[:, -t:])
                        if kind == PREFILL and self.config.smooth_prefill:
                            out = self._smooth_prompt_proj(rt, name, out, slot, heads)
                        else:
                            rt.prev[name] = heads[:, -1].clone()
                        continue
                    # decode
                    lam = rt.lambda_for_step(self.step, heads[:, -1] if name == "key" else None, x.device)
                    c = rt.consts(x.device)
                    mask = c["kmask"] if name == "key" else c["vmask"]
                    current = heads[:, -1]
                    new = ema_update(current, rt.prev[name], (lam * mask).unsqueeze(-1))
                    if self.record_deltas and self.tracing:
                        rt.rec["dk" if name == "key" else "dv"] = (new - current).float().norm(dim=-1)
                    rt.prev[name] = new
                    if out.requires_grad:
                        out = out.clone()
                    out[:, -1, slot.start:slot.stop] = new.reshape(b, -1)
            return out

        return hook

    def _smooth_prompt_proj(self, rt: _Layer, name: str, out, slot: ProjSlot, heads):
        """smooth_prefill at kv_proj (scorers without attention rows): sequential EMA over the prompt."""
        b, t = heads.shape[:2]
        valid = self.valid[:, -t:]
        if rt.prefill_lam is None:  # coefficients once per prompt, shared by the key and value hooks
            if rt.scorer.needs_key and name != "key":
                raise SessionError(f"layer {rt.index}: the value projection ran before the key projection")
            lams = []
            for pos in range(t):
                saved = rt.window
                lams.append(rt.compute_lambda(ScoreInputs(key=heads[:, pos], first_index=self.first_index), heads.device))
                if saved is not None and rt.window is not None:  # padding never enters the window
                    rt.window = torch.where(valid[:, pos, None, None], rt.window, saved)
            rt.prefill_lam = lams
            rt.rec = {}
        if out.requires_grad:
            out = out.clone()
        c = rt.consts(heads.device)
        mask = c["kmask"] if name == "key" else c["vmask"]
        prev = heads[:, 0]
        for pos in range(1, t):
            has_prev = valid[:, pos] & valid[:, pos - 1]
            lam = rt.prefill_lam[pos] * mask * has_prev[:, None]
            prev = ema_update(heads[:, pos], prev, lam.unsqueeze(-1))
            out[:, pos, slot.start:slot.stop] = prev.reshape(b, -1)
        rt.prev[name] = prev.clone()
        return out


def smooth(model, config: KVSmoothConfig | SmoothingPlan | None = None, **options) -> Session:
    """Context manager: ``with smooth(model, cfg) as session: model.generate(...)``.

    Hooks are registered on entry and removed on exit, also when the block raises.
    Options: ``trace`` (default True), ``record_deltas`` (norms of the K/V changes, default False).
    """
    return Session(model, config, **options)


def attach(model, config: KVSmoothConfig | SmoothingPlan | None = None, **options) -> Session:
    """Register the hooks now and return the session; call ``.remove()`` when done."""
    return Session(model, config, **options).attach()
