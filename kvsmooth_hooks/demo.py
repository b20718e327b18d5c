"""``kvsmooth demo``: what smoothing is for, on SmolLM2-135M and a CPU, in about a minute.

The demo uses the grounded-text proxy's scenes (:mod:`kvsmooth_hooks.benchmarks.grounded`): the prompt lists the
objects a photo shows and asks for a description, so every COCO object the model mentions is either
*grounded* (it is in the scene) or *invented* (it is not). It prints

1. one scene, baseline and smoothed side by side, every mentioned object marked (colour on a terminal,
   ``[+dog]`` grounded / ``[!cat]`` invented otherwise);
2. a small batch of scenes (both arms, same greedy settings) with CHAIR_S, CHAIR_I, Recall and the
   repetition rate Rep3 per arm, bootstrap 95% intervals, and a paired bootstrap of each difference,
   read in one honest sentence.

This module is an application (like the CLI): it generates through the runner's loop
(:func:`kvsmooth_hooks.runner.engine.generate_records`) and scores with the evaluation package; nothing in the
core imports it.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .core.errors import UserError

#: Demo setting, picked from the grounded-proxy measurements in docs/evaluation.md: on this 135M text model
#: the paper's lambda_ref 0.9 on layers 3..L-2 collapses the text into repetition (Rep3 2.6 -> 28), while
#: lambda_ref 0.5 on the upper half (layers 15..28) keeps the prose and invents fewer objects.
DEMO_DEFAULTS = {"lambda_ref": 0.5, "layers": "15:-1"}
#: Scenes of the batch (seed 0, scenes 0..N-1 of the grounded proxy).
DEMO_SCENES = 20
#: The scene shown side by side: scene 74 of seed 0, chosen from the recorded runs (docs/results/grounded_smollm2)
#: because it shows the effect in one line: the baseline adds a pizza the prompt never listed, the smoothed
#: model writes the same sentence without it. It is an illustration, deliberately not one of the batch's
#: scenes; the batch (scenes 0..N-1) says how often this happens.
DEMO_SCENE = 74
DEMO_SEED = 0
DEMO_MAX_NEW_TOKENS = 64

_MARK = re.compile(r"\[([+!])([^\]]+)\]")
_GREEN, _RED, _RESET = "\033[32m", "\033[1;31m", "\033[0m"


# ---------------------------------------------------------------------- marking
@dataclass
class Marked:
    """One text with its object mentions: ``text`` carries ``[+obj]`` / ``[!obj]`` markers."""

    text: str
    grounded: list[str] = field(default_factory=list)  # categories, first-mention order, distinct
    invented: list[str] = field(default_factory=list)


def _token_spans(text: str, tokens: list[str]) -> list[tuple[int, int] | None]:
    """Character span of each tokenizer token in ``text`` (None where the tokenizer rewrote it, e.g. quotes)."""
    low = text.lower()
    spans, cursor = [], 0
    for tok in tokens:
        at = low.find(tok, cursor)
        if at < 0 or any(ch.isalnum() for ch in low[cursor:at]):  # never skip over a word
            spans.append(None)
            continue
        spans.append((at, at + len(tok)))
        cursor = at + len(tok)
    return spans


def mark_objects(text: str, scene_objects, extractor=None) -> Marked:
    """Mark every COCO object mention of ``text``: ``[+word]`` when its category is in ``scene_objects``,
    ``[!word]`` when it is not. Mentions are found by the CHAIR extractor (lemmas, synonyms, two-word
    objects such as "hair drier"), so the markers agree with the CHAIR numbers."""
    from .eval.coco_objects import ObjectExtractor
    from .eval.lemmatize import tokenize

    extractor = extractor or ObjectExtractor("offline")
    scene = set(scene_objects)
    tokens = tokenize(text.lower())
    lemmas = extractor.lemmatizer(text)
    merged, starts = extractor.merge_double_words(lemmas)
    spans = _token_spans(text, tokens) if len(tokens) == len(lemmas) else [None] * len(lemmas)
    ext = extractor.extract(text)
    ends = {s: (starts[i + 1] if i + 1 < len(starts) else len(lemmas)) for i, s in enumerate(starts)}
    out = Marked(text)
    edits = []
    for m in ext.mentions:
        ok = m.category in scene
        bucket = out.grounded if ok else out.invented
        if m.category not in bucket:
            bucket.append(m.category)
        first, last = spans[m.index], spans[ends[m.index] - 1]
        if first is not None and last is not None:
            edits.append((first[0], last[1], "+" if ok else "!"))
    marked = text
    for start, end, sign in sorted(edits, reverse=True):
        marked = marked[:start] + f"[{sign}{marked[start:end]}]" + marked[end:]
    out.text = marked
    return out


def render(line: str, color: bool) -> str:
    """A marked line for the screen: markers become colours, or stay as they are."""
    if not color:
        return line
    return _MARK.sub(lambda m: f"{_GREEN if m.group(1) == '+' else _RED}{m.group(2)}{_RESET}", line)


def visible_len(line: str) -> int:
    return len(re.sub(r"\033\[[0-9;]*m", "", line))


def side_by_side(titles, texts, width: int, color: bool) -> list[str]:
    """Two marked texts in two columns (markers never split across lines)."""
    col = max(20, (width - 3) // 2)

    def wrap(t: str) -> list[str]:
        protected = _MARK.sub(lambda m: m.group(0).replace(" ", "\u00a0"), t)
        return [render(x.replace("\u00a0", " "), color) for x in (textwrap.wrap(protected, col) or [""])]

    left, right = wrap(texts[0]), wrap(texts[1])
    lines = [f"{titles[0]:<{col}} | {titles[1]}", "-" * col + "-+-" + "-" * col]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        lines.append(a + " " * max(0, col - visible_len(a)) + " | " + b)
    return lines


# ---------------------------------------------------------------------- statistics
def _columns(records: list[dict]) -> dict[str, np.ndarray]:
    return {
        "one": np.ones(len(records)),
        "hall_caption": np.array([r["CHAIR_S"] for r in records], dtype=float),
        "hall": np.array([len(r["hallucinated_objects"]) for r in records], dtype=float),
        "mentions": np.array([len(r["mentioned_objects"]) for r in records], dtype=float),
        "correct": np.array([len(r["correct_objects"]) for r in records], dtype=float),
        "gt": np.array([len(r["objects"]) for r in records], dtype=float),
        "rep3": np.array([r["Rep3"] for r in records], dtype=float),
    }


METRICS = {
    "CHAIR_S": ("hall_caption", "one"),
    "CHAIR_I": ("hall", "mentions"),
    "Recall": ("correct", "gt"),
    "Rep3": ("rep3", "one"),
}
#: which direction is better for each metric (for the one-line reading)
LOWER_IS_BETTER = {"CHAIR_S": True, "CHAIR_I": True, "Recall": False, "Rep3": True}


def _ratio(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def compare_arms(base: list[dict], smoothed: list[dict], n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """Per metric: each arm's value with its bootstrap 95% interval, and the paired difference
    (smoothed - baseline, resampling scenes jointly) with its interval. Records are the runner's records
    (``id``, ``objects``, ``output``) with :func:`~kvsmooth_hooks.eval.grounded.score_description`'s fields, in
    the same scene order for both arms."""
    from .eval.bootstrap import bootstrap_intervals

    if [r["id"] for r in base] != [r["id"] for r in smoothed]:
        raise UserError("compare_arms: both arms must hold the same scenes in the same order")
    cols = {f"b.{k}": v for k, v in _columns(base).items()} | {f"s.{k}": v for k, v in _columns(smoothed).items()}
    stats = {}
    for name, (num, den) in METRICS.items():
        stats[f"b.{name}"] = lambda s, n=num, d=den: _ratio(s[f"b.{n}"], s[f"b.{d}"])
        stats[f"s.{name}"] = lambda s, n=num, d=den: _ratio(s[f"s.{n}"], s[f"s.{d}"])
        stats[f"d.{name}"] = lambda s, n=num, d=den: _ratio(s[f"s.{n}"], s[f"s.{d}"]) - _ratio(s[f"b.{n}"], s[f"b.{d}"])
    ci = bootstrap_intervals(cols, stats, n_resamples=n_bootstrap, seed=seed)
    sums = {k: np.asarray(v.sum()) for k, v in cols.items()}
    out = {}
    for name in METRICS:
        b, s = float(stats[f"b.{name}"](sums)), float(stats[f"s.{name}"](sums))
        out[name] = {"baseline": b, "smoothed": s, "diff": s - b, "ci_baseline": ci[f"b.{name}"],
                     "ci_smoothed": ci[f"s.{name}"], "ci_diff": ci[f"d.{name}"]}
    return out


def reading(cmp: dict, n: int) -> str:
    """One sentence on what the numbers show: a difference counts only when its paired interval excludes 0."""
    better, worse, noise = [], [], []
    for name, r in cmp.items():
        lo, hi = r["ci_diff"]
        if not (lo > 0 or hi < 0):
            noise.append(name)
            continue
        good = (r["diff"] < 0) == LOWER_IS_BETTER[name]
        (better if good else worse).append(f"{name} {r['baseline']:.1f} -> {r['smoothed']:.1f}")
    parts = []
    if better:
        parts.append("smoothing improves " + ", ".join(better))
    if worse:
        parts.append("it worsens " + ", ".join(worse))
    if noise:
        parts.append(("the differences in " if parts else "all differences (") + ", ".join(noise)
                     + (" are within noise" if parts else ") are within noise"))
    text = "; ".join(parts)
    return (f"Reading: on {n} scenes, {text} (a difference counts only when its paired bootstrap 95% interval "
            f"excludes 0). This is a text-only proxy: the objects are in the prompt, so it measures invented "
            f"objects, not visual grounding.")


def format_table(cmp: dict) -> list[str]:
    head = f"{'metric':<8} {'baseline':>22} {'KVSmooth':>22} {'difference':>24}"
    lines = [head, "-" * len(head)]
    for name, r in cmp.items():
        def cell(v, ci):
            return f"{v:5.1f} [{ci[0]:5.1f}, {ci[1]:5.1f}]"

        lines.append(f"{name:<8} {cell(r['baseline'], r['ci_baseline']):>22} {cell(r['smoothed'], r['ci_smoothed']):>22} "
                     f"{r['diff']:+6.1f} [{r['ci_diff'][0]:+5.1f}, {r['ci_diff'][1]:+5.1f}]")
    return lines


# ---------------------------------------------------------------------- generation
def _answer(bundle, items, cfg, max_new_tokens: int, trace: bool = False, bar=None):
    """Records of ``items`` (greedy, batches of 10) through the runner's generation loop; ``cfg`` None =
    unhooked. Returns (records, the last batch's session)."""
    from .runner.engine import generate_records

    records, session = [], None
    gen = {"max_new_tokens": max_new_tokens, "do_sample": False}
    for batch, session in generate_records(bundle, items, cfg, gen, batch_size=10, trace=trace):
        records += batch
        if bar is not None:
            bar.update(len(batch))
    return records, session


def check_output_path(path: str | None, suffix: str, what: str) -> None:
    """Refuse an output path before any work: a directory, a missing parent folder, or the wrong suffix."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} '{path}' is a directory; give a file name such as '{p / ('out' + suffix)}'")
    if p.suffix.lower() != suffix:
        raise UserError(f"{what} '{path}' must end in {suffix} (the file is written as {suffix[1:]}); "
                         f"e.g. '{p.with_suffix(suffix)}'")
    if not p.parent.is_dir():
        raise UserError(f"the folder of {what} '{path}' does not exist; create '{p.parent}' first")


def use_color(choice: str) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def run_demo(cfg, model, tok, *, prompt: str | None = None, n_scenes: int = DEMO_SCENES, scene: int = DEMO_SCENE,
             seed: int = DEMO_SEED, max_new_tokens: int = DEMO_MAX_NEW_TOKENS, width: int = 120, color: bool = False,
             layer_table: bool = False, save_trace: str | None = None, progress: bool = True, echo=print) -> dict:
    """The demo on a loaded model. Returns what it printed as data (texts, marks, comparison)."""
    from .benchmarks.base import Item
    from .benchmarks.grounded import make_scenes
    from .eval.grounded import score_description
    from .runner.models import hf_bundle

    bundle = hf_bundle(model, tok)
    result: dict = {"config": cfg.to_dict()}
    echo(f"config: site={cfg.site} lambda_ref={cfg.lambda_ref} window={cfg.window} clip={cfg.clip} "
         f"layers={cfg.layers} scorer={cfg.scorer.name} policy={cfg.policy}")
    if prompt is not None:
        shown_prompt, objects = prompt, None
    else:
        scenes = make_scenes(max(n_scenes, scene + 1), seed)
        shown = scenes[scene]
        shown_prompt, objects = shown.prompt(), shown.objects
        echo(f"\nScene {shown.scene_id}: the prompt lists {shown.phrase()}.")
    echo(f'Prompt: "{shown_prompt}"\n')
    shown_item = Item(shown.scene_id if objects is not None else "prompt", shown_prompt, None,
                      {"objects": list(objects)} if objects is not None else {})
    shown_records, sessions = [], []
    for arm in (None, cfg):
        recs, s = _answer(bundle, [shown_item], arm, max_new_tokens, trace=arm is not None)
        shown_records.append(recs[0])
        sessions.append(s)
    texts = [r["output"] for r in shown_records]
    if objects is not None:
        marks = [mark_objects(t, objects) for t in texts]
        for line in side_by_side(("baseline", "KVSmooth"), [m.text for m in marks], width, color):
            echo(line)
        col = max(20, (width - 3) // 2)
        counts = [f"{len(m.grounded)} grounded, {len(m.invented)} invented" + (f" ({', '.join(m.invented)})" if m.invented else "")
                  for m in marks]
        echo("-" * col + "-+-" + "-" * col)
        echo(f"{counts[0]:<{col}} | {counts[1]}")
        legend = (f"{_GREEN}green{_RESET}: in the scene (grounded); {_RED}red{_RESET}: not in the scene (invented)"
                  if color else "[+obj]: in the scene (grounded); [!obj]: not in the scene (invented)")
        echo(legend)
        result["marks"] = [m.__dict__ for m in marks]
    else:
        for line in side_by_side(("baseline", "KVSmooth"), texts, width, False):
            echo(line)
    result["texts"] = texts
    session = sessions[1]
    if layer_table:
        echo(f"\n{'layer':>5}  {'entropy':>8}  {'lambda mean':>11}  {'min':>5}  {'max':>5}")
        for r in session.trace.summary():
            echo(f"{r['layer']:>5}  {r['score_mean']:8.3f}  {r['lambda_mean']:11.3f}  {r['lambda_min']:5.2f}  {r['lambda_max']:5.2f}")
    if save_trace:
        session.trace.save(save_trace)
        echo(f"trace written to {save_trace}")
    if prompt is not None or n_scenes <= 0:
        return result

    # the batch: the shown scene's outputs are reused, the others generated in batches of 10
    from tqdm.auto import tqdm

    items = [Item(s.scene_id, s.prompt(), None, {"objects": list(s.objects)}) for s in scenes[:n_scenes]]
    others = [it for i, it in enumerate(items) if i != scene]
    arms = {"baseline": None, "KVSmooth": cfg}
    t0 = time.perf_counter()
    bar = tqdm(total=2 * len(others), desc="batch of scenes", disable=not progress, file=sys.stderr)
    generated = {}
    for i, (name, arm) in enumerate(arms.items()):
        recs, _ = _answer(bundle, others, arm, max_new_tokens, bar=bar)
        generated[name] = {r["id"]: r for r in recs} | {shown_item.id: shown_records[i]}  # the shown scene reused
    bar.close()
    # the shown scene counts only when it is one of the batch: no hand-picked item in the numbers
    records = {name: [{**generated[name][it.id], **score_description(generated[name][it.id]["output"],
                                                                      it.meta["objects"])} for it in items]
               for name in arms}
    cmp = compare_arms(records["baseline"], records["KVSmooth"])
    echo(f"\nBatch: scenes 0-{len(items) - 1} of seed {seed}" + ("" if scene < n_scenes else " (the scene above is not one "
         "of them)") + f", greedy, {max_new_tokens} new tokens, "
         f"{time.perf_counter() - t0:.0f} s. Percent; brackets: bootstrap 95% intervals over scenes; "
         "difference = KVSmooth - baseline, paired.")
    for line in format_table(cmp):
        echo(line)
    echo(textwrap.fill(reading(cmp, len(items)), width))
    echo(textwrap.fill("More scenes narrow the intervals: `kvsmooth demo --scenes 100` (about 5x the batch time); "
                       "measured runs of 100 scenes are in docs/evaluation.md.", width))
    result.update(records=records, comparison=cmp)
    return result


__all__ = ["DEMO_DEFAULTS", "mark_objects", "side_by_side", "compare_arms", "reading", "run_demo", "check_output_path"]
