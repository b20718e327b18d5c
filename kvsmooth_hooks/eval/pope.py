"""POPE and OPOPE: yes/no object-probing metrics.

POPE (Li et al., *Evaluating Object Hallucination in Large Vision-Language
Models*, EMNLP 2023) asks "Is there a <object> in the image?" for objects that
are present (label ``yes``) or absent (``no``; sampled at random, by
popularity, or adversarially by co-occurrence).  Question files are JSON lines
``{"question_id", "image", "text", "label"}``; answers ``{"question_id", "text"}``.

Answer parsing, ``rule="official"`` (POPE ``evaluate.py``): keep the text before
the first period, drop commas, split on spaces; the answer is *no* if one of the
words is ``No``, ``no`` or ``not``, otherwise *yes*.  ``rule="substring"`` is
the looser variant used by several decoding papers' scripts (VCD and followers):
*yes* if the lower-cased answer contains ``yes``, otherwise *no*.

OPOPE (offline POPE, as in HALC, Chen et al. ICML 2024) answers the POPE
questions from a free-form caption instead of asking the model: *yes* if any
word of the object name occurs among the caption's words (lower-cased, plural
``s``/``es`` forms accepted).

Metrics: accuracy, precision, recall and F1 with *yes* as the positive class,
and the yes-ratio, all in percent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .bootstrap import bootstrap_intervals, safe_ratio
from .records import EvalInputError, normalize_image_id, read_records

__all__ = [
    "parse_yes_no",
    "binary_metrics",
    "PopeResult",
    "compute_pope",
    "compute_opope",
    "caption_says_yes",
    "object_from_question",
    "POPE_RULES",
]

POPE_RULES = ("official", "substring")


def parse_yes_no(text: str, rule: str = "official") -> str:
    """Map a free-form answer to ``"yes"`` or ``"no"``."""
    if rule == "official":
        if "." in text:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if ("No" in words or "no" in words or "not" in words) else "yes"
    if rule == "substring":
        return "yes" if "yes" in text.lower() else "no"
    raise ValueError(f"unknown POPE answer rule {rule!r}; choose one of {', '.join(POPE_RULES)}")


def binary_metrics(preds: Sequence[str], labels: Sequence[str], positive: str = "yes") -> dict[str, float]:
    """Accuracy, precision, recall, F1 (``positive`` is the positive class) and
    the ratio of ``positive`` predictions, in percent; plus TP/FP/TN/FN counts."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    tp = sum(p == positive and l == positive for p, l in zip(preds, labels))
    fp = sum(p == positive and l != positive for p, l in zip(preds, labels))
    tn = sum(p != positive and l != positive for p, l in zip(preds, labels))
    fn = sum(p != positive and l == positive for p, l in zip(preds, labels))
    precision = safe_ratio(tp, tp + fp)
    recall = safe_ratio(tp, tp + fn)
    return {
        "Accuracy": 100.0 * safe_ratio(tp + tn, len(preds)),
        "Precision": 100.0 * precision,
        "Recall": 100.0 * recall,
        "F1": 100.0 * safe_ratio(2 * precision * recall, precision + recall),
        "YesRatio": 100.0 * safe_ratio(tp + fp, len(preds)),
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
    }


def _binary_intervals(preds, labels, n_bootstrap, seed, positive="yes"):
    p = np.array([x == positive for x in preds], dtype=float)
    l = np.array([x == positive for x in labels], dtype=float)
    cols = {"one": np.ones(len(p)), "tp": p * l, "fp": p * (1 - l), "tn": (1 - p) * (1 - l), "fn": (1 - p) * l}

    def f1(s):
        prec = s["tp"] / (s["tp"] + s["fp"])
        rec = s["tp"] / (s["tp"] + s["fn"])
        return 100.0 * 2 * prec * rec / (prec + rec)

    stats = {
        "Accuracy": lambda s: 100.0 * (s["tp"] + s["tn"]) / s["one"],
        "Precision": lambda s: 100.0 * s["tp"] / (s["tp"] + s["fp"]),
        "Recall": lambda s: 100.0 * s["tp"] / (s["tp"] + s["fn"]),
        "F1": f1,
        "YesRatio": lambda s: 100.0 * (s["tp"] + s["fp"]) / s["one"],
    }
    return bootstrap_intervals(cols, stats, n_resamples=n_bootstrap, seed=seed)


@dataclass
class PopeResult:
    """POPE/OPOPE metrics (percent), per-question records and bootstrap intervals."""

    overall: dict[str, float]
    items: list[dict]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"overall": dict(self.overall), "ci95": {k: list(v) for k, v in self.intervals.items()},
                "items": list(self.items)}

    def summary(self) -> str:
        lines = []
        for k in ("Accuracy", "Precision", "Recall", "F1", "YesRatio"):
            ci = self.intervals.get(k)
            tail = f"  (95% CI {ci[0]:.1f}-{ci[1]:.1f})" if ci and np.isfinite(ci[0]) else ""
            lines.append(f"{k:<10}: {self.overall[k]:6.1f}{tail}")
        lines.append(f"{'questions':<10}: {len(self.items):6d}")
        return "\n".join(lines)


