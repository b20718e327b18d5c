"""Object-HalBench, scored with rules (no paid API).

Object HalBench (Yu et al., *RLHF-V*, CVPR 2024) prompts a model for detailed
descriptions of COCO images and counts hallucinated objects against the COCO
ground truth.  The original scoring extracts objects with GPT-4 before a CHAIR
comparison; here the object mentions are extracted with the same rules as
CHAIR (:mod:`.coco_objects`), so numbers are comparable between runs of this
package but not identical to API-assisted scores.

Metrics (percent):

* ``CHAIR_S`` (response level) — responses with a hallucinated object /
  responses that mention at least one object;
* ``CHAIR_I`` (mention level) — hallucinated mentions / mentions;
* ``Recall`` — Σ distinct correct objects / Σ ground-truth objects;
* ``F1`` — with Precision = Σ distinct correct / Σ distinct mentioned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .bootstrap import bootstrap_intervals, f1_score, format_summary, intervals_to_json, safe_ratio
from .chair import ChairEvaluator, CaptionResult, load_ground_truth
from .records import read_captions

__all__ = ["ObjHalResult", "compute_objhal", "objhal_metrics"]

OBJHAL_METRICS = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1")


@dataclass
class ObjHalResult:
    overall: dict[str, float]
    responses: list[CaptionResult]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"overall": dict(self.overall), "ci95": intervals_to_json(self.intervals),
                "responses": [r.to_dict() for r in self.responses]}

    def summary(self) -> str:
        return format_summary(self.overall, self.intervals, OBJHAL_METRICS,
                              f"{'responses':<10}: {int(self.overall['num_responses']):6d} "
                              f"({int(self.overall['num_with_objects'])} mention objects)")


def objhal_metrics(results: list[CaptionResult]) -> dict[str, float]:
    """Object-HalBench metrics from per-response CHAIR details."""
    with_obj = [r for r in results if r.mentioned_objects]
    mentions = sum(len(r.mentioned_objects) for r in results)
    hall = sum(len(r.hallucinated_objects) for r in results)
    correct = sum(len(r.correct_objects) for r in results)
    distinct = sum(len(set(r.mentioned_objects)) for r in results)
    gt = sum(len(r.gt_objects) for r in results)
    precision = safe_ratio(correct, distinct)
    recall = safe_ratio(correct, gt)
    return {
        "CHAIR_S": 100.0 * safe_ratio(sum(r.hallucinated for r in with_obj), len(with_obj)),
        "CHAIR_I": 100.0 * safe_ratio(hall, mentions),
        "Recall": 100.0 * recall,
        "Precision": 100.0 * precision,
        "F1": 100.0 * f1_score(precision, recall),
        "num_responses": len(results),
        "num_with_objects": len(with_obj),
    }


def compute_objhal(
    responses: str | Path | Iterable[Mapping[str, Any]],
    ground_truth: Mapping[Any, Iterable[str]] | str | Path,
    backend: str = "offline",
    response_key: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    on_duplicate: str = "keep",
) -> ObjHalResult:
    """Score Object-HalBench ``responses`` (``image_id`` + ``response_key``) against ground truth.

    ``ground_truth`` is ``{image_id: [categories]}``, a JSON file of that
    shape, or a COCO 2014 annotation directory (as for CHAIR).  Object HalBench asks several prompts about
    some images, so responses sharing an image id are all scored (``on_duplicate="keep"``); ``"error"`` /
    ``"warn"`` enforce one response per image.
    """
    from .chair import build_coco_ground_truth, default_gt_cache
    from .coco_objects import ObjectExtractor

    extractor = ObjectExtractor(backend)
    if isinstance(ground_truth, (str, Path)):
        p = Path(ground_truth)
        ground_truth = (build_coco_ground_truth(p, extractor, cache_path=default_gt_cache(p, backend))
                        if p.is_dir() else load_ground_truth(p))
    rows = read_captions(responses, caption_key=response_key, what="response", on_duplicate=on_duplicate)
    evaluator = ChairEvaluator(ground_truth, extractor)
    results = [evaluator.evaluate_caption(r["image_id"], r["caption"]) for r in rows]
    overall = objhal_metrics(results)
    intervals: dict[str, tuple[float, float]] = {}
    if n_bootstrap and results:
        has = np.array([bool(r.mentioned_objects) for r in results], dtype=float)
        cols = {
            "has": has,
            "hall_resp": np.array([r.hallucinated for r in results], dtype=float) * has,
            "hall": np.array([len(r.hallucinated_objects) for r in results], dtype=float),
            "mentions": np.array([len(r.mentioned_objects) for r in results], dtype=float),
            "correct": np.array([len(r.correct_objects) for r in results], dtype=float),
            "distinct": np.array([len(set(r.mentioned_objects)) for r in results], dtype=float),
            "gt": np.array([len(r.gt_objects) for r in results], dtype=float),
        }

        intervals = bootstrap_intervals(cols, {
            "CHAIR_S": lambda s: 100.0 * s["hall_resp"] / s["has"],
            "CHAIR_I": lambda s: 100.0 * s["hall"] / s["mentions"],
            "Recall": lambda s: 100.0 * s["correct"] / s["gt"],
            "Precision": lambda s: 100.0 * s["correct"] / s["distinct"],
            "F1": lambda s: 100.0 * f1_score(s["correct"] / s["distinct"], s["correct"] / s["gt"]),
        }, n_resamples=n_bootstrap, seed=seed)
    return ObjHalResult(overall=overall, responses=results, intervals=intervals)
