"""Reading evaluation inputs: one reader for every file the metrics take, with precise error messages.

Files are recognised by their *content*, not their suffix: the POPE question files are JSON Lines named
``.json``, AMBER responses are a JSON list, LLaVA / OPERA captions are JSON Lines.  ``read_records``
accepts

* JSON Lines (one object per line, blank lines ignored),
* a JSON list of objects,
* a JSON object holding exactly one list of objects (``{"results": [...]}``).

Every record remembers where it came from (``path:line N``), so a bad field is reported as
``FILE:LINE: field 'text' must be a string, got null``.  :class:`EvalInputError` is the one error type;
the CLI prints it as one line and exits with status 2.

Also here: id normalisation (:func:`normalize_image_id`, :func:`record_id`), string fields
(:func:`record_text`), one-record-per-key indexing with duplicate / conflict handling
(:func:`index_records`). The runner's own output (resumable records, settings guard) is
:mod:`kvsmooth_hooks.runner.store`.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping

from ..core.errors import UserError

__all__ = [
    "EvalInputError",
    "EvalInputWarning",
    "Records",
    "read_records",
    "as_records",
    "normalize_image_id",
    "record_id",
    "record_text",
    "index_records",
    "coco_image_id",
    "read_captions",
    "read_json",
    "DUPLICATE_POLICIES",
]

DUPLICATE_POLICIES = ("error", "warn")


class EvalInputError(UserError):
    """An evaluation input file is missing, malformed or lacks a field.

    The message is one line that names the file (and line) and the field, and says how to fix it.
    """


class EvalInputWarning(UserWarning):
    """A tolerated input problem (duplicates with ``on_duplicate="warn"``)."""


class Records(list):
    """A list of record dicts that knows where each one came from.

    ``where(i)`` is ``"FILE:LINE"`` for records read from a file, ``"<source> record N"`` otherwise.
    """

    def __init__(self, items: Iterable[dict] = (), locations: Iterable[str] | None = None, source: str = "input"):
        super().__init__(items)
        self.source = source
        self.locations = list(locations) if locations is not None else [f"{source} record {i + 1}" for i in range(len(self))]

    def where(self, i: int) -> str:
        return self.locations[i]


def normalize_image_id(value: Any) -> Any:
    """Image ids are compared as ints when they look like ints (``"42"`` == ``42`` == ``42.0``)."""
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


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _parse_json_list(text: str, start: int, p: Path) -> tuple[list[Any], list[int]]:
    """Parse the JSON list starting at ``text[start] == "["`` element by element (to keep line numbers)."""
    dec = json.JSONDecoder()
    items, lines = [], []
    i = start + 1
    n = len(text)

    def skip_ws(j):
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    i = skip_ws(i)
    if i < n and text[i] == "]":
        i += 1
    else:
        while True:
            try:
                obj, end = dec.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                raise EvalInputError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg}); expected a JSON list of objects "
                                     "or one JSON object per line") from None
            items.append(obj)
            lines.append(_line_of(text, i))
            i = skip_ws(end)
            if i < n and text[i] == ",":
                i = skip_ws(i + 1)
                continue
            if i < n and text[i] == "]":
                i += 1
                break
            raise EvalInputError(f"{p}:{_line_of(text, i)}: not valid JSON (expected ',' or ']' in the list)")
    if skip_ws(i) != n:
        raise EvalInputError(f"{p}:{_line_of(text, skip_ws(i))}: not valid JSON (extra data after the list)")
    return items, lines


def _read_text(p: Path) -> str:
    if not p.exists():
        raise EvalInputError(f"{p}: file not found")
    if not p.is_file():
        raise EvalInputError(f"{p}: is a directory, expected a file")
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise EvalInputError(f"{p}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                             "save the file as UTF-8") from None


def read_records(path: str | Path, required: Iterable[str] = (), what: str = "record",
                 allow_empty: bool = False) -> Records:
    """Read a file of JSON records, recognising JSON Lines or a JSON list by content.

    Args:
        path: the file (any suffix).
        required: fields every record must have; a missing one raises :class:`EvalInputError` naming the
            file, the line and the field.
        what: noun used in messages ("caption", "POPE answer", ...).
        allow_empty: return an empty list for a file without records instead of raising.

    Returns:
        :class:`Records` (a list of dicts with ``where(i)`` → ``"FILE:LINE"``).
    """
    p = Path(path)
    text = _read_text(p)
    required = tuple(required)
    stripped = text.lstrip()
    objs: list[Any] = []
    lines: list[int] = []
    if stripped.startswith("["):
        objs, lines = _parse_json_list(text, len(text) - len(stripped), p)
    elif stripped.startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON Lines (or broken): read line by line below
        lists = [k for k, v in whole.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)] \
            if isinstance(whole, dict) and not (required and all(f in whole for f in required)) else []
        if len(lists) == 1:  # {"results": [{...}, ...]}: the records are that list (no line numbers)
            objs = whole[lists[0]]
            lines = [None] * len(objs)
        else:
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvalInputError(f"{p}:{lineno}: not valid JSON ({exc.msg}); each line must be one {what} "
                                         "object (JSON Lines), or the whole file one JSON list") from None
                objs.append(obj)
                lines.append(lineno)
    elif stripped:
        raise EvalInputError(f"{p}:{_line_of(text, len(text) - len(stripped))}: not JSON; expected JSON Lines "
                             f"(one {what} object per line) or a JSON list of {what} objects")
    if not objs and not allow_empty:
        raise EvalInputError(f"{p}: no {what} records (empty file); nothing to score")
    locations = [f"{p}:{ln}" if ln is not None else f"{p} item {i + 1}" for i, ln in enumerate(lines)]
    out = Records(source=str(p))
    for obj, where in zip(objs, locations):
        if not isinstance(obj, dict):
            raise EvalInputError(f"{where}: expected a JSON object ({what}), got {type(obj).__name__}")
        for f in required:
            if f not in obj:
                raise EvalInputError(
                    f"{where}: missing field {f!r} (fields present: {', '.join(sorted(obj)) or 'none'}); "
                    f"every {what} needs {', '.join(repr(x) for x in required)}")
        out.append(obj)
    out.locations = locations
    return out


def as_records(source: str | Path | Iterable[Mapping[str, Any]], required: Iterable[str] = (),
               what: str = "record", allow_empty: bool = False) -> Records:
    """A file (read with :func:`read_records`) or an in-memory iterable of dicts, as :class:`Records`."""
    if isinstance(source, (str, Path)):
        return read_records(source, required=required, what=what, allow_empty=allow_empty)
    if isinstance(source, Records):
        recs = source
    else:
        recs = Records([dict(r) if isinstance(r, Mapping) and not isinstance(r, dict) else r for r in source],
                       source=what)
    if not recs and not allow_empty:
        raise EvalInputError(f"no {what} records given; nothing to score")
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise EvalInputError(f"{recs.where(i)}: expected a mapping ({what}), got {type(r).__name__}")
        for f in required:
            if f not in r:
                raise EvalInputError(f"{recs.where(i)}: missing field {f!r}; every {what} needs "
                                     f"{', '.join(repr(x) for x in required)}")
    return recs


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def record_text(rec: Mapping[str, Any], key: str, where: str, allow_none: bool = False) -> str:
    """``rec[key]`` as a string; a missing / non-string value raises naming ``where`` and ``key``."""
    if key not in rec:
        raise EvalInputError(f"{where}: missing field {key!r}")
    v = rec[key]
    if v is None and allow_none:
        return ""
    if not isinstance(v, str):
        raise EvalInputError(f"{where}: field {key!r} must be a string, got {_type_name(v)} {json.dumps(v)[:40]}")
    return v


def record_id(rec: Mapping[str, Any], key: str, where: str, integer: bool = True) -> Any:
    """``rec[key]`` as an id: an int (``7``, ``"7"``, ``7.0``) or, with ``integer=False``, also a string.

    ``1.7``, ``true``, ``null``, lists and (with ``integer=True``) non-numeric strings raise naming
    ``where`` and ``key``.
    """
    if key not in rec:
        raise EvalInputError(f"{where}: missing field {key!r}")
    v = rec[key]
    bad = isinstance(v, bool) or v is None or isinstance(v, (list, dict)) or \
        (isinstance(v, float) and not v.is_integer())
    if not bad:
        v2 = normalize_image_id(v)
        if isinstance(v2, int) or (not integer and isinstance(v2, str) and v2):
            return v2
    kind = "an integer" if integer else "an integer or a non-empty string"
    raise EvalInputError(f"{where}: field {key!r} must be {kind}, got {_type_name(v)} {json.dumps(v)[:40]}")


def index_records(
    recs: Records,
    key_of: Callable[[int, dict], Hashable],
    value_of: Callable[[int, dict], Any],
    what: str,
    key_name: str,
    on_duplicate: str = "error",
) -> dict[Hashable, tuple[Any, str]]:
    """``{key: (value, where)}`` with one record per key.

    A repeated key is an error (``on_duplicate="error"``, the default); with ``"warn"`` the first record
    is kept and an :class:`EvalInputWarning` names the repeats (identical repeats and conflicting ones
    separately).
    """
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ValueError(f"on_duplicate must be one of {DUPLICATE_POLICIES}, not {on_duplicate!r}")
    out: dict[Hashable, tuple[Any, str]] = {}
    same, conflicts = [], []
    for i, r in enumerate(recs):
        k = key_of(i, r)
        v = value_of(i, r)
        if k in out:
            first_v, first_where = out[k]
            conflict = first_v != v
            msg = (f"{recs.where(i)}: {key_name} {k!r} repeats {first_where}"
                   + (f" with a different {what} ({json.dumps(first_v)[:40]} vs {json.dumps(v)[:40]})" if conflict else ""))
            if on_duplicate == "error":
                raise EvalInputError(msg + f"; give one {what} per {key_name} (or allow duplicates, keeping the first, "
                                           "with --allow-duplicates / on_duplicate='warn')")
            (conflicts if conflict else same).append(msg)
            continue
        out[k] = (v, recs.where(i))
    for kind, msgs in (("duplicate", same), ("conflicting duplicate", conflicts)):
        if msgs:
            warnings.warn(f"{len(msgs)} {kind} {key_name}(s) ignored, first kept; e.g. {msgs[0]}",
                          EvalInputWarning, stacklevel=3)
    return out


# ---------------------------------------------------------------------------
# Captions / free-form responses keyed by image (CHAIR, OPOPE, Object-HalBench)
# ---------------------------------------------------------------------------

CAPTION_ID_FIELDS = ("image_id", "image", "question_id")
CAPTION_TEXT_FIELDS = ("caption", "text", "response", "answer")
_COCO_FILE = re.compile(r"(\d+)\.(?:jpg|jpeg|png)$", re.I)


def coco_image_id(value: Any) -> Any:
    """An image key: COCO file names map to their numeric id (``"COCO_val2014_000000000042.jpg"`` → 42)."""
    if isinstance(value, str):
        m = _COCO_FILE.search(value.strip())
        if m:
            return int(m.group(1))
    return normalize_image_id(value)


def _pick_field(rec: Mapping[str, Any], candidates: tuple[str, ...]) -> str | None:
    return next((k for k in candidates if k in rec), None)


def read_captions(
    source: str | Path | Iterable[Mapping[str, Any]],
    image_id_key: str | None = None,
    caption_key: str | None = None,
    what: str = "caption",
    on_duplicate: str = "error",
) -> list[dict]:
    """Generated captions / responses as ``[{"image_id", "caption", "where"}]``, one per image.

    Reads the shapes the field publishes, by content: OPERA / HALC / PAI ``{"image_id", "caption"}``,
    LLaVA ``model_vqa`` answers ``{"question_id", "text", ...}`` (the question id is the image id),
    ``{"image": "COCO_val2014_....jpg", ...}`` and ``{"image_id", "response"}``.  Without explicit keys
    the id is the first of ``image_id``, ``image``, ``question_id`` present and the text the first of
    ``caption``, ``text``, ``response``, ``answer``.  COCO file names become numeric ids.  A second
    caption for the same image is an error (``on_duplicate="warn"``: warn and keep the first; ``"keep"``:
    keep all, for benchmarks that ask several questions per image).
    """
    recs = as_records(source, what=what)
    rows = []
    for i, r in enumerate(recs):
        where = recs.where(i)
        ik = image_id_key or _pick_field(r, CAPTION_ID_FIELDS)
        tk = caption_key or _pick_field(r, CAPTION_TEXT_FIELDS)
        if ik is None or ik not in r:
            raise EvalInputError(f"{where}: missing the image id field ({image_id_key!r})" if image_id_key else
                                 f"{where}: no image id field; expected one of {', '.join(CAPTION_ID_FIELDS)} "
                                 f"(fields present: {', '.join(sorted(r)) or 'none'})")
        if tk is None:
            raise EvalInputError(f"{where}: no {what} text field; expected one of {', '.join(CAPTION_TEXT_FIELDS)} "
                                 f"(fields present: {', '.join(sorted(r)) or 'none'})")
        text = record_text(r, tk, where)
        raw = r[ik]
        if isinstance(raw, str):
            image_id = coco_image_id(raw)
            if image_id == "":
                raise EvalInputError(f"{where}: field {ik!r} is empty")
        else:
            image_id = record_id(r, ik, where)
        rows.append({"image_id": image_id, "caption": text, "where": where})
    if on_duplicate == "keep":  # several prompts per image (Object HalBench): score every response
        return rows
    recs2 = Records(rows, [row["where"] for row in rows], source=recs.source)
    index = index_records(recs2, lambda i, r: r["image_id"], lambda i, r: r["caption"], what, "image id",
                          on_duplicate)
    kept = {w for _, w in index.values()}
    return [row for row in rows if row["where"] in kept]


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """One JSON document (UTF-8); a missing, non-UTF-8 or broken file raises naming the file and line."""
    p = Path(path)
    text = _read_text(p)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"{p}:{exc.lineno}: not valid JSON ({exc.msg}); expected the {what}") from None
