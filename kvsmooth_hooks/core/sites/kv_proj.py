"""Site ``kv_proj``: rewrite the newest key / value projection output before it reaches the cache.

Hooks: one forward hook per smoothed layer on each of the key and value projection modules (one on a
fused QKV module), found through the adapter's :class:`~kvsmooth_hooks.core.adapters.ProjSlot` s. At decode
steps the new token's projection ``x_t`` is blended with the previous *smoothed* projection kept in the
layer state: ``x_t <- (1 - lam) x_t + lam x'_{t-1}``.

One kernel op per layer and step where the model allows it: on a fused QKV module both blends are one
``torch._foreach_lerp_``; with separate projections the key hook only notes the key's view and the value
hook blends both in one op, *if* the attention reads nothing from the key projection's output before the
value projection ran (``adapter.key_blend_waits``, decided from the attention's source: Llama, Mistral,
Qwen 2, Gemma 2/3, ...). Where it does (``k_norm`` in Qwen 3, OLMo 2, Gemma 3n, ...) the key is blended in
its own hook, as soon as it exists: a late in-place edit would not reach the attention. A key left waiting
at the end of a forward (its value projection never ran) raises.

Coefficients that depend only on earlier forwards (attention rows are the previous token's) are
computed for all layers at the start of the decode forward; layers whose scorer needs the new key (or
``smooth_prefill``) compute theirs inside their key hook (their own coefficient group).
"""

from __future__ import annotations

import torch

from ..scorers import ScoreInputs
from .base import DECODE, PREFILL, Site, SiteError, register_site


