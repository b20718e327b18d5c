"""CHAIR on COCO val2014 captions: the paper's protocol.

Data folder (``--data``): ``val2014/`` (COCO images named ``COCO_val2014_<12-digit id>.jpg``) and
``annotations/`` (``instances_{train,val}2014.json`` and ``captions_{train,val}2014.json``, from which
the CHAIR ground truth is built as the reference script does; cached in the user cache folder), or a
ground-truth JSON ``{image_id: [COCO categories]}`` given with ``--set gt=FILE``.

Items: ``n`` image ids drawn with ``random.Random(seed).sample`` from the *sorted* ids of the image folder
(a directory listing's order depends on the file system, so shuffling it is not reproducible); the prompt
"Please help me describe the image in detail." (OPERA / PAI / KVSmooth); 512 new tokens, greedy.
Score: CHAIR_S, CHAIR_I, Recall, Precision, F1 (percent), Len (tokens), with bootstrap intervals.
Options: ``images`` (default ``val2014``), ``annotations`` (``annotations``), ``gt`` (a JSON file,
replaces the annotations), ``backend`` (``offline`` or ``nltk`` lemmatizer), ``prompt``.
"""

from __future__ import annotations

from functools import cached_property

from ..protocols import CHAIR_RULE
from .registry import register_benchmark
from .base import Benchmark, BenchmarkError, Item, coco_image_index, seeded_draw

PAPER_PROMPT = "Please help me describe the image in detail."


class CocoGroundTruth:
    """Mixin: COCO images and the CHAIR ground truth of a data folder (options images / annotations / gt)."""

    @cached_property
    def extractor(self):
        from ..eval.coco_objects import ObjectExtractor

        return ObjectExtractor(self.opts["backend"])

    @cached_property
    def ground_truth(self) -> dict:
        from ..eval.chair import build_coco_ground_truth, default_gt_cache, load_ground_truth

        if self.opts["gt"]:
            return load_ground_truth(self.need(self.path("gt"), "ground-truth JSON", "gt"))
        ann = self.need(self.path("annotations"), "COCO 2014 annotation folder", "annotations")
        return build_coco_ground_truth(ann, self.extractor, cache_path=default_gt_cache(ann, self.opts["backend"]),
                                       show_progress=False, digest_memo=self.digest_memo)

    def gt_files(self) -> list:
        if self.opts["gt"]:
            return [self.path("gt")]
        ann = self.path("annotations")
        return [ann / f"{k}_{s}2014.json" for k in ("instances", "captions") for s in ("train", "val")]

    def check_gt(self, image_ids, where: str) -> None:
        missing = [i for i in image_ids if i not in self.ground_truth]
        if missing:
            raise BenchmarkError(f"benchmark {self.name!r}: {len(missing)} image(s) of {where} have no ground truth "
                                 f"(e.g. image_id {missing[0]}); are the images and the annotations the same split?")


@register_benchmark
class Chair(CocoGroundTruth, Benchmark):
    name = "chair"
    metrics = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len")
    lower_is_better = ("CHAIR_S", "CHAIR_I")
    plot_metrics = ("CHAIR_S", "Recall")
    metric_rule = CHAIR_RULE
    options = {"images": "val2014", "annotations": "annotations", "gt": "", "backend": "offline",
               "prompt": PAPER_PROMPT}

    def items(self, n, seed):
        images = coco_image_index(self.path("images"))
        chosen = seeded_draw(images, n, seed)
        self.check_gt(chosen, f"--data {self.data}")
        return [Item(str(i), self.opts["prompt"], images[i], {"image_id": i}) for i in chosen]

    def data_files(self):
        return [self.path("images")] + self.gt_files()

    def score(self, records, n_bootstrap=1000, seed=0):
        from ..eval.chair import ChairEvaluator

        res = ChairEvaluator(self.ground_truth, self.extractor).evaluate(
            [{"image_id": r["image_id"], "caption": r["output"]} for r in records], n_bootstrap=n_bootstrap, seed=seed)
        return {**res.overall, "ci95": {k: list(v) for k, v in res.intervals.items()}, "n": len(records)}
