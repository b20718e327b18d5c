"""Reading evaluation inputs (JSON lines / JSON lists) with precise error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

__all__ = ["EvalInputError", "read_records", "normalize_image_id"]


class EvalInputError(ValueError):
    """An evaluation input file is missing, malformed or lacks a field.

    The message names the file (and line for JSON lines) and says how to fix it.
    """


def normalize_image_id(value: Any) -> Any:
    """Image ids are compared as ints when they look like ints (``"42"`` == ``42``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if s.isdigit():
            return int(s)
        return s
    return value


def read_records(path: str | Path, required: Iterable[str] = (), what: str = "record") -> list[dict]:
    """Read a ``.jsonl`` file (one object per line) or a ``.json`` list of objects.

    Args:
        path: the file.
        required: fields every record must have; a missing one raises
            :class:`EvalInputError` naming the file, the line (or list index) and the field.
        what: noun used in messages ("caption", "answer", ...).
    """
    p = Path(path)
    if not p.is_file():
        raise EvalInputError(f"{p}: file not found")
    required = tuple(required)
    text = p.read_text(encoding="utf-8")
    records: list[tuple[str, Any]] = []
    stripped = text.lstrip()
    if p.suffix == ".json" or (stripped.startswith("[") and p.suffix != ".jsonl"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno}); expected a list of {what} objects") from None
        if isinstance(data, dict):
            # {"id": {...}} or {"results": [...]} are common; accept a list under a single key
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) == 1:
                data = lists[0]
        if not isinstance(data, list):
            raise EvalInputError(f"{p}: expected a JSON list of {what} objects (or a .jsonl file with one object per line)")
        records = [(f"item {i}", obj) for i, obj in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalInputError(f"{p}:{lineno}: not valid JSON ({exc.msg}); each line must be one {what} object") from None
            records.append((f"line {lineno}", obj))
    out: list[dict] = []
    for where, obj in records:
        if not isinstance(obj, dict):
            raise EvalInputError(f"{p} {where}: expected a JSON object, got {type(obj).__name__}")
        for field in required:
            if field not in obj:
                raise EvalInputError(
                    f"{p} {where}: missing field {field!r} (fields present: {', '.join(sorted(obj)) or 'none'}); "
                    f"every {what} needs {', '.join(repr(f) for f in required)}"
                )
        out.append(obj)
    return out


def check_run_settings(out: str | Path, settings: dict, legacy_marker: str | None = None) -> None:
    """Guard a resumable output directory: its ``settings.json`` must equal ``settings``.

    The first run writes the file; a rerun with other settings raises :class:`EvalInputError` naming the
    fields that differ (resuming would otherwise mix samples of two runs). ``toolkit_version`` entries (at any
    depth, e.g. inside a config) are informational and not compared, so a package upgrade can resume a run.
    ``legacy_marker``: a file whose
    presence without ``settings.json`` means a run from before the guard existed (accepted as is).
    """
    import json

    out = Path(out)
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        old_cmp, new_cmp = _without_version(old), _without_version(json.loads(json.dumps(settings)))
        diff = sorted(k for k in set(old_cmp) | set(new_cmp) if old_cmp.get(k) != new_cmp.get(k))
        if diff:
            raise EvalInputError(f"{path}: this output directory holds a run with a different {', '.join(diff)}; "
                                 "use another output directory (or delete this one) to start a new run")
    elif legacy_marker is None or not (out / legacy_marker).exists():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def _without_version(obj):
    """``obj`` with every ``toolkit_version`` key dropped (nested dicts and lists included)."""
    if isinstance(obj, dict):
        return {k: _without_version(v) for k, v in obj.items() if k != "toolkit_version"}
    if isinstance(obj, list):
        return [_without_version(v) for v in obj]
    return obj
