"""What a benchmark is: items to ask, how to ask them, and how to score the answers.

A benchmark is one class in one file, registered with :func:`register_benchmark` (or through the entry-point
group ``kvsmooth_hooks.benchmarks``). It declares

* ``options``: its settings (``--set KEY=VALUE`` on the command line), with defaults;
* :meth:`Benchmark.items`: the items of its official files, in a fixed order (the first ``n`` of a seeded
  draw where the protocol draws);
* :meth:`Benchmark.data_files`: the files that define the items and the ground truth (hashed into the run's key);
* the prompt of each item (``Item.prompt``: the user text; the model family's chat format is the runner's job),
  ``max_new_tokens`` and greedy decoding;
* :meth:`Benchmark.score`: the metric over the generated records (percent values, bootstrap intervals).

Benchmarks are evaluation-side code: they use ``kvsmooth_hooks.eval`` metrics and never the session.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from ..eval.digest import file_digest
from ..eval.records import EvalInputError

__all__ = ["Item", "Benchmark", "BenchmarkError", "coco_image_index", "seeded_draw", "file_digest", "read_json_records"]


class BenchmarkError(EvalInputError):
    """A benchmark's data folder or options are wrong; the message names the file or option and the fix."""


@dataclass(frozen=True)
class Item:
    """One question to a model.

    ``id``: unique and stable within the benchmark (records are keyed by it); ``prompt``: the user text;
    ``image``: path of the image file (``None`` for text benchmarks); ``meta``: what the scorer needs
    (labels, image ids, objects), copied into the item's record.
    """

    id: str
    prompt: str
    image: Path | None = None
    meta: dict = field(default_factory=dict)


class Benchmark:
    """Base class. Subclasses set ``name``, ``metrics`` and ``options``, and ``modality`` / ``max_new_tokens`` where
    they differ from the defaults (an image benchmark, 512 new tokens)."""

    name: ClassVar[str] = ""
    #: "image" (needs a vision-language model) or "text"
    modality: ClassVar[str] = "image"
    max_new_tokens: ClassVar[int] = 512
    #: metric columns of tables (percent unless named otherwise), the first is the headline
    metrics: ClassVar[tuple[str, ...]] = ()
    #: option name -> default (all values are strings or numbers; documented in the class docstring)
    options: ClassVar[dict[str, Any]] = {}
    #: which metrics are "lower is better" (plots and docs)
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    #: the metrics grid plots draw (default: the first two)
    plot_metrics: ClassVar[tuple[str, ...]] = ()
    #: how the metric is computed, as results record it (``protocol_record``); empty: the first paragraph of the
    #: class's (or its module's) docstring
    metric_rule: ClassVar[str] = ""

    def __init__(self, data: str | Path | None, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise BenchmarkError(f"benchmark {self.name!r} has no option {', '.join(unknown)}; "
                                 f"its options are {', '.join(sorted(self.options)) or 'none'}")
        self.opts = dict(self.options)
        for k, v in options.items():
            try:
                self.opts[k] = type(self.options[k])(v)
            except ValueError:
                raise BenchmarkError(f"benchmark {self.name!r}: --set {k}={v!r}: expected "
                                     f"{type(self.options[k]).__name__} (default {self.options[k]!r})") from None
        self.data = Path(data) if data is not None else None
        if self.modality == "image" and self.data is None:
            raise BenchmarkError(f"benchmark {self.name!r} needs --data (the folder of its official files)")
        if self.data is not None and not self.data.is_dir():
            raise BenchmarkError(f"--data {self.data}: folder not found")

    # ------------------------------------------------------------------ to override
    def items(self, n: int | None, seed: int) -> list[Item]:
        """The first ``n`` items (all with ``None``) in the benchmark's fixed order."""
        raise NotImplementedError

    def data_files(self) -> list[Path]:
        """The files whose contents define items and ground truth (their digests key the run)."""
        return []

    def score(self, records: list[dict], n_bootstrap: int = 1000, seed: int = 0) -> dict:
        """``{metric: value, ..., "ci95": {metric: [lo, hi]}}`` from the records of every item."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def path(self, option: str) -> Path:
        """The data path an option names (relative to ``--data``)."""
        p = Path(str(self.opts[option]))
        return p if p.is_absolute() or self.data is None else self.data / p

    def need(self, path: Path, what: str, option: str | None = None) -> Path:
        if not path.exists():
            hint = f" (set --set {option}=PATH)" if option else ""
            raise BenchmarkError(f"benchmark {self.name!r}: {what} not found at {path}{hint}")
        return path

    @cached_property
    def digest_memo(self) -> dict:
        """The file digests this benchmark (one run) has computed (:mod:`kvsmooth_hooks.eval.digest`): the run key
        and the CHAIR ground-truth cache read each data file once."""
        return {}

    def settings(self) -> dict:
        """Everything about the benchmark that changes a result (for the run key)."""
        return {"benchmark": self.name, "options": dict(sorted(self.opts.items())),
                "data_files": {str(p.relative_to(self.data) if self.data and p.is_relative_to(self.data) else p):
                               file_digest(p, self.digest_memo) for p in self.data_files()},
                "max_new_tokens": self.max_new_tokens}


# ---------------------------------------------------------------------- shared helpers
_IMAGE_RE = re.compile(r"(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


def coco_image_index(folder: Path, what: str = "--set images") -> dict[int, Path]:
    """``{image_id: path}`` for COCO-named images (``COCO_val2014_000000391895.jpg``) in ``folder``."""
    if not folder.is_dir():
        raise BenchmarkError(f"{what}: image folder {folder} not found (expected COCO images such as "
                             "COCO_val2014_000000391895.jpg, from val2014.zip of cocodataset.org)")
    index = {}
    for p in folder.iterdir():
        m = _IMAGE_RE.search(p.name)
        if m and p.is_file():
            index[int(m.group(1))] = p
    if not index:
        raise BenchmarkError(f"{what}: no images named like COCO_val2014_000000391895.jpg in {folder}")
    return index


def seeded_draw(ids, n: int | None, seed: int) -> list:
    """``n`` ids drawn from the *sorted* ids with ``random.Random(seed).sample`` (all, shuffled, if fewer)."""
    ids = sorted(ids)
    k = len(ids) if n is None else min(n, len(ids))
    return random.Random(seed).sample(ids, k)


def read_json_records(path: Path, what: str) -> list[dict]:
    """Records of a JSON Lines or JSON list file (by content), with errors naming the file and line."""
    from ..eval.records import read_records

    return list(read_records(path, what=what))
