"""Site ``cache``: edit the newest cache entry after the attention ran (the paper's formulation).

Hooks: one forward hook per smoothed layer's attention module. It finds the cache in the module's
arguments (through the adapter) and keeps that layer's ``[B, Hkv, T, D]`` keys / values for the end of
the forward. At the end of a decode forward, per coefficient group: stack the layers' scores, push
windows, rank, clip -> ``lam [B, La, H]``, and one ``torch._foreach_lerp_`` rewrites position -1 of
every layer's keys / values from position -2 (``K[-1] <- (1 - lam) K[-1] + lam K[-2]``).

``smooth_prefill``: the prompt positions are walked in order at the end of the prefill, like decode steps.
"""

from __future__ import annotations

import torch

from ..groups import CoefficientGroup
from ..scorers import ScoreInputs
from .base import DECODE, PREFILL, Site, SiteError, register_site


@register_site("cache")
class CacheSite(Site):
    def register(self) -> list:
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        return [layer.attn.register_forward_hook(self._hook(layer), with_kwargs=True)
                for layer in self.state.layers.values()]

    def begin(self, kind, info) -> None:
        self.kv = {}
        if kind == PREFILL and self.config.smooth_prefill and info.past:
            raise SiteError(
                f"kvsmooth: smooth_prefill cannot smooth a prompt that continues a cache of {info.past} positions made "
                "before this generation (its earlier positions were never seen); start from an empty cache"
            )

    def _hook(self, layer):
        adapter, state = self.adapter, self.state

        def hook(module, args, kwargs, output):
            kind = self.session.kind
            if kind is None:
                return None
            cache = adapter.find_cache(args, kwargs)
            if cache is None:
                return None
            keys, values = adapter.layer_kv(cache, layer.index)
            self.kv[layer.index] = (keys, values)
            scorer = layer.scorer
            with torch.no_grad():
                if kind == PREFILL and scorer.needs_key:
                    scorer.observe_prompt(layer.scorer_state, keys, state.valid[:, -keys.shape[2]:])
                elif kind == DECODE and not scorer.needs_row:
                    if scorer.needs_key and state.step == 0 and state.mid_stream:  # the history it never saw
                        scorer.observe_prompt(layer.scorer_state, keys[:, :, :-1], state.valid[:, -keys.shape[2]:-1])
                    layer.score(ScoreInputs(key=keys[:, :, -1] if scorer.needs_key else None,
                                            first_index=state.first_index))
            return None

        return hook

    def on_row(self, layer, kind, row_fn) -> None:
        if kind == DECODE:
            layer.score(ScoreInputs(row=row_fn()[:, :, -1], first_index=self.state.first_index))
        elif kind == PREFILL and self.config.smooth_prefill:
            layer.stash = row_fn

    def end(self, kind) -> None:
        if kind == DECODE:
            for group in self.state.groups:
                lam = group.step(tracing=self.state.tracing)
                self._blend(group, lam, -1, -2, record=self.state.tracing and self.session.record_deltas)
        elif kind == PREFILL and self.config.smooth_prefill:
            self._smooth_prompt()
        self.kv = {}

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
        c = group.consts(lam.device)
        with torch.no_grad():
            for name, attr, on, mask in (("dk", 0, group.smooth_key, "kmask"), ("dv", 1, group.smooth_value, "vmask")):
                if not on:
                    if record:
                        group.record[name] = torch.zeros_like(lam)
                    continue
                tensors = first if attr == 0 else self._tensors(group, 1)
                current = [t[:, :, pos] for t in tensors]
                weights = (lam * c[mask]).unsqueeze(-1).to(tensors[0].dtype)
                before = torch.stack(current, 1).float() if record else None
                ws = [w if w.shape[1] == x.shape[1] else w[:, :x.shape[1]]  # layers with fewer KV heads than H
                      for w, x in zip(weights.unbind(1), current)]
                torch._foreach_lerp_(current, [t[:, :, prev] for t in tensors], ws)
                if before is not None:
                    group.record[name] = (torch.stack(current, 1).float() - before).norm(dim=-1)

    def _smooth_prompt(self) -> None:
        """smooth_prefill: walk the prompt positions in order, like decode steps."""
        state = self.state
        for group in state.groups:
            keys = self._tensors(group, 0)
            t = keys[0].shape[2]
            if any(k.shape[2] != t for k in keys):  # sliding-window layers next to global ones
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
