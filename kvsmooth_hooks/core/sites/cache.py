"""Site ``cache``: edit the newest cache entry after the attention ran (the paper's formulation).

Reading the cache: with Hugging Face caches (``adapter.cache_at_end``) every smoothed layer's ``[B, Hkv, T, D]``
keys / values are read from the cache the decoder received when its forward is done: no hook per layer. Each
decode step checks that every layer's entries were rewritten during the step (a dynamic cache layer holds a new
tensor after every step), so a layer whose attention wrote some other cache raises instead of being skipped.
Adapters whose attention modules each receive their own cache object (TransformerLens) get one forward hook per
smoothed attention module that finds the cache in the module's arguments.

At the end of a decode forward, per coefficient group: stack the layers' scores, push windows, rank, clip ->
``lam [B, La, H]``, and one ``torch._foreach_lerp_`` rewrites position -1 of every layer's keys and values from
position -2 (``K[-1] <- (1 - lam) K[-1] + lam K[-2]``). A static cache (``cache_implementation="static"``:
``[B, H, max_cache_len, D]``) is edited at the absolute positions ``past`` and ``past - 1``; left padding keeps
every sequence's newest token at the same one.

``smooth_prefill``: the prompt positions are walked in order at the end of the prefill, like decode steps.
"""

from __future__ import annotations

import weakref

import torch

from ..groups import CoefficientGroup
from ..scorers import ScoreInputs
from .base import DECODE, PREFILL, Site, SiteError, register_site


