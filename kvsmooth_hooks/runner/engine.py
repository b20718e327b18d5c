"""The one generation loop: items of a benchmark -> records, one arm at a time, always through the session.

``kvsmooth run``, ``kvsmooth eval grounded`` (the runner with other defaults) and the demo's batch all generate
here. Where things live, for code that plugs into the runner:

* an **arm** (:class:`~kvsmooth_hooks.runner.arms.Arm`: name, config or ``None``, table fields) comes from
  ``--arms`` / ``--grid`` / ``--grid-file`` (:mod:`.arms`, registry ``GRIDS``);
* **per-item generation** is :func:`generate_records`: it asks a :class:`~.models.ModelBundle` for answers
  to a batch of :class:`~kvsmooth_hooks.benchmarks.Item` inside ``smooth(bundle.model, arm.config)`` (nothing
  for a ``None`` config) and turns them into records;
* **per-run records** are written by :class:`~.store.CellStore` (``<out>/cells/<arm>/records.*.jsonl``, resumable)
  and scored by the benchmark (:meth:`~kvsmooth_hooks.benchmarks.Benchmark.score`) in :mod:`.report`.

A record: ``{"id": item.id, **item.meta, "output": str, "new_tokens": int, "seconds": float}`` (seconds per item
of its batch's wall time).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

__all__ = ["generate_records", "arm_session", "check_arms_select_layers"]


@contextlib.contextmanager
def arm_session(model, config, trace: bool = False):
    """``smooth(model, config, trace=trace)`` around the block, or nothing for ``config=None`` (the unhooked
    baseline); yields the session or ``None``. Hooks are removed when the block ends, also when it raises."""
    if config is None:
        yield None
        return
    from .. import smooth  # the package's public entry point (what users and test spies see)

    with smooth(model, config, trace=trace) as session:
        yield session


def generate_records(bundle, items: list, config, gen: dict, batch_size: int = 1, trace: bool = False,
                     on_batch: Callable[[list[dict]], None] | None = None,
                     method=None) -> Iterator[tuple[list[dict], object]]:
    """Answer ``items`` in batches of ``batch_size`` with ``bundle.generate(batch, gen)`` under ``config`` and,
    if given, an inference-time ``method`` (:mod:`kvsmooth_hooks.methods`: every ``generate`` call of the bundle
    runs under it, inside the session).

    Yields ``(records, session)`` per batch (``session``: the batch's session, ``None`` for the baseline; with
    ``trace`` its trace is kept); ``on_batch(records)`` is called first (the runner appends them to its store
    there, so a crash loses at most one batch)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        t0 = time.perf_counter()
        with arm_session(bundle.model, config, trace=trace) as session, \
                (method.around_generate(bundle.model) if method is not None else contextlib.nullcontext()):
            answers = bundle.generate(batch, gen)
        secs = (time.perf_counter() - t0) / len(batch)
        if len(answers) != len(batch):
            raise RuntimeError(f"the model bundle answered {len(answers)} of {len(batch)} items")
        records = [{"id": it.id, **it.meta, "output": text, "new_tokens": int(ntok), "seconds": round(secs, 4)}
                   for it, (text, ntok) in zip(batch, answers)]
        if on_batch is not None:
            on_batch(records)
        yield records, session


def check_arms_select_layers(arms, model) -> None:
    """Every smoothing arm must smooth at least one layer of this model (else it silently runs the baseline)."""
    from ..core.adapters import get_adapter
    from ..core.config import ConfigError
    from ..core.plan import resolve

    adapter = get_adapter(model)
    for a in arms:
        if a.config is not None and not resolve(a.config, adapter).active_layers():
            raise ConfigError(f"arm {a.name!r}: layers {a.config.layers!r} select none of this model's "
                              f"{adapter.n_layers} layers (it would run as the baseline); choose layers with "
                              "--preset/--config (e.g. layers: all) or the grid's options")
