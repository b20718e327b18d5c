"""POPE: "Is there a <object> in the image?" over COCO / A-OKVQA / GQA images, three negative samplings.

Data folder: the question files as the POPE repository distributes them (``output/<source>/``), i.e.
``<source>/<source>_pope_<split>.json`` (JSON lines ``{"question_id", "image", "text", "label"}``; the same
file directly in ``--data`` is found too), and the images they name (``--set images=``, default ``val2014``:
COCO val2014 for ``coco`` and ``aokvqa``; point it at GQA's images for ``gqa``).
Options: ``source`` (coco, aokvqa, gqa), ``split`` (random, popular, adversarial), ``questions`` (an explicit
question file instead), ``images``, ``suffix`` (appended to each question; default LLaVA-1.5's POPE
prompt "Answer the question using a single word or phrase."), ``rule`` (answer parsing: ``official``, the POPE
script's, or ``substring``).
Items: the first ``n`` questions in file order. Score: :func:`kvsmooth_hooks.eval.pope.compute_pope`
(accuracy, precision, recall, F1 with *yes* positive, yes-ratio; bootstrap intervals).
"""

from __future__ import annotations

from pathlib import Path

from .registry import register_benchmark
from .base import Benchmark, BenchmarkError, Item

SOURCES = ("coco", "aokvqa", "gqa")
SPLITS = ("random", "popular", "adversarial")
LLAVA_SUFFIX = " Answer the question using a single word or phrase."


class PopeQuestions:
    """Mixin: locating and reading the official POPE question file of ``source`` / ``split``."""

    def question_file(self) -> Path:
        if self.opts["questions"]:
            return self.need(self.path("questions"), "POPE question file", "questions")
        src, split = self.opts["source"], self.opts["split"]
        if src not in SOURCES or split not in SPLITS:
            raise BenchmarkError(f"benchmark {self.name!r}: --set source must be one of {', '.join(SOURCES)} and "
                                 f"split one of {', '.join(SPLITS)} (got {src!r}, {split!r})")
        name = f"{src}_pope_{split}.json"
        for p in (self.data / src / name, self.data / name, self.data / "output" / src / name):
            if p.is_file():
                return p
        raise BenchmarkError(f"benchmark {self.name!r}: {name} not found in {self.data}, {self.data / src} or "
                             f"{self.data / 'output' / src} (the POPE repository's output/{src}/ folder)")

    def questions(self) -> list[dict]:
        """The questions as :func:`kvsmooth_hooks.eval.pope.load_pope_questions` reads them (``image`` required)."""
        from ..eval.pope import load_pope_questions

        rows = load_pope_questions(self.question_file())
        for r in rows:
            if not r["image"] or not r["text"]:
                raise BenchmarkError(f"{r['where']}: a POPE question needs 'image' and 'text' to be asked")
        return rows

    def image_of(self, row: dict) -> Path:
        p = self.path("images") / row["image"]
        if not p.is_file():
            raise BenchmarkError(f"POPE image {row['image']} (question_id {row['question_id']}) not found in "
                                 f"{self.path('images')} (set --set images=FOLDER)")
        return p


@register_benchmark
class Pope(PopeQuestions, Benchmark):
    name = "pope"
    max_new_tokens = 16
    metrics = ("Accuracy", "Precision", "Recall", "F1", "YesRatio")
    options = {"source": "coco", "split": "random", "questions": "", "images": "val2014", "suffix": LLAVA_SUFFIX,
               "rule": "official"}

    def items(self, n, seed):
        rows = self.questions()
        rows = rows if n is None else rows[:n]
        return [Item(str(r["question_id"]), r["text"] + self.opts["suffix"], self.image_of(r),
                     {"question_id": r["question_id"], "label": r["label"], "image_name": r["image"]}) for r in rows]

    def data_files(self):
        return [self.question_file()]

    def score(self, records, n_bootstrap=1000, seed=0):
        from ..eval.pope import compute_pope

        res = compute_pope([{"question_id": r["question_id"], "label": r["label"]} for r in records],
                           [{"question_id": r["question_id"], "text": r["output"]} for r in records],
                           rule=self.opts["rule"], n_bootstrap=n_bootstrap, seed=seed)
        return {**{k: res.overall[k] for k in self.metrics}, "ci95": {k: list(v) for k, v in res.intervals.items()},
                "n": len(records)}