@register_site("cache")
class CacheSite(Site):
    edits_cache = True

    def register(self) -> list:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cache, self.seen = None, {}  # seen: layer -> weak reference to its keys at the previous decode step
        layers = list(self.state.layers.values())
        self._indices = [layer.index for layer in layers]
        self._keyed = [layer for layer in layers if not layer.scorer.needs_row or layer.scorer.needs_key]
        # caches holding each KV head several times (Falcon's new decoder architecture): every copy is edited alike
        self.repeat = {layer.index: self.adapter.cache_head_repeat(layer.index) for layer in layers}
        if self.adapter.cache_at_end:
            return []
        return [layer.attn.register_forward_hook(self._hook(layer), with_kwargs=True) for layer in layers]

    def begin(self, kind, info) -> None:
        self.kv, self.cache = {}, info.cache
        if kind != DECODE or self.state.step == 0:  # a new run
            self.seen = {}
        # the newest entry and the one before it; the prompt's length (smooth_prefill) in a static cache
        self.pos = (info.past, info.past - 1) if info.static else (-1, -2)
        self.static_len = info.past + info.q_len if info.static else None
        if kind == PREFILL and self.config.smooth_prefill and info.past:
            raise SiteError(
                f"kvsmooth: smooth_prefill cannot smooth a prompt that continues a cache of {info.past} positions made "
                "before this generation (its earlier positions were never seen); start from an empty cache"
            )

    def _read(self, kind) -> None:
        """``cache_at_end``: every smoothed layer's entries from the decoder's cache, once the forward is done."""
        pairs = self.adapter.layers_kv(self.cache, self._indices)
        self.kv = dict(zip(self._indices, pairs))
        if kind == DECODE and self.static_len is None:
            seen = self.seen
            for i, (keys, _) in zip(self._indices, pairs):
                # the same tensor object as at the last step: never replaced. (Identity, not the data pointer: a beam
                # reorder frees the last step's storage, and the next step's may reuse its address.)
                last = seen.get(i)
                if last is not None and last() is keys:
                    raise SiteError(
                        f"kvsmooth: layer {i}'s entries in the cache the decoder received did not change during this "
                        "decode step: its attention wrote another cache object, which the 'cache' site cannot see; "
                        "use site 'kv_proj' for this model"
                    )
                seen[i] = weakref.ref(keys)
        for layer in self._keyed:
            self._observe(layer, kind, self.kv[layer.index][0])

    def _hook(self, layer):
        """Adapters without ``cache_at_end``: the layer's cache, found in its attention module's arguments."""
        adapter = self.adapter

        def hook(module, args, kwargs, output):
            kind = self.session.kind
            if kind is None:
                return None
            cache = adapter.find_cache(args, kwargs)
            if cache is None:
                return None
            keys, values = adapter.layer_kv(cache, layer.index)
            self.kv[layer.index] = (keys, values)
            self._observe(layer, kind, keys)
            return None

        return hook

    def _observe(self, layer, kind, keys: torch.Tensor) -> None:
        """Scorers that read keys (``keys [B, Hkv, T, D]``, this forward's cache) or nothing: prompt keys at the
        prefill, the newest key's score at a decode step (row scorers are scored from attention rows instead)."""
        scorer, state = layer.scorer, self.state
        if scorer.needs_row and not (kind == PREFILL and scorer.needs_key):  # nothing else to do per layer
            return
        with torch.no_grad():
            if self.repeat[layer.index] > 1:  # one copy of each KV head
                keys = keys[:, :: self.repeat[layer.index]]
            if scorer.needs_key and self.static_len is not None:  # the written positions of a static cache
                keys = keys[:, :, : self.static_len]
            if kind == PREFILL and scorer.needs_key:
                scorer.observe_prompt(layer.scorer_state, keys, state.valid[:, -keys.shape[2]:])
            elif kind == DECODE and not scorer.needs_row:
                if scorer.needs_key and state.step == 0 and state.mid_stream:  # the history it never saw
                    scorer.observe_prompt(layer.scorer_state, keys[:, :, :-1], state.valid[:, -keys.shape[2]:-1])
                layer.score(ScoreInputs(key=keys[:, :, -1] if scorer.needs_key else None,
                                        first_index=state.first_index))

    def on_row(self, layer, kind, row_fn) -> None:
        if kind == DECODE:
            layer.score(ScoreInputs(row=row_fn()[:, :, -1], first_index=self.state.first_index))
        elif kind == PREFILL and self.config.smooth_prefill:
            layer.stash = row_fn

    def end(self, kind) -> None:
        if self.adapter.cache_at_end and (kind == DECODE or (kind == PREFILL and (self._keyed or self.config.smooth_prefill))):
            self._read(kind)
        if kind == DECODE:
            for group in self.state.groups:
                lam = group.step(tracing=self.state.tracing)
                self._blend(group, lam, *self.pos, record=self.state.tracing and self.session.record_deltas)
        elif kind == PREFILL and self.config.smooth_prefill:
            self._smooth_prompt()
        self.kv, self.cache = {}, None

    def _tensors(self, group: CoefficientGroup, attr: int) -> list[torch.Tensor]:
        try:
            return [self.kv[layer.index][attr] for layer in group.layers]
        except KeyError as exc:
            raise SiteError(
                f"kvsmooth: layer {exc.args[0]}'s attention ran without a cache it could find in its arguments; "
                "the 'cache' site needs the model's cache to reach each attention module"
            ) from None

    def _blend(self, group: CoefficientGroup, lam: torch.Tensor, pos: int, prev: int, record: bool) -> None:
        """Blend cache position ``pos`` with ``prev`` for every layer of ``group``; lam ``[B, La, H]``."""
        first = self._tensors(group, 0)
        if first[0].shape[2] < 2:
            return
        if first[0].requires_grad and torch.is_grad_enabled():
            raise SiteError(
                "kvsmooth: the 'cache' site edits the cache in place, which autograd cannot differentiate through; "
                "run the forward under torch.no_grad() / torch.inference_mode(), or use site 'kv_proj' "
                "(it supports gradients)"
            )
        current, previous, weights, lam_ws = [], [], [], None
        with torch.no_grad():
            for name, attr, on, same, mask in (("dk", 0, group.smooth_key, group.key_is_lam, "kmask"),
                                               ("dv", 1, group.smooth_value, group.value_is_lam, "vmask")):
                if not on:
                    if record:
                        group.record[name] = torch.zeros_like(lam)
                    continue
                tensors = first if attr == 0 else self._tensors(group, 1)
                cur = [t.select(2, pos) for t in tensors]
                current.append(cur)
                if self.config.previous == "raw":  # K_{t-1} before its own blend (kept per layer), not K_hat_{t-1}
                    previous += _raw_previous(group, "key" if attr == 0 else "value", tensors, cur, prev)
                else:
                    previous += [t.select(2, prev) for t in tensors]
                if same:  # the target mask is the enabled mask: lambda itself, converted and split once for K and V
                    ws = lam_ws = _per_layer(lam, tensors, group, self.repeat) if lam_ws is None else lam_ws
                else:
                    ws = _per_layer(lam * group.consts(lam.device)[mask], tensors, group, self.repeat)
                weights += ws
            before = [torch.stack(cur, 1).float() for cur in current] if record else None
            if current:  # keys and values of every layer of the group: one fused op
                torch._foreach_lerp_([t for cur in current for t in cur], previous, weights)
            if record:
                names = [n for n, on in (("dk", group.smooth_key), ("dv", group.smooth_value)) if on]
                for name, cur, b in zip(names, current, before):
                    group.record[name] = (torch.stack(cur, 1).float() - b).norm(dim=-1)

    def _smooth_prompt(self) -> None:
        """smooth_prefill: walk the prompt positions in order, like decode steps."""
        state = self.state
        for group in state.groups:
            keys = self._tensors(group, 0)
            t = self.static_len or keys[0].shape[2]
            # sliding-window layers next to global ones hold other prompt positions
            if self.static_len is None and any(k.shape[2] != t for k in keys):
                raise SiteError(
                    "smooth_prefill at the cache site needs the smoothed layers' caches to hold the same prompt "
                    "positions, but sliding-window and global layers differ (Gemma 2/3 style): use site 'kv_proj', "
                    "or select only sliding or only global layers"
                )
            valid = state.valid[:, -t:].to(keys[0].device)
            for pos in range(t):
                for layer, k in zip(group.layers, keys):
                    row = None
                    if layer.stash is not None:
                        row = layer.stash(rows=slice(pos - t, pos - t + 1 if pos + 1 < t else None))[:, :, 0]
                    layer.score(ScoreInputs(row=row, key=k[:, :, pos] if layer.scorer.needs_key else None,
                                            first_index=state.first_index))
                real = valid[:, pos]
                has_prev = real & (valid[:, pos - 1] if pos > 0 else torch.zeros_like(real))
                lam = group.step(valid=real, tracing=False) * has_prev[:, None, None]
                if pos > 0:
                    self._blend(group, lam, pos, pos - 1, record=False)
            for layer in group.layers:
                layer.stash = None