@register_site("kv_proj")
class KVProjSite(Site):
    hooks_projections = True

    @classmethod
    def check(cls, config, needs_row: bool) -> None:
        if config.smooth_prefill and needs_row:
            raise SiteError(
                "smooth_prefill with site 'kv_proj' needs a scorer that reads no attention row (prompt rows do "
                "not exist before the projections run): use key_similarity, constant or random, or site 'cache'"
            )

    def immediate(self, layer) -> bool:
        return layer.scorer.needs_key or self.config.smooth_prefill

    def register(self) -> list:
        self.mode = None
        self.weights: dict[int, dict] = {}
        self.waiting = 0  # keys noted by key hooks whose value hook has not run yet
        handles = []
        for i, layer in self.state.layers.items():
            ks, vs = self.adapter.key_slot(i), self.adapter.value_slot(i)
            if ks.module is vs.module:
                handles.append(ks.module.register_forward_hook(self._hook(layer, (("key", ks), ("value", vs)))))
            else:
                wait = self.adapter.key_blend_waits(i) and not layer.scorer.needs_key
                handles.append(ks.module.register_forward_hook(self._hook(layer, (("key", ks),), wait)))
                handles.append(vs.module.register_forward_hook(self._hook(layer, (("value", vs),))))
        return handles

    def begin(self, kind, info) -> None:
        state = self.state
        self._drop_waiting()
        # a run that starts mid-stream has no previous smoothed projection: its first forward only remembers
        self.mode = PREFILL if kind == DECODE and state.step == 0 and state.mid_stream else kind
        if self.mode != DECODE:
            return
        for group in state.groups:  # coefficients from earlier forwards' rows, all layers at once
            if not self.immediate(group.layers[0]):
                for layer in group.layers:
                    if not layer.scorer.needs_row:
                        layer.score(ScoreInputs(first_index=state.first_index))
                self._weights(group, group.step(tracing=state.tracing))

    def on_row(self, layer, kind, row_fn) -> None:  # the newest row, used at the next decode step
        layer.score(ScoreInputs(row=row_fn()[:, :, -1], first_index=self.state.first_index))

    def _drop_waiting(self) -> bool:
        """Forget keys still waiting for their value hook (a forward that raised, or one that broke the order)."""
        waited, self.waiting = self.waiting, 0
        if waited:
            for layer in self.state.layers.values():
                layer.pending = None
        return bool(waited)

    def end(self, kind) -> None:
        if self._drop_waiting():
            raise SiteError(
                "kvsmooth: a key projection ran without its value projection after it in this forward, so its deferred "
                "blend was never applied; this attention module does not run as its source reads. Report the model: "
                "its adapter's key_blend_waits must return False")

    def _weights(self, group, lam: torch.Tensor) -> None:
        """This step's blend weights of ``group``'s layers, ``[B, La, Hkv, 1]`` for keys and for values."""
        c = group.consts(lam.device)
        self.weights[id(group)] = {
            "key": (lam if group.key_is_lam else lam * c["kmask"]).unsqueeze(-1),
            "value": (lam if group.value_is_lam else lam * c["vmask"]).unsqueeze(-1), "step": self.state.step}

    def _weight(self, w: dict, name: str, dtype, layer) -> torch.Tensor:
        """``layer``'s ``[B, Hkv, 1]`` weight (its own KV heads): the group's weights converted to the projection's
        dtype and split per layer once per group, step and dtype."""
        views = w.get((name, dtype))
        if views is None:
            views = w[(name, dtype)] = [v if l.n_kv == v.shape[1] else v[:, :l.n_kv]
                                        for v, l in zip(w[name].to(dtype).unbind(1), layer.group.layers)]
        return views[layer.slot]

    def _blend(self, layer, todo: list[tuple]) -> None:
        """``x_t <- lerp(x_t, x'_{t-1}, w)`` in place for each ``(name, view, weight)``: one fused op."""
        names, current, weights = zip(*todo)
        previous = [layer.prev[n] for n in names]
        keep = [c.clone() for c in current] if self.config.previous == "raw" else current  # raw: x_{t-1}, not x'_{t-1}
        if len(todo) == 1:
            current[0].lerp_(previous[0], weights[0])
        else:
            torch._foreach_lerp_(list(current), previous, list(weights))
        for name, new in zip(names, keep):
            layer.prev[name] = new

    def _hook(self, layer, slots, wait: bool = False):
        """``slots``: ``(name, ProjSlot)`` s of this module; ``wait``: a key whose blend the value hook does."""
        state = self.state

        def hook(module, args, output):
            if self.session.kind is None:
                return None
            if torch.is_grad_enabled():
                with torch.no_grad():
                    return body(output)
            return body(output)

        def body(output):
            kind = self.mode
            out = output
            group = layer.group
            todo = []
            for name, slot in slots:
                heads = slot.heads(out, layer.n_kv, layer.head_dim)  # [B, T, Hkv, D] view of the output
                if kind != DECODE:
                    if kind == PREFILL and name == "key" and layer.scorer.needs_key:
                        layer.scorer.observe_prompt(layer.scorer_state, heads.transpose(1, 2),
                                                    state.valid[:, -heads.shape[1]:])
                    if kind == PREFILL and self.config.smooth_prefill:
                        out = self._smooth_prompt(layer, name, out, slot, heads)
                    else:
                        layer.prev[name] = heads[:, -1].clone()
                    continue
                w = self.weights.get(id(group))
                if w is None or w["step"] != state.step:  # own group: needs this step's key
                    if name != "key" and layer.scorer.needs_key:
                        raise SiteError(
                            f"layer {layer.index}: the value projection ran before the key projection, but "
                            f"scorer '{layer.scorer.name}' needs the key; use site 'cache' for this model")
                    layer.score(ScoreInputs(key=heads[:, -1], first_index=state.first_index))
                    self._weights(group, group.step(tracing=state.tracing))
                    w = self.weights[id(group)]
                weight = self._weight(w, name, heads.dtype, layer)  # [B, Hkv, 1]
                if out.requires_grad:
                    out = out.clone()
                    heads = slot.heads(out, layer.n_kv, layer.head_dim)
                current = heads.select(1, -1)
                record = state.tracing and self.session.record_deltas
                if not (record or out.requires_grad):
                    if wait:  # blended with the value, in the value hook
                        layer.pending = (current, weight)
                        self.waiting += 1
                        return out
                    todo.append((name, current, weight))
                    continue
                before = current.float() if record else None
                raw = current.clone() if self.config.previous == "raw" else None
                new = current.lerp_(layer.prev[name], weight)  # in place: heads is a view of the module output
                layer.prev[name] = new if raw is None else raw
                if record:
                    rec, key = group.record, ("dk" if name == "key" else "dv")
                    if key not in rec or rec[key].shape[1] != len(group.layers):
                        rec[key] = torch.zeros_like(group.lam)
                    rec[key][:, layer.slot] = (new.float() - before).norm(dim=-1)
            if layer.pending is not None and not wait:  # the value hook: the key noted by this layer's key hook
                todo.append(("key",) + layer.pending)
                layer.pending = None
                self.waiting -= 1
            if todo:
                self._blend(layer, todo)
            return out

        return hook

    def _smooth_prompt(self, layer, name: str, out, slot, heads):
        """smooth_prefill (scorers without attention rows): sequential EMA over the prompt."""
        t = heads.shape[1]
        valid = self.state.valid[:, -t:].to(heads.device)
        group = layer.group
        if layer.prefill_lam is None:  # coefficients once per prompt, shared by the key and value hooks
            if layer.scorer.needs_key and name != "key":
                raise SiteError(f"layer {layer.index}: the value projection ran before the key projection")
            lams = []
            for pos in range(t):
                layer.score(ScoreInputs(key=heads[:, pos], first_index=self.state.first_index))
                lams.append(group.step(valid=valid[:, pos], tracing=False)[:, layer.slot])
            layer.prefill_lam = lams
        if out.requires_grad:
            out = out.clone()
        mask = group.consts(heads.device)["kmask" if name == "key" else "vmask"][layer.slot]
        raw = self.config.previous == "raw"
        prev = heads[:, 0].clone() if raw else heads[:, 0]
        for pos in range(1, t):
            has_prev = valid[:, pos] & valid[:, pos - 1]
            lam = layer.prefill_lam[pos] * mask * has_prev[:, None]
            current = heads[:, pos].clone() if raw else None  # previous 'raw': the next position blends with this
            new = torch.lerp(heads[:, pos], prev, lam.unsqueeze(-1).to(prev.dtype))
            slot.heads(out, layer.n_kv, layer.head_dim)[:, pos] = new
            prev = current if raw else new
        layer.prev[name] = prev.clone()
        return out
