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
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
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


def _chat_texts(tokenizer, prompts: list[str]) -> list[str]:
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
                for p in prompts]
    return [p + "\n" for p in prompts]


def _read_done(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted run: redo that sample
                continue
            done[rec["scene_id"]] = rec
    return done


def run_grounded_chair(model, tokenizer, scenes: list[Scene], config=None, out_jsonl: str | Path | None = None,
                       batch_size: int = 10, max_new_tokens: int = 64, progress: bool = True,
                       n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Generate a description per scene (greedy) and score it; resumable through ``out_jsonl``.

    ``config`` (a :class:`~kvsmooth_hooks.KVSmoothConfig` or plan) runs generation inside
    ``smooth(model, config)``; ``None`` is the unhooked baseline. Returns the summary (percent metrics,
    bootstrap 95% intervals, seconds per sample).
    """
    import torch
    from tqdm.auto import tqdm

    from ..session import generate

    out = Path(out_jsonl) if out_jsonl else None
    done = _read_done(out) if out else {}
    todo = [s for s in scenes if s.scene_id not in done]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bar = tqdm(total=len(scenes), initial=len(scenes) - len(todo), desc="grounded CHAIR", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        texts = _chat_texts(tokenizer, [s.prompt() for s in batch])
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            gen = generate(model, config, **enc, max_new_tokens=max_new_tokens, do_sample=False)
        seconds = (time.perf_counter() - t0) / len(batch)
        n_in = enc["input_ids"].shape[1]
        for scene, row in zip(batch, gen):
            text = tokenizer.decode(row[n_in:], skip_special_tokens=True).strip()
            rec = {"scene_id": scene.scene_id, "objects": list(scene.objects), "prompt": scene.prompt(),
                   "description": text, "seconds": round(seconds, 4), **score_description(text, scene.objects)}
            done[scene.scene_id] = rec
            if out:
                with out.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
        bar.update(len(batch))
    bar.close()
    return summarize([done[s.scene_id] for s in scenes], n_bootstrap=n_bootstrap, seed=seed)


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


def _check_resume(out: Path, settings: dict) -> None:
    """Samples already in ``out`` must come from the same generation settings, or resuming would mix runs.

    ``n_scenes`` may grow (scene ``i`` does not depend on ``n``), so a larger run can extend a smaller one.
    """
    from .records import check_run_settings

    check_run_settings(out, {k: v for k, v in settings.items() if k != "n_scenes"}, legacy_marker="samples.jsonl")


def evaluate_config(model, tokenizer, config, n_scenes: int = 100, seed: int = 0, out_dir: str | Path | None = None,
                    max_new_tokens: int = 64, batch_size: int = 10, progress: bool = True) -> dict[str, Any]:
    """The ablation scripts' default metric: grounded CHAIR of one config (``None`` = baseline).

    With ``out_dir``: per-sample ``samples.jsonl`` (resumable: rerun to continue; a rerun with other
    settings is refused, see ``settings.json``) and ``summary.json`` (with the config).
    Summary keys: CHAIR_S, CHAIR_I, Recall, Precision, F1 (percent), Len (tokens), Rep3 (percent),
    ci95 (bootstrap 95% intervals), n, seconds_per_sample, settings.
    """
    scenes = make_scenes(n_scenes, seed)
    out = Path(out_dir) if out_dir else None
    settings = {"n_scenes": n_scenes, "seed": seed, "max_new_tokens": max_new_tokens, "prompt": PROMPT,
                "config": config.to_dict() if hasattr(config, "to_dict") else None}
    if out:
        _check_resume(out, settings)
    summary = run_grounded_chair(model, tokenizer, scenes, config, out / "samples.jsonl" if out else None,
                                 batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    summary["settings"] = settings
    if out:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["Scene", "make_scenes", "score_description", "run_grounded_chair", "summarize", "evaluate_config", "PROMPT"]
