"""A config resolved for one model: dense per-layer x per-KV-head settings.

The session runs from a :class:`SmoothingPlan` only, so layer and head granularity, presets
and overrides all take one code path. Plans export to safetensors (tensors ``[L, H]`` plus the
config and the model identity in the metadata) and import back, refusing a model of another shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ConfigError, KVSmoothConfig, ScorerSpec
from .plan_file import PlanError, check_consistent, checked_fields

from .plan_file import TENSOR_FIELDS  # noqa: E402


def select_layers(spec, n_layers: int, where: str = "layers") -> list[int]:
    """Layer indices selected by ``'all'``, a slice string (``'3:-1'``) or a list of ints."""
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, str):
        parts = [int(p) if p else None for p in spec.split(":")]
        return list(range(n_layers))[slice(*parts)]  # may be empty: callers decide whether that is an error
    out = []
    for idx in spec:
        if not -n_layers <= idx < n_layers:
            raise PlanError(
                f"{where}: layer {idx} is out of range for this model's {n_layers} layers "
                f"(valid: 0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
            )
        out.append(idx % n_layers)
    return out


@dataclass
class SmoothingPlan:
    """Dense plan. Tensors are ``[L, H]`` (L decoder layers, H KV heads) on CPU.

    enabled / key / value: bool; lambda_ref / clip: float32; window: int64.
    policy / scorer: one per layer (uniform over a layer's heads).
    """

    config: KVSmoothConfig
    identity: dict
    enabled: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    lambda_ref: torch.Tensor
    clip: torch.Tensor
    window: torch.Tensor
    policy: list[str] = field(default_factory=list)
    scorer: list[ScorerSpec] = field(default_factory=list)

    @property
    def site(self) -> str:
        return self.config.site

    @property
    def granularity(self) -> str:
        return self.config.granularity

    @property
    def n_layers(self) -> int:
        return self.enabled.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.enabled.shape[1]

    def active_layers(self) -> list[int]:
        """Layers with at least one enabled KV head and at least one target."""
        act = self.enabled & (self.key | self.value)
        return [i for i in range(self.n_layers) if bool(act[i].any())]

    def __eq__(self, other) -> bool:
        if not isinstance(other, SmoothingPlan):
            return NotImplemented
        return (
            self.config == other.config
            and self.identity == other.identity
            and all(torch.equal(getattr(self, f), getattr(other, f)) for f in TENSOR_FIELDS)
            and self.policy == other.policy
            and self.scorer == other.scorer
        )

    # ------------------------------------------------------------------ display
    def table(self) -> str:
        """Compact layers x heads table: one cell per KV head, ``K``/``V``/``KV`` + lambda_ref, ``.`` = off."""
        h = self.n_kv_heads
        head = f"{'layer':>5} | " + " ".join(f"h{j:<6}" for j in range(h)) + " | window policy scorer"
        lines = [
            f"site={self.site} granularity={self.granularity} smooth_prefill={self.config.smooth_prefill} "
            f"model={self.identity.get('class')} ({self.n_layers} layers x {h} KV heads)",
            head,
            "-" * len(head),
        ]
        for i in range(self.n_layers):
            cells = []
            for j in range(h):
                if not (self.enabled[i, j] and (self.key[i, j] or self.value[i, j])):
                    cells.append(f"{'.':<7}")
                    continue
                tgt = ("K" if self.key[i, j] else "") + ("V" if self.value[i, j] else "")
                cells.append(f"{tgt}{float(self.lambda_ref[i, j]):.2f}".ljust(7))
            active = bool((self.enabled[i] & (self.key[i] | self.value[i])).any())
            tail = f"{int(self.window[i].max()):>6} {self.policy[i]:<9} {self.scorer[i].name}" if active else ""
            lines.append(f"{i:>5} | " + " ".join(cells) + " | " + tail)
        return "\n".join(lines)

    # ------------------------------------------------------------------ export
    def save(self, path: str | Path) -> Path:
        """Write the plan to safetensors; metadata holds the config and model identity as JSON."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {f: getattr(self, f).contiguous() for f in TENSOR_FIELDS}
        tensors = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in tensors.items()}
        meta = {
            "format": "kvsmooth_hooks.core.plan/1",
            "config": self.config.to_json(),
            "identity": json.dumps(self.identity, sort_keys=True),
            "policy": json.dumps(self.policy),
            "scorer": json.dumps([s.model_dump() for s in self.scorer]),
        }
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> "SmoothingPlan":
        """Read a plan; with ``model``, refuse it unless the model has the same shape."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file '{path}' does not exist")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise PlanError(f"plan file '{path}' is not a readable safetensors file ({exc})") from None
        if meta.get("format") != "kvsmooth_hooks.core.plan/1":
            raise PlanError(f"'{path}' is not a kvsmooth_hooks plan (metadata format={meta.get('format')!r})")
        plan = cls(**checked_fields(path, meta, tensors))
        check_consistent(path, plan, _resolved(plan.config, plan.n_layers, plan.n_kv_heads, plan.identity))
        if model is not None:
            plan.check_model(model)
        return plan

    def check_model(self, model) -> None:
        """Raise :class:`PlanError` if ``model`` differs in shape from the one this plan was made for."""
        from .adapters import get_adapter

        ident = get_adapter(model).identity()
        keys = ("n_layers", "n_heads", "n_kv_heads", "head_dim")
        mine = {k: self.identity.get(k) for k in keys}
        theirs = {k: ident[k] for k in keys}
        if mine != theirs:
            raise PlanError(
                f"this plan was made for {self.identity.get('class')} with {mine}, but the model "
                f"{ident['class']} has {theirs}; resolve the config against this model instead"
            )


def resolve(config: KVSmoothConfig, model) -> SmoothingPlan:
    """Resolve ``config`` against ``model`` (an HF model, or an :class:`~kvsmooth_hooks.core.adapters.Adapter`)."""
    from .adapters import Adapter, get_adapter

    adapter = model if isinstance(model, Adapter) else get_adapter(model)
    plan = _resolved(config, adapter.n_layers, adapter.n_kv_heads, adapter.identity())
    _only_smoothable(config, adapter, plan.enabled)
    return plan


def _resolved(config: KVSmoothConfig, n_layers: int, n_heads: int, identity: dict) -> SmoothingPlan:
    """``config`` as dense ``[n_layers, n_heads]`` settings, every layer taken as smoothable."""
    from .scorers import SCORERS

    shape = (n_layers, n_heads)

    enabled = torch.zeros(shape, dtype=torch.bool)
    enabled[select_layers(config.layers, n_layers)] = True
    key = torch.full(shape, "key" in config.targets)
    value = torch.full(shape, "value" in config.targets)
    lambda_ref = torch.full(shape, config.lambda_ref, dtype=torch.float32)
    clip = torch.full(shape, config.clip, dtype=torch.float32)
    window = torch.full(shape, config.window, dtype=torch.int64)
    policy = [config.policy] * n_layers
    scorer = [config.scorer] * n_layers

    for k, ov in enumerate(config.overrides):
        where = f"overrides[{k}]"
        rows = select_layers(ov.layers, n_layers, f"{where}.layers")
        if not rows:
            raise PlanError(
                f"{where}.layers: '{ov.layers}' selects no layer of this {n_layers}-layer model (valid indices "
                f"0..{n_layers - 1}, or -{n_layers}..-1 from the end); fix the slice or drop the override"
            )
        if ov.heads is not None:
            bad = [h for h in ov.heads if not 0 <= h < n_heads]
            if bad:
                raise PlanError(
                    f"{where}.heads: KV head {bad[0]} is out of range; this model has {n_heads} KV heads "
                    f"(valid: 0..{n_heads - 1})"
                )
            cols = list(ov.heads)
            for name in ("policy", "scorer", "window"):
                if getattr(ov, name) is None or (name == "window" and config.granularity == "head"):
                    continue
                fix = " or set granularity: head" if name == "window" else ""
                raise PlanError(
                    f"{where}.{name}: '{name}' cannot vary between the KV heads of a layer at granularity "
                    f"'{config.granularity}'; drop 'heads' from this override{fix}"
                )
        else:
            cols = list(range(n_heads))
        idx = (torch.tensor(rows)[:, None], torch.tensor(cols)[None, :])
        if ov.enabled is not None:
            enabled[idx] = ov.enabled
        if ov.targets is not None:
            key[idx] = "key" in ov.targets
            value[idx] = "value" in ov.targets
        for name, tensor in (("lambda_ref", lambda_ref), ("clip", clip), ("window", window)):
            val = getattr(ov, name)
            if val is not None:
                tensor[idx] = val
        for r in rows:
            if ov.policy is not None:
                policy[r] = ov.policy
            if ov.scorer is not None:
                scorer[r] = ov.scorer
    for r in range(n_layers):  # scorer parameters were validated with the config
        if SCORERS[scorer[r].name].fixed_coefficient:
            policy[r] = "fixed"
    return SmoothingPlan(
        config=config,
        identity=identity,
        enabled=enabled,
        key=key,
        value=value,
        lambda_ref=lambda_ref,
        clip=clip,
        window=window,
        policy=policy,
        scorer=scorer,
    )


def _only_smoothable(config: KVSmoothConfig, adapter, enabled: torch.Tensor) -> None:
    """Layers without a self-attention cache of their own (Mamba / linear-attention mixers, cross-attention,
    shared-KV layers) are never enabled: 'all' and slices skip them, an index that names one is an error."""
    n_layers = enabled.shape[0]
    smoothable = set(adapter.smoothable_layers())
    explicit = [("layers", config.layers)] + [(f"overrides[{k}].layers", ov.layers)
                                              for k, ov in enumerate(config.overrides) if ov.enabled is not False]
    for where, spec in explicit:
        if isinstance(spec, list):
            bad = [i % n_layers for i in spec if -n_layers <= i < n_layers and i % n_layers not in smoothable]
            if bad:
                raise PlanError(f"{where}: {adapter.describe_layer(bad[0])}; smoothable layers: {sorted(smoothable)}")
    enabled[[i for i in range(n_layers) if i not in smoothable]] = False


__all__ = ["SmoothingPlan", "PlanError", "resolve", "select_layers", "ConfigError"]
