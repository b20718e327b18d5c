"""The output folder of a run: one settings guard, one resumable-records reader and writer, one lock.

Layout::

    <out>/run.json                       settings every cell shares (model, revision, benchmark, data digests,
                                         n, seed, generation); a rerun with other values is refused
    <out>/run.lock                       held (``flock``) while a run writes into the folder
    <out>/cells/<arm>/cell.json          the arm's config (without the toolkit version); also guarded
    <out>/cells/<arm>/records.rank<R>-of<W>.jsonl   one JSON line per finished item, written by rank R
    <out>/cells/<arm>/records.jsonl      all items in benchmark order, merged when every rank is done

A record (one line, one item) is ``{"id", **item.meta, "output": str, "new_tokens": int, "seconds": float}``
(:mod:`.engine` writes it; benchmarks score lists of them).

Resume: every ``records.rank*.jsonl`` of a cell counts (whatever world size wrote it), so a run resumes
item by item, also on another number of processes. A line cut by a crash (not valid JSON) is skipped with a
warning and its item redone; a complete last line that only lost its newline is kept.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

from ..core.errors import UserError

__all__ = ["RunSettingsError", "RunLockedError", "RecordsWarning", "guard", "cell_key", "cell_name", "CellStore",
           "RunLock", "read_resumable_jsonl", "append_jsonl", "RECORD_FIELDS"]

#: fields every finished record carries (besides the item's meta)
RECORD_FIELDS = {"output": str, "new_tokens": int, "seconds": (int, float)}


class RunSettingsError(UserError):
    """The output folder holds results made with other settings, or a file of it is damaged."""


class RunLockedError(UserError):
    """Another run is writing into the same output folder."""


class RecordsWarning(UserWarning):
    """A tolerated problem of a records file (a line cut by an interrupted run)."""


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunSettingsError(f"{path}: damaged {what} ({str(exc).splitlines()[0]}); restore it, or delete the "
                               "folder (or choose another --out) to start anew") from None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        elif k != "toolkit_version":  # informational: a package upgrade may resume a run
            out[key] = v
    return out


def guard(path: Path, settings: dict, what: str) -> None:
    """First call writes ``settings`` to ``path``; later calls must pass equal settings, or
    :class:`RunSettingsError` names each differing setting with its old and new value."""
    if path.exists():
        old = _read_json_file(path, "settings file")
        if not isinstance(old, dict):
            raise RunSettingsError(f"{path}: damaged settings file (not a JSON object); restore it or delete the folder")
        a, b = _flat(old), _flat(json.loads(json.dumps(settings)))
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in diff[:6])
            more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
            raise RunSettingsError(f"{path.parent} holds {what} made with other settings ({shown}{more}); "
                                   "rerun with the same settings to resume, or choose another --out")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def _without_version(config_dict: dict | None) -> dict | None:
    """The arm's settings without the toolkit version (informational: a package upgrade may resume a run): a config's
    own, or, for an arm with a method (``{"kvsmooth": config or None, "method": ...}``), its config's."""
    if config_dict is None:
        return None
    out = {k: v for k, v in config_dict.items() if k != "toolkit_version"}
    if isinstance(out.get("kvsmooth"), dict) and "method" in out:
        out["kvsmooth"] = _without_version(out["kvsmooth"])
    return out


def _key(run_settings: dict, cfg: dict | None) -> str:
    import hashlib

    blob = json.dumps({"run": run_settings, "config": cfg}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cell_key(run_settings: dict, config_dict: dict | None) -> str:
    """A short hash (16 hex digits) of everything that changes a cell's result: the run's settings and the arm's
    settings (``config_dict``, None for the baseline) without the toolkit version."""
    return _key(run_settings, _without_version(config_dict))


_RESERVED = {"", ".", "..", "con", "prn", "aux", "nul"}


def cell_name(name: str, where: str = "--arms") -> str:
    """``name`` if it can be a cell folder (one path component, not ``.``/``..``), else :class:`UserError`."""
    if name.lower() in _RESERVED or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"{where}: arm name {name!r} cannot be a folder name (empty, hidden, '.', '..' or a path); "
                        "give the arm another name")
    return name


