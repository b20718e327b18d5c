"""Validation of plan files on load: every field is checked like a config, errors name the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError

from .config import MAX_WINDOW, ConfigError, KVSmoothConfig, Policy, ScorerSpec, format_validation_error
from .errors import UserError

TENSOR_FIELDS = ("enabled", "key", "value", "lambda_ref", "clip", "window")


class PlanError(UserError):
    """A config that does not fit the model (indices out of range, inconsistent overrides), or a bad plan file."""


def checked_fields(path: Path, meta: dict, tensors: dict) -> dict:
    """A plan file's fields, validated like a config (a plan can be edited by hand): errors name file and field."""
    def bad(field: str, msg: str) -> PlanError:
        return PlanError(f"plan file '{path}': {field}: {msg}; re-export the plan with SmoothingPlan.save")

    out: dict = {}
    for key in ("config", "identity", "policy", "scorer"):
        if key not in meta:
            raise bad(f"metadata '{key}'", "missing")
        try:
            out[key] = json.loads(meta[key])
        except ValueError as exc:
            raise bad(f"metadata '{key}'", f"not valid JSON ({exc})") from None
    try:
        out["config"] = KVSmoothConfig.from_dict(out["config"])
    except ConfigError as exc:
        raise bad("metadata 'config'", str(exc)) from None
    missing = [f for f in TENSOR_FIELDS if f not in tensors]
    if missing:
        raise bad(f"tensor '{missing[0]}'", "missing")
    shape = tensors["enabled"].shape
    for f in TENSOR_FIELDS:
        t = tensors[f]
        if t.dim() != 2 or t.shape != shape:
            raise bad(f"tensor '{f}'", f"shape {tuple(t.shape)}, expected [layers, KV heads] = {tuple(shape)}")
        if f in ("enabled", "key", "value"):
            if not bool(((t == 0) | (t == 1)).all()):
                raise bad(f"tensor '{f}'", "holds values other than 0/1")
            out[f] = t.to(torch.bool)
    checks = (("lambda_ref", 0.0, 1.0), ("clip", 0.0, float("inf")), ("window", 1, MAX_WINDOW))
    for f, lo, hi in checks:
        t = tensors[f].to(torch.float64)
        ok = torch.isfinite(t) & (t >= lo) & (t <= hi)
        if not bool(ok.all()):
            layer, head = (~ok).nonzero()[0].tolist()
            raise bad(f"tensor '{f}'[{layer}, {head}]", f"{tensors[f][layer, head].item()} is outside [{lo}, {hi}]")
    out["lambda_ref"] = tensors["lambda_ref"].to(torch.float32)
    out["clip"] = tensors["clip"].to(torch.float32)
    out["window"] = tensors["window"].to(torch.int64)
    n = shape[0]
    for key in ("policy", "scorer"):
        if not isinstance(out[key], list) or len(out[key]) != n:
            raise bad(f"metadata '{key}'", f"must be a list of {n} entries, one per layer")
    allowed = Policy.__args__
    for i, pol in enumerate(out["policy"]):
        if pol not in allowed:
            raise bad(f"metadata 'policy'[{i}]", f"{pol!r} is not one of {list(allowed)}")
    try:
        out["scorer"] = [ScorerSpec.model_validate(s) for s in out["scorer"]]
    except ValidationError as exc:
        raise bad("metadata 'scorer'", format_validation_error(exc).removeprefix("invalid config: ")) from None
    if not isinstance(out["identity"], dict):
        raise bad("metadata 'identity'", "must be a JSON object")
    return out
