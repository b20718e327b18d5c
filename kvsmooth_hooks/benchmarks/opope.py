"""OPOPE (offline POPE, HALC): answer the POPE questions from one free caption per image.

Same data as ``pope`` (question files and images). Items: the distinct images of the first ``n`` questions,
each captioned with CHAIR's prompt (512 new tokens, greedy); a question is answered *yes* when its object
occurs in the caption (:func:`kvsmooth_hooks.eval.pope.compute_opope`). The score covers the first ``n``
questions. Options as for ``pope`` plus ``prompt``.
"""

from __future__ import annotations

from .registry import register_benchmark
from .base import Benchmark, Item
from .chair import PAPER_PROMPT
from .pope import PopeQuestions


@register_benchmark
class Opope(PopeQuestions, Benchmark):
    name = "opope"
    metrics = ("Accuracy", "Precision", "Recall", "F1", "YesRatio")
    options = {"source": "coco", "split": "random", "questions": "", "images": "val2014", "prompt": PAPER_PROMPT}

    def _rows(self, n):
        rows = self.questions()
        return rows if n is None else rows[:n]

    def items(self, n, seed):
        rows = self._rows(n)
        self._scored = rows
        seen, items = set(), []
        for r in rows:
            if r["image"] not in seen:
                seen.add(r["image"])
                items.append(Item(r["image"], self.opts["prompt"], self.image_of(r), {"image_name": r["image"]}))
        return items

    def data_files(self):
        return [self.question_file()]

    def score(self, records, n_bootstrap=1000, seed=0):
        from ..eval.pope import compute_opope

        rows = getattr(self, "_scored", None)
        if rows is None:
            captioned = {r["image_name"] for r in records}
            rows = [q for q in self.questions() if q["image"] in captioned]
        res = compute_opope(rows, [{"image": r["image_name"], "caption": r["output"]} for r in records],
                            n_bootstrap=n_bootstrap, seed=seed)
        return {**{k: res.overall[k] for k in self.metrics}, "ci95": {k: list(v) for k, v in res.intervals.items()},
                "n": len(res.items)}
