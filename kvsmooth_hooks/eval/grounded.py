"""Grounded-text CHAIR: a text-only *proxy* for CHAIR that this project's CPU machines can run.

There is no image model here, so the "image" is a scene given in words: a deterministic set of 3-6 COCO
categories drawn from a seed. The model is asked to describe a photo that shows exactly those objects,
and its description is scored with the same CHAIR machinery as image captions, with the scene's objects as
ground truth: any other COCO object it mentions counts as hallucinated; recall is the share of the scene's
objects it mentions.

What it measures: invention of objects that were not given, by a text model continuing a description,
and coverage of the given ones. What it does not measure: visual grounding. The objects are in the prompt,
so the model never has to see anything; numbers from this proxy say how a setting changes the model's
tendency to add unrequested objects, not how it changes an MLLM's perception. Treat it as a cheap signal for
ablations, never as a CHAIR result.

The scenes and prompts are the ``grounded`` benchmark (:mod:`kvsmooth_hooks.benchmarks.grounded`); the runner
generates the descriptions; this module only scores records (``{"id", "objects", "output"}``, the runner's
record schema).
"""

from __future__ import annotations

from typing import Any

from .chair import ChairEvaluator

def score_description(text: str, objects) -> dict[str, Any]:
    """CHAIR details of one description against a scene's objects (the scene is the ground truth)."""
    r = ChairEvaluator({"scene": list(objects)}).evaluate_caption("scene", text)
    return {
        "mentioned_objects": r.mentioned_objects,
        "hallucinated_objects": r.hallucinated_objects,
        "correct_objects": r.correct_objects,
        "CHAIR_S": int(bool(r.hallucinated_objects)),
        "CHAIR_I": len(r.hallucinated_objects) / len(r.mentioned_objects) if r.mentioned_objects else 0.0,
        "Recall": len(r.correct_objects) / len(objects),
        "num_tokens": r.num_tokens,
        "Rep3": repetition_rate(text),
    }


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier n-gram of the same text (0 = none, near 1 = a loop).

    Reported next to CHAIR because a model that collapses into listing the given objects over and over
    scores a perfect CHAIR while writing no description at all.
    """
    words = text.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def summarize(records: list[dict], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Corpus-level CHAIR over records ``{"id", "objects", "output"}`` (percent), with bootstrap intervals;
    ``Rep3`` is the mean repetition rate (percent)."""
    gt = {r["id"]: r["objects"] for r in records}
    result = ChairEvaluator(gt).evaluate([{"image_id": r["id"], "caption": r["output"]} for r in records],
                                         n_bootstrap=n_bootstrap, seed=seed)
    reps = [repetition_rate(r["output"]) for r in records]
    return {**result.overall, "Rep3": 100.0 * sum(reps) / max(1, len(reps)),
            "ci95": {k: list(v) for k, v in result.intervals.items()}, "n": len(records)}


__all__ = ["score_description", "repetition_rate", "summarize"]
