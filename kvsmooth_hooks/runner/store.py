"""The output folder of a run: settings guards, per-rank record files, resume and merge.

Layout::

    <out>/run.json                       settings every cell shares (model, revision, benchmark, data digests,
                                         n, seed, generation); a rerun with other values is refused
    <out>/cells/<arm>/cell.json          the arm's config (without the toolkit version); also guarded
    <out>/cells/<arm>/records.rank<R>-of<W>.jsonl   one JSON line per finished item, written by rank R
    <out>/cells/<arm>/records.jsonl      all items in benchmark order, merged when every rank is done

Resume: every ``records.rank*.jsonl`` of a cell counts (whatever world size wrote it), so a run resumes
item by item, also on another number of processes. A line cut by a crash is ignored and its item redone.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..eval.records import EvalInputError, append_jsonl, read_resumable_jsonl

__all__ = ["RunSettingsError", "guard", "cell_key", "CellStore"]


class RunSettingsError(EvalInputError):
    """The output folder holds results made with other settings."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def guard(path: Path, settings: dict, what: str) -> None:
    """First call writes ``settings`` to ``path``; later calls must pass equal settings, or
    :class:`RunSettingsError` names each differing setting with its old and new value."""
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        a, b = _flat(old), _flat(json.loads(json.dumps(settings)))
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in diff[:6])
            more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
            raise RunSettingsError(f"{path.parent} holds {what} made with other settings ({shown}{more}); "
                                   "rerun with the same settings to resume, or choose another --out")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(settings)}")
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def cell_key(run_settings: dict, config_dict: dict | None) -> str:
    """A short hash of everything that changes a cell's result (the config without the toolkit version)."""
    import hashlib

    cfg = None if config_dict is None else {k: v for k, v in config_dict.items() if k != "toolkit_version"}
    blob = json.dumps({"run": run_settings, "config": cfg}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class CellStore:
    """Records of one arm (cell) in ``<out>/cells/<name>``, for rank ``rank`` of ``world``."""

    def __init__(self, out: Path, name: str, rank: int = 0, world: int = 1):
        self.dir = Path(out) / "cells" / name
        self.rank, self.world = rank, world
        self.mine = self.dir / f"records.rank{rank}-of{world}.jsonl"

    def check(self, run_settings: dict, config_dict: dict | None) -> str:
        cfg = None if config_dict is None else {k: v for k, v in config_dict.items() if k != "toolkit_version"}
        key = cell_key(run_settings, config_dict)
        guard(self.dir / "cell.json", {"config": cfg, "key": key}, f"cell {self.dir.name!r}")
        return key

    def done(self) -> dict[str, dict]:
        """Finished items of every rank file, by item id."""
        recs = {}
        if self.dir.is_dir():
            for p in sorted(self.dir.glob("records.rank*.jsonl")):
                for i, r in read_resumable_jsonl(p, "id", key_fn=str).items():
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
