"""The grounded-text CHAIR proxy as a benchmark: a text model describes scenes given in words (CPU-sized).

No data folder: scene ``i`` of seed ``s`` is a deterministic set of 3-6 COCO categories
(:func:`kvsmooth_hooks.eval.grounded.make_scenes`); the prompt names them and asks for a description; every
other COCO object the model mentions is a hallucination. It measures a text model's tendency to add objects,
not visual grounding (see docs/evaluation.md): use it for cheap ablations on SmolLM2, never as CHAIR.
Items: scenes ``0..n-1`` of ``seed``; 64 new tokens, greedy. Score: CHAIR_S, CHAIR_I, Recall, Precision, F1,
Len, Rep3 (share of repeated word 3-grams) with bootstrap intervals.

This module also holds the stand-alone generation loop of ``kvsmooth eval grounded``
(:func:`run_grounded_chair`, :func:`evaluate_config`), moved here from ``eval/`` because it runs the session.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..eval.grounded import PROMPT, Scene, make_scenes, repetition_rate, score_description, summarize
from ..eval.records import append_jsonl, read_resumable_jsonl
from .registry import register_benchmark
from .base import Benchmark, Item


@register_benchmark
class Grounded(Benchmark):
    name = "grounded"
    modality = "text"
    max_new_tokens = 64
    metrics = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len", "Rep3")
    lower_is_better = ("CHAIR_S", "CHAIR_I", "Rep3")
    plot_metrics = ("CHAIR_S", "Recall")
    options = {"min_objects": 3, "max_objects": 6}

    def items(self, n, seed):
        scenes = make_scenes(100 if n is None else n, seed, self.opts["min_objects"], self.opts["max_objects"])
        return [Item(s.scene_id, s.prompt(), None, {"objects": list(s.objects)}) for s in scenes]

    def score(self, records, n_bootstrap=1000, seed=0):
        recs = [{"scene_id": r["id"], "objects": r["objects"], "description": r["output"], "seconds": r["seconds"],
                 "Rep3": repetition_rate(r["output"])} for r in records]
        out = summarize(recs, n_bootstrap=n_bootstrap, seed=seed)
        out.pop("seconds_per_sample", None)
        return out


# ---------------------------------------------------------------------- kvsmooth eval grounded
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

    from ..models import chat_inputs
    from ..core.session import generate

    out = Path(out_jsonl) if out_jsonl else None
    done = read_resumable_jsonl(out, "scene_id", key_fn=str) if out else {}
    todo = [s for s in scenes if s.scene_id not in done]
    bar = tqdm(total=len(scenes), initial=len(scenes) - len(todo), desc="grounded CHAIR", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        enc = chat_inputs(tokenizer, [s.prompt() for s in batch]).to(model.device)
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
                append_jsonl(out, [rec])
        bar.update(len(batch))
    bar.close()
    return summarize([done[s.scene_id] for s in scenes], n_bootstrap=n_bootstrap, seed=seed)




def _check_resume(out: Path, settings: dict) -> None:
    """Samples already in ``out`` must come from the same generation settings, or resuming would mix runs.

    ``n_scenes`` may grow (scene ``i`` does not depend on ``n``), so a larger run can extend a smaller one.
    """
    from ..eval.records import check_run_settings

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


__all__ = ["Grounded", "run_grounded_chair", "evaluate_config", "Scene"]
