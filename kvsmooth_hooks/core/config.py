"""The smoothing configuration: one validated schema (version 1), presets, file I/O.

A :class:`KVSmoothConfig` says *what* to smooth and *how*, independently of any model.
:func:`kvsmooth_hooks.core.plan.resolve` turns it into a dense per-layer x per-KV-head plan for one
model; the session runs from that plan.

Defaults are the paper's (KVSmooth, arXiv 2602.04268, Sec. 4 / Table 5): layers 3..L-2,
``lambda_ref`` 0.9, window M = 15, clip 0.2, keys and values, row-entropy sink score, FIFO
percentile-rank policy, cache site, prompt tokens untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._version import __version__
from .fileio import FileFormatError, read_data
from .errors import UserError
from .registry import site_names
from .scorer_spec import ScorerSpec, scorer_schema

SCHEMA_VERSION = 1
#: largest sink window ``M`` accepted (the paper uses 15; the window costs ``B x layers x units x M`` floats)
MAX_WINDOW = 4096
Target = Literal["key", "value"]
Granularity = Literal["layer", "head"]
Policy = Literal["fifo_rank", "fixed", "linear"]

_SLICE_RE = re.compile(r"^\s*(-?\d+)?\s*:\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?$")


class ConfigError(UserError):
    """A configuration that cannot be used; the message names the field path and the fix."""


def _check_layers(value: Any) -> Any:
    if value == "all" or value is None:
        return value
    if isinstance(value, str):
        m = _SLICE_RE.match(value)
        if not m:
            raise ValueError(
                f"'{value}' is not a layer selection; use 'all', a Python-style slice such as "
                "'3:-1' (negatives count from the end), or a list of layer indices"
            )
        if m.group(3) is not None and int(m.group(3)) == 0:
            raise ValueError(f"slice '{value}' has step 0")
        return value.replace(" ", "")
    if isinstance(value, list):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise ValueError("a layer list must contain integers only")
        return value
    raise ValueError("layers must be 'all', a slice string such as '3:-1', or a list of ints")


class _Fields(BaseModel):
    """Per-layer fields shared by the top level and by overrides."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("layers", mode="before", check_fields=False)
    @classmethod
    def _layers(cls, v):
        return _check_layers(v)

    @field_validator("lambda_ref", "clip", mode="before", check_fields=False)
    @classmethod
    def _no_bool(cls, v):
        if isinstance(v, bool):
            raise ValueError("must be a number, not true/false")
        return v

    @field_validator("targets", check_fields=False)
    @classmethod
    def _targets(cls, v):
        if v is not None:
            if len(v) == 0:
                raise ValueError("targets must be a non-empty subset of ['key', 'value']")
            if len(set(v)) != len(v):
                raise ValueError("targets lists a target twice; use a subset of ['key', 'value']")
        return v


class Override(_Fields):
    """Changes applied to some layers (and KV heads); later overrides win."""

    layers: Union[str, list[int]] = "all"
    heads: list[int] | None = Field(default=None, description="KV-head indices; omitted = all heads")
    enabled: bool | None = None
    targets: list[Target] | None = None
    lambda_ref: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    window: int | None = Field(default=None, ge=1, le=MAX_WINDOW, strict=True)
    clip: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    policy: Policy | None = None
    scorer: ScorerSpec | None = None

    @field_validator("heads")
    @classmethod
    def _heads(cls, v):
        if v is not None and len(v) == 0:
            raise ValueError("heads must be a non-empty list of KV-head indices, or omitted for all heads")
        return v


