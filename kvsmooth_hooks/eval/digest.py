"""Digests of input files: one reader for a run's key (a benchmark's data files) and the CHAIR ground-truth cache.

A CHAIR run keys its run by the COCO annotation files (:meth:`kvsmooth_hooks.benchmarks.base.Benchmark.settings`)
and its ground-truth cache by the same files (:func:`kvsmooth_hooks.eval.chair.build_coco_ground_truth`). Both take
a ``memo`` (a dict the run keeps: the benchmark's ``digest_memo``), so each file is read once per run while its
``(resolved path, size, modification time in ns)`` stay the same. The memo lives as long as the run and not the
process: an in-place edit that keeps a file's size and time stamp is seen by the next run in the same process
(the ground-truth cache's promise, tests/eval/test_chair.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha1", "file_digest"]

_CHUNK = 1 << 22


def file_sha1(path: str | Path, memo: dict | None = None) -> str:
    """sha1 of a file's bytes as 40 hex digits. ``memo``: ``{(resolved path, st_size, st_mtime_ns): digest}``,
    read and filled (None: the file is read). Raises ``OSError`` (with the file name) when it cannot be read."""
    p = Path(path)
    key = None
    if memo is not None:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key in memo:
            return memo[key]
    h = hashlib.sha1()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        memo[key] = digest
    return digest


def file_digest(path: str | Path, memo: dict | None = None) -> str:
    """A data file's digest in a run's key: the first 16 hex digits of its sha1 (:func:`file_sha1`, with ``memo``);
    for a folder ``"dir:"`` and 16 hex digits of the sha1 of its sorted file names, one per line (image folders are
    keyed by their listing, read each time)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha1()
        for name in sorted(q.name for q in p.iterdir()):
            h.update(name.encode() + b"\n")
        return "dir:" + h.hexdigest()[:16]
    return file_sha1(p, memo)[:16]