def read_resumable_jsonl(path: str | Path, key: str, key_fn: Callable[[Any], Hashable] = str,
                         required: dict | None = None) -> dict[Any, dict]:
    """Records of a JSONL file a run appends to (:func:`append_jsonl`), by ``key_fn(record[key])``; the later
    record of an id wins. A missing file is an empty run.

    A line that is not valid JSON was cut by an interrupted run: it is skipped with one :class:`RecordsWarning`
    naming the file and lines, and its item is redone (the next :func:`append_jsonl` removes it). A line that is
    JSON but not an object with ``key`` (and the ``required`` fields with their types) raises
    :class:`RunSettingsError` naming the file, line and field.
    """
    p = Path(path)
    if not p.exists():
        return {}
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunSettingsError(f"{p}: not UTF-8 text; it is not a records file of this toolkit: delete it or "
                               "choose another --out") from None
    done: dict[Any, dict] = {}
    cut = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            cut.append(i)
            continue
        if not isinstance(rec, dict) or key not in rec:
            raise RunSettingsError(f"{p}:{i}: expected a JSON object with field {key!r}; is this the output of "
                                   "another program? Use a new --out")
        for field, typ in (required or {}).items():
            if not isinstance(rec.get(field), typ) or isinstance(rec.get(field), bool):
                raise RunSettingsError(f"{p}:{i}: field {field!r} must be "
                                       f"{getattr(typ, '__name__', 'a number')}, got {json.dumps(rec.get(field))[:40]}"
                                       "; delete this line to redo its item")
        done[key_fn(rec[key])] = rec
    if cut:
        lines = ", ".join(map(str, cut[:5])) + (" ..." if len(cut) > 5 else "")
        warnings.warn(f"{p}: {len(cut)} line(s) not valid JSON (cut by an interrupted run), skipped and redone: "
                      f"line {lines}", RecordsWarning, stacklevel=2)
    return done


def append_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Append one JSON line per record, creating the file and its folder. A last line without its newline is
    completed when it is a whole JSON object, and removed when an interrupted run cut it short (its item was
    not finished and is being redone)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a+b") as fh:
        end = fh.seek(0, 2)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":
                pos = end
                while pos > 0:  # the start of the last line
                    step = min(1 << 16, pos)
                    pos -= step
                    fh.seek(pos)
                    i = fh.read(step).rfind(b"\n")
                    if i >= 0:
                        pos += i + 1
                        break
                fh.seek(pos)
                try:
                    whole = isinstance(json.loads(fh.read(end - pos).decode("utf-8")), dict)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    whole = False
                if whole:
                    fh.write(b"\n")
                else:
                    fh.truncate(pos)
        fh.write("".join(json.dumps(rec) + "\n" for rec in records).encode("utf-8"))


class RunLock:
    """An exclusive ``flock`` on ``<out>/run.lock`` for the duration of a run: a second run into the same
    folder is refused with :class:`RunLockedError` instead of computing every item again. The lock goes
    with the process (a crash leaves no stale lock, only a harmless file) and a finished run removes the file.
    Where ``fcntl`` is missing (Windows) it does nothing."""

    def __init__(self, out: Path):
        self.path = Path(out) / "run.lock"
        self._fh = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a run that finished between our open and flock removed the file we opened: open again
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                raise RunLockedError(f"--out {self.path.parent}: another run ({holder}) is writing into this folder; "
                                     "wait for it to finish (then rerun to resume) or choose another --out") from None
            if self._same_file(fh):
                break
            fh.close()
        fh.truncate(0)
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        fh.flush()
        self._fh = fh
        return self

    def _same_file(self, fh) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self.path.unlink(missing_ok=True)  # while still holding the lock; a run waiting on it opens a new file
            self._fh.close()  # closing releases the flock
            self._fh = None


class CellStore:
    """Records of one arm (cell) in ``<out>/cells/<name>``, for rank ``rank`` of ``world``."""

    def __init__(self, out: Path, name: str, rank: int = 0, world: int = 1):
        self.dir = Path(out) / "cells" / cell_name(name)
        self.rank, self.world = rank, world
        self.mine = self.dir / f"records.rank{rank}-of{world}.jsonl"

    def check(self, run_settings: dict, config_dict: dict | None) -> str:
        """Write (first run) or compare (later runs) ``cell.json``: the arm's settings without the toolkit version
        and the cell's key (:func:`cell_key`); returns the key, raises :class:`RunSettingsError` when they differ."""
        cfg = _without_version(config_dict)
        key = _key(run_settings, cfg)
        guard(self.dir / "cell.json", {"config": cfg, "key": key}, f"cell {self.dir.name!r}")
        return key

    def done(self) -> dict[str, dict]:
        """Finished items of every rank file, by item id."""
        recs: dict[str, dict] = {}
        if self.dir.is_dir():
            for p in sorted(self.dir.glob("records.rank*.jsonl")):
                for i, r in read_resumable_jsonl(p, "id", required=RECORD_FIELDS).items():
                    recs.setdefault(i, r)
        return recs

    def append(self, records: list[dict]) -> None:
        append_jsonl(self.mine, records)

    def merge(self, item_ids: list[str]) -> list[dict]:
        """All records in ``item_ids`` order, written to ``records.jsonl``; raises if an item is missing."""
        done = self.done()
        missing = [i for i in item_ids if i not in done]
        if missing:
            raise RunSettingsError(f"{self.dir}: {len(missing)} item(s) have no record (e.g. {missing[0]}); "
                                   "did a rank fail? Rerun the same command to finish them")
        recs = [done[i] for i in item_ids]
        (self.dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        return recs