def _raw_previous(group: CoefficientGroup, name: str, tensors: list, cur: list, prev: int) -> list[torch.Tensor]:
    """``previous: raw``: each layer's raw entry of the last step (the cache's position ``prev`` when none is kept: the
    raw last prompt entry, or the first position of a smoothed prompt), and keep this step's raw entries ``cur``."""
    out = []
    for layer, t, c in zip(group.layers, tensors, cur):
        kept = layer.prev[name]
        out.append(t.select(2, prev) if kept is None else kept)
        layer.prev[name] = c.clone()
    return out


def _per_layer(w: torch.Tensor, tensors: list[torch.Tensor], group: CoefficientGroup, repeat: dict) -> list[torch.Tensor]:
    """Weights ``w [B, La, H]`` as one ``[B, Hkv, 1]`` tensor per layer, in the cache's dtype (layers with fewer KV
    heads than H take their first ones; a cache holding each KV head ``r`` times gets each weight ``r`` times)."""
    ws = w.unsqueeze(-1).to(tensors[0].dtype).unbind(1)
    if group.mixed_heads:
        ws = [x if x.shape[1] == t.shape[1] else x[:, :t.shape[1]] for x, t in zip(ws, tensors)]
    r = [repeat.get(layer.index, 1) for layer in group.layers]
    if max(r) > 1:
        ws = [x.repeat_interleave(n, 1) if n > 1 else x for x, n in zip(ws, r)]
    return list(ws)
