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

Generating the descriptions (the part that runs a model, with or without smoothing) is the ``grounded``
benchmark of the experiment runner, :mod:`kvsmooth_hooks.benchmarks.grounded`: this module only scores.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .chair import ChairEvaluator
from .coco_objects import coco_categories

PROMPT = "Describe this photo in a few sentences. The photo shows exactly these objects: {objects}."
_PHRASES = {"skis": "a pair of skis", "scissors": "a pair of scissors", "broccoli": "some broccoli",
            "person": "a person"}


@dataclass(frozen=True)
class Scene:
    """One synthetic scene: ``scene_id`` (stable for a seed and index) and its COCO categories."""

    scene_id: str
    objects: tuple[str, ...]

    def phrase(self) -> str:
        items = [_PHRASES.get(o, ("an " if o[0] in "aeiou" else "a ") + o) for o in self.objects]
        return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]

    def prompt(self, template: str = PROMPT) -> str:
        return template.format(objects=self.phrase())


def make_scenes(n: int, seed: int = 0, min_objects: int = 3, max_objects: int = 6) -> list[Scene]:
    """``n`` scenes; scene ``i`` depends only on ``(seed, i)``, so a larger ``n`` extends a smaller one."""
    if not 1 <= min_objects <= max_objects <= 80:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 80, got {min_objects}, {max_objects}")
    cats = sorted(coco_categories())
    scenes = []
    for i in range(n):
        rng = random.Random(f"kvsmooth-grounded:{seed}:{i}")
        k = rng.randint(min_objects, max_objects)
        scenes.append(Scene(f"s{seed}-{i:05d}", tuple(rng.sample(cats, k))))
    return scenes


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
    """Corpus-level CHAIR over scored samples (percent), with bootstrap intervals."""
    gt = {r["scene_id"]: r["objects"] for r in records}
    result = ChairEvaluator(gt).evaluate([{"image_id": r["scene_id"], "caption": r["description"]} for r in records],
                                         n_bootstrap=n_bootstrap, seed=seed)
    secs = [r["seconds"] for r in records]
    reps = [r.get("Rep3", repetition_rate(r["description"])) for r in records]
    return {**result.overall, "Rep3": 100.0 * sum(reps) / max(1, len(reps)),
            "ci95": {k: list(v) for k, v in result.intervals.items()}, "n": len(records),
            "seconds_per_sample": sum(secs) / len(secs) if secs else 0.0}


__all__ = ["Scene", "make_scenes", "score_description", "repetition_rate", "summarize", "PROMPT"]