def _norm_label(value: Any, where: str) -> str:
    s = str(value).strip().lower()
    if s in ("yes", "1", "true"):
        return "yes"
    if s in ("no", "0", "false"):
        return "no"
    raise EvalInputError(f"{where}: label {value!r} is not yes/no")


def _load_questions(questions) -> list[dict]:
    if isinstance(questions, (str, Path)):
        return read_records(questions, required=("question_id", "label"), what="POPE question")
    return list(questions)


def compute_pope(
    questions: str | Path | Iterable[Mapping[str, Any]],
    answers: str | Path | Iterable[Mapping[str, Any]],
    rule: str = "official",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> PopeResult:
    """POPE metrics of model ``answers`` for ``questions`` (files or record lists).

    Answers are matched to questions by ``question_id``; every question must
    have an answer.
    """
    qs = _load_questions(questions)
    ans = read_records(answers, required=("question_id", "text"), what="POPE answer") if isinstance(answers, (str, Path)) else list(answers)
    by_id: dict[Any, str] = {}
    for a in ans:
        by_id[normalize_image_id(a["question_id"])] = a["text"]
    preds, labels, items = [], [], []
    for i, q in enumerate(qs):
        qid = normalize_image_id(q["question_id"])
        if qid not in by_id:
            raise EvalInputError(f"no answer for question_id {q['question_id']!r} (question {i + 1}); answers must cover every question")
        label = _norm_label(q["label"], f"question_id {q['question_id']!r}")
        pred = parse_yes_no(by_id[qid], rule)
        preds.append(pred)
        labels.append(label)
        items.append({"question_id": q["question_id"], "label": label, "pred": pred, "answer": by_id[qid]})
    overall = binary_metrics(preds, labels)
    intervals = _binary_intervals(preds, labels, n_bootstrap, seed) if n_bootstrap else {}
    return PopeResult(overall=overall, items=items, intervals=intervals)


_QUESTION_RE = re.compile(r"is there (?:an? |the |any |some )?(.+?)\s+in the (?:image|picture|photo)", re.I)


def object_from_question(text: str) -> str:
    """The object of a POPE question ("Is there a dining table in the image?" → "dining table")."""
    m = _QUESTION_RE.search(text)
    if not m:
        raise EvalInputError(f"cannot find the object in POPE question {text!r}; give an 'object' field")
    return m.group(1).strip().lower()


def _caption_words(caption: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", caption.lower()))


def caption_says_yes(caption: str, object_name: str) -> bool:
    """OPOPE decision: does any word of ``object_name`` occur in ``caption``?"""
    words = _caption_words(caption)
    for w in re.findall(r"[a-z0-9]+", object_name.lower()):
        if w in words or w + "s" in words or w + "es" in words:
            return True
    return False


def _image_key(value: Any) -> Any:
    """COCO file names map to their numeric id ("COCO_val2014_000000000042.jpg" → 42)."""
    if isinstance(value, str):
        m = re.search(r"(\d+)\.(?:jpg|jpeg|png)$", value)
        if m:
            return int(m.group(1))
    return normalize_image_id(value)


def compute_opope(
    questions: str | Path | Iterable[Mapping[str, Any]],
    captions: str | Path | Iterable[Mapping[str, Any]],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> PopeResult:
    """OPOPE: answer POPE ``questions`` from one caption per image.

    Captions carry ``image_id`` (or ``image``) and ``caption``; questions carry
    ``image``, ``text`` (or ``object``) and ``label``.
    """
    qs = _load_questions(questions)
    if isinstance(captions, (str, Path)):
        caps = read_records(captions, required=("caption",), what="caption")
    else:
        caps = list(captions)
    by_image: dict[Any, str] = {}
    for i, c in enumerate(caps):
        key = c.get("image_id", c.get("image"))
        if key is None:
            raise EvalInputError(f"caption {i + 1}: missing field 'image_id' (or 'image')")
        by_image[_image_key(key)] = c["caption"]
    preds, labels, items = [], [], []
    for i, q in enumerate(qs):
        img = q.get("image", q.get("image_id"))
        if img is None:
            raise EvalInputError(f"question {i + 1}: missing field 'image' (or 'image_id')")
        key = _image_key(img)
        if key not in by_image:
            raise EvalInputError(f"no caption for image {img!r} (question {i + 1})")
        obj = q.get("object") or object_from_question(q.get("text", ""))
        pred = "yes" if caption_says_yes(by_image[key], obj) else "no"
        label = _norm_label(q["label"], f"question {i + 1}")
        preds.append(pred)
        labels.append(label)
        items.append({"question_id": q.get("question_id", i), "object": obj, "label": label, "pred": pred})
    overall = binary_metrics(preds, labels)
    intervals = _binary_intervals(preds, labels, n_bootstrap, seed) if n_bootstrap else {}
    return PopeResult(overall=overall, items=items, intervals=intervals)
