"""Reading user files as plain data: YAML / JSON with safe loaders only, and errors that name the file.

Duplicate mapping keys, bad encodings, and nesting too deep to parse are refused with a
:class:`FileFormatError` (a ``ValueError``) that says which file and what to fix; nothing is silently
dropped or guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError

#: deepest nesting accepted in a config file (the schema itself is 4 levels deep)
MAX_DEPTH = 32


class FileFormatError(UserError):
    """A file that cannot be read as the data it should hold."""


def _yaml_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""

        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}); keep only one",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _json_no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}; keep only one")
        out[key] = value
    return out


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, dict):
        return max([_depth(v, level + 1) for v in obj.values()], default=level + 1)
    if isinstance(obj, list):
        return max([_depth(v, level + 1) for v in obj], default=level + 1)
    return level


def parse_text(text: str, kind: str, where: str) -> Any:
    """Parse ``text`` as ``kind`` ('yaml' or 'json'); ``where`` names the source in errors."""
    import yaml

    try:
        if kind == "json":
            data = json.loads(text, object_pairs_hook=_json_no_duplicates)
        else:
            data = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass: no arbitrary objects
    except RecursionError:
        raise FileFormatError(f"{where}: nested too deeply to read (at most {MAX_DEPTH} levels)") from None
    except (ValueError, yaml.YAMLError) as exc:
        first = " ".join(str(exc).strip().split("\n")[:3])
        raise FileFormatError(f"{where} is not valid {kind.upper()}: {first}") from None
    if _depth(data) > MAX_DEPTH:
        raise FileFormatError(f"{where}: nested too deeply (more than {MAX_DEPTH} levels); this is not a config")
    return data


def read_data(path: str | Path, what: str = "config") -> Any:
    """The data in a ``.yaml`` / ``.yml`` / ``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{what} file '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise FileFormatError(f"{what} file '{path}': unknown suffix '{suffix}'; use .yaml, .yml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{what} file '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return parse_text(text, "json" if suffix == ".json" else "yaml", f"{what} file '{path}'")
