"""``scorer`` in a config: a registered scorer's name and its parameters, validated by the scorer's own
:class:`~kvsmooth_hooks.core.scorers.ScorerParams` model, and the JSON Schema of that field."""

from __future__ import annotations

import json
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .scorers import SCORERS
from .scorers.base import params_error


class ScorerSpec(BaseModel):
    """A sink scorer by registry name, with its parameters (``{name: ..., <params>}`` in files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "row_entropy"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and "params" not in data:
            data = dict(data)
            name = data.pop("name", "row_entropy")
            return {"name": name, "params": data}
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SCORERS:
            raise ValueError(f"unknown scorer '{name}'; registered scorers: {sorted(SCORERS)}")
        return name

    @model_validator(mode="after")
    def _params(self) -> "ScorerSpec":
        try:
            SCORERS[self.name].Params.model_validate(self.params)  # the scorer's own parameter model
        except ValidationError as exc:
            raise ValueError(params_error(self.name, exc)) from None
        return self

    def dump(self) -> Union[str, dict]:
        """The form a person would write: a bare name when there are no parameters."""
        return self.name if not self.params else {"name": self.name, **self.params}

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.params, sort_keys=True, default=str)))


def scorer_schema() -> dict:
    """``scorer`` in files: a bare name, ``{name, params: {...}}``, or ``{name, <params>}``, per registered scorer."""
    variants: list[dict] = [{"type": "string", "enum": sorted(SCORERS), "description": "a scorer by name"}]
    for name, cls in sorted(SCORERS.items()):
        props = cls.Params.model_json_schema().get("properties", {})
        params = {"type": "object", "properties": props, "additionalProperties": False}
        for form in ({"name": {"const": name}, "params": params}, {"name": {"const": name}, **props}):
            variants.append({"type": "object", "title": f"scorer '{name}'", "properties": form,
                             "required": ["name"], "additionalProperties": False})
    return {"description": "A sink scorer by registry name, with its parameters", "anyOf": variants}