class KVSmoothConfig(_Fields):
    """Validated KVSmooth configuration (schema version 1). Every field defaults to the paper.

    Example::

        cfg = KVSmoothConfig(lambda_ref=0.9)
        cfg = KVSmoothConfig.preset("llava-1.5")
        cfg = KVSmoothConfig.from_file("run.yaml")
    """

    version: Literal[1] = SCHEMA_VERSION
    toolkit_version: str | None = Field(
        default=None, description="kvsmooth_hooks version that wrote the file (informational)"
    )
    site: str = Field("cache", description="a registered site (kvsmooth_hooks/core/sites/): cache edits the KV cache "
                      "after attention; kv_proj hooks the key/value projections")
    targets: list[Target] = Field(default_factory=lambda: ["key", "value"])
    granularity: Granularity = "layer"
    smooth_prefill: bool = False
    scorer: ScorerSpec = Field(default_factory=ScorerSpec)
    policy: Policy = "fifo_rank"
    lambda_ref: float = Field(0.9, ge=0.0, le=1.0, allow_inf_nan=False)
    window: int = Field(15, ge=1, le=MAX_WINDOW, strict=True,
                        description=f"sink window M (1..{MAX_WINDOW}; the paper uses 15)")
    clip: float = Field(0.2, ge=0.0, allow_inf_nan=False)
    layers: Union[str, list[int]] = "3:-1"
    overrides: list[Override] = Field(default_factory=list)

    @field_validator("site")
    @classmethod
    def _known_site(cls, v: str) -> str:
        if v not in site_names():
            raise ValueError(f"unknown site '{v}'; registered sites: {list(site_names())}")
        return v

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **changes: Any) -> "KVSmoothConfig":
        """A named preset (see :data:`PRESETS`), optionally with fields changed."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; available presets: {sorted(PRESETS)}")
        return cls.model_validate({**PRESETS[name], **changes})

    @classmethod
    def from_source(cls, config: str | Path | None = None, preset: str | None = None,
                    default: dict | None = None) -> "KVSmoothConfig":
        """The config a command line names: a file if given, else a preset, else ``default`` (or the paper's)."""
        if config is not None and preset is not None:
            raise ConfigError("give either a config file or a preset, not both")
        if config is not None:
            return cls.from_file(config)
        if preset is not None:
            return cls.preset(preset)
        return cls.from_dict(dict(default or {}))

    def updated(self, **changes: Any) -> "KVSmoothConfig":
        """A validated copy with ``changes`` applied (errors name the field, as for files)."""
        return type(self).from_dict({**self.model_dump(exclude={"toolkit_version"}), **changes})

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: dict) -> "KVSmoothConfig":
        """Validate a plain mapping; raises :class:`ConfigError` naming every bad field."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> "KVSmoothConfig":
        """Load a ``.yaml``/``.yml`` or ``.json`` file (safe loaders only)."""
        path = Path(path)
        try:
            data = read_data(path, "config")  # safe loaders; duplicate keys, encoding and depth refused
        except FileFormatError as exc:
            raise ConfigError(str(exc)) from None
        try:
            return cls.from_dict(data if data is not None else {})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict:
        """Every field explicitly (self-describing), scorers in their short form."""
        data = self.model_dump(mode="json")
        data["toolkit_version"] = __version__
        data["scorer"] = self.scorer.dump()
        for ov, raw in zip(self.overrides, data["overrides"]):
            for key in list(raw):
                if raw[key] is None:
                    del raw[key]
            if ov.scorer is not None:
                raw["scorer"] = ov.scorer.dump()
        return data

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> Path:
        """Write YAML or JSON, chosen by the suffix."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            path.write_text(self.to_yaml())
        elif suffix == ".json":
            path.write_text(self.to_json() + "\n")
        else:
            raise ConfigError(f"cannot save config to '{path}': use a .yaml, .yml or .json suffix")
        return path

    def __eq__(self, other: object) -> bool:  # toolkit_version is informational only
        if not isinstance(other, KVSmoothConfig):
            return NotImplemented
        a, b = self.model_dump(), other.model_dump()
        a.pop("toolkit_version"), b.pop("toolkit_version")
        return a == b

    @staticmethod
    def json_schema() -> dict:
        """The published JSON Schema of this file format; ``scorer`` lists every registered scorer's parameters."""
        schema = KVSmoothConfig.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = "KVSmoothConfig (kvsmooth_hooks schema version 1)"
        schema["$defs"]["ScorerSpec"] = scorer_schema()
        schema["properties"]["site"]["enum"] = list(site_names())
        return schema


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "<root>"
        loc = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; see `kvsmooth config schema` for the allowed fields"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = err.get("input")
        tail = "" if err["type"] in ("missing",) or isinstance(got, (dict, list)) else f" (got {got!r})"
        lines.append(f"{loc}: {msg}{tail}")
    return "invalid config: " + "; ".join(lines)


_PAPER = dict(
    site="cache",
    targets=["key", "value"],
    granularity="layer",
    smooth_prefill=False,
    scorer="row_entropy",
    policy="fifo_rank",
    window=15,
    clip=0.2,
    layers="3:-1",
)

#: Named presets. The paper's three MLLM settings (lambda_ref per model, KVSmooth Sec. 4.1) and
#: ``off``: hooks registered but lambda = 0, the control arm of every ablation.
PRESETS: dict[str, dict] = {
    "llava-1.5": {**_PAPER, "lambda_ref": 0.9},
    "minigpt-4": {**_PAPER, "lambda_ref": 0.5},
    "instructblip": {**_PAPER, "lambda_ref": 0.7},
    "off": {**_PAPER, "policy": "fixed", "lambda_ref": 0.0, "clip": 0.0},
}
