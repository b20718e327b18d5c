"""Site ``attn_out``: smooth each selected layer's attention output instead of its keys and values.

The paper's ablation (KVSmooth, arXiv 2602.04268, ablation table: "smoothing o_t", C_S 33.8 / F1 74.7 on
LLaVA-1.5) applies the same EMA to the attention output of a layer: at a decode step the new token's
output ``o_t [B, hidden]`` (the attention module's output, after the output projection) becomes

    ô_t = (1 - λ_t) o_t + λ_t ô_{t-1}        (previous: smoothed, the default: an EMA of the outputs)
    ô_t = (1 - λ_t) o_t + λ_t o_{t-1}        (previous: raw)

where ``ô_{t-1}`` / ``o_{t-1}`` is the same layer's output at the previous step (at the first decode step: the
output at the last prompt position, never smoothed). The output projection is linear, so blending after it
equals blending the per-head outputs before it with one coefficient per layer: this site has one λ per layer
(granularity ``layer``; per-head overrides are refused). λ comes from the same window / rank / clip as at the
other sites, from the new token's own attention row, so every layer's coefficient is computed inside its own
hook (``immediate``) and decode rows are not batched across layers (``batch_rows = False``).

Unlike the ``cache`` site the blend changes what the *current* token passes on through the residual stream;
the KV cache itself is never edited.
"""

from __future__ import annotations

import torch

from ..scorers import ScoreInputs
from .base import DECODE, Site, SiteError, register_site


@register_site("attn_out")
class AttnOutSite(Site):
    batch_rows = False

    @classmethod
    def check(cls, config, needs_row: bool) -> None:
        if config.granularity != "layer":
            raise SiteError("site 'attn_out' blends a layer's whole attention output with one coefficient per layer: "
                            "set granularity: layer")
        if config.smooth_prefill:
            raise SiteError("site 'attn_out' smooths decode steps only: set smooth_prefill: false")
        if sorted(config.targets) != ["key", "value"] or any(o.targets for o in config.overrides):
            raise SiteError("site 'attn_out' smooths the attention output, not keys or values: leave `targets` at its "
                            "default ['key', 'value'] (at the top level and in overrides)")

    def immediate(self, layer) -> bool:
        return True

    def register(self) -> list:
        plan = self.session.plan
        for i, layer in self.state.layers.items():
            if layer.scorer.needs_key:
                raise SiteError(f"site 'attn_out' has no key to give scorer '{layer.scorer.name}' (layer {i}); "
                                "use a row scorer (row_entropy, ...) or constant / random")
            for name in ("enabled", "lambda_ref", "clip", "window"):
                row = getattr(plan, name)[i]
                if not bool((row == row[0]).all()):
                    raise SiteError(f"site 'attn_out' has one coefficient per layer, but layer {i}'s {name} differs "
                                    "between KV heads (an override with `heads`): drop the per-head override")
        return [layer.attn.register_forward_hook(self._hook(layer)) for layer in self.state.layers.values()]

    def on_row(self, layer, kind, row_fn) -> None:
        if kind == DECODE:
            layer.score(ScoreInputs(row=row_fn()[:, :, -1], first_index=self.state.first_index))

    def _hook(self, layer):
        state = self.state

        def hook(module, args, output):
            kind = self.session.kind
            if kind is None:
                return None
            out = output[0] if isinstance(output, tuple) else output  # [B, T, hidden]
            if kind != DECODE or layer.prev.get("out") is None:  # prompt (or a run's first step mid-stream): remember
                layer.prev["out"] = out[:, -1].detach().clone()
                return None
            if not layer.scorer.needs_row:
                layer.score(ScoreInputs(first_index=state.first_index))
            lam = layer.group.step(tracing=state.tracing)  # [B, 1, H]: one value per layer (heads are uniform)
            w = lam[:, 0, :1].to(out.dtype)  # [B, 1]
            current = out[:, -1]
            raw = current.detach().clone() if self.config.previous == "raw" else None
            if out.requires_grad and torch.is_grad_enabled():  # out of place, so autograd sees the blend
                new = torch.lerp(current, layer.prev["out"], w)
                layer.prev["out"] = new.detach() if raw is None else raw
                out = torch.cat([out[:, :-1], new[:, None]], 1)
                return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out
            with torch.no_grad():
                current.lerp_(layer.prev["out"], w)
            layer.prev["out"] = current.clone() if raw is None else raw
            return None

        return hook
