"""The grounded-text CHAIR proxy as a benchmark: a text model describes scenes given in words (CPU-sized).

No data folder: scene ``i`` of seed ``s`` is a deterministic set of 3-6 COCO categories (:func:`make_scenes`);
the prompt names them and asks for a description; every other COCO object the model mentions is a
hallucination. It measures a text model's tendency to add objects, not visual grounding (see
docs/evaluation.md): use it for cheap ablations on SmolLM2, never as CHAIR.
Items: scenes ``0..n-1`` of ``seed`` (``meta``: the scene's ``objects``); 64 new tokens, greedy. Score
(:func:`kvsmooth_hooks.eval.grounded.summarize`): CHAIR_S, CHAIR_I, Recall, Precision, F1, Len, Rep3 (share of
repeated word 3-grams) with bootstrap intervals. ``kvsmooth eval grounded`` is the runner with this benchmark
and its own defaults (:mod:`kvsmooth_hooks.runner.grounded_cli`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..eval.coco_objects import coco_categories
from ..eval.grounded import summarize
from .base import Benchmark, BenchmarkError, Item
from .registry import register_benchmark

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
        raise BenchmarkError(f"benchmark 'grounded': --set min_objects={min_objects} / max_objects={max_objects}: "
                             "need 1 <= min_objects <= max_objects <= 80")
    cats = sorted(coco_categories())
    scenes = []
    for i in range(n):
        rng = random.Random(f"kvsmooth-grounded:{seed}:{i}")
        k = rng.randint(min_objects, max_objects)
        scenes.append(Scene(f"s{seed}-{i:05d}", tuple(rng.sample(cats, k))))
    return scenes


@register_benchmark
class Grounded(Benchmark):
    name = "grounded"
    modality = "text"
    max_new_tokens = 64
    metrics = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len", "Rep3")
    lower_is_better = ("CHAIR_S", "CHAIR_I", "Rep3")
    plot_metrics = ("CHAIR_S", "Recall")
    options = {"min_objects": 3, "max_objects": 6}

    def __init__(self, data=None, **options):
        super().__init__(data, **options)
        make_scenes(0, 0, self.opts["min_objects"], self.opts["max_objects"])  # refuse bad options now

    def items(self, n, seed):
        scenes = make_scenes(100 if n is None else n, seed, self.opts["min_objects"], self.opts["max_objects"])
        return [Item(s.scene_id, s.prompt(), None, {"objects": list(s.objects)}) for s in scenes]

    def score(self, records, n_bootstrap=1000, seed=0):
        return summarize(records, n_bootstrap=n_bootstrap, seed=seed)


__all__ = ["Grounded", "Scene", "make_scenes", "PROMPT"]
