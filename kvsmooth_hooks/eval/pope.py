"""POPE and OPOPE: yes/no object-probing metrics, as the official scripts compute them.

POPE (Li et al., *Evaluating Object Hallucination in Large Vision-Language Models*, EMNLP 2023) asks
"Is there a <object> in the image?" for objects that are present (label ``yes``) or absent (``no``).

Question files are read as RUCAIBox/POPE distributes them (JSON Lines in files named ``.json``, one
``{"question_id", "image", "text", "label"}`` per line).  Answer files are read in the three shapes in use
(recognised by content, see :func:`load_pope_answers`):

* POPE ``evaluate.py``: ``{"question", "answer"}`` per line, paired with the questions *by position*;
* LLaVA ``model_vqa_loader`` / ``eval_pope.py``: ``{"question_id", "text", ...}``, matched by id;
* VCD ``object_hallucination_vqa_*.py``: ``{"question_id", "prompt", "text", "model_id", ...}``, by id.

Answer parsing rules (``rule=``):

* ``"official"`` (default; POPE ``evaluate.py`` and LLaVA ``eval_pope.py``, identical): keep the text
  before the first ``.``, drop commas, split on single spaces; *no* if one of the words is ``No``,
  ``no`` or ``not``, otherwise *yes* (so ``NO`` and ``Nope`` are *yes*).
* ``"vcd"`` (VCD ``eval_pope.py``): lower-case and strip the answer; for a *yes* question the answer is
  *yes* iff it contains the substring ``yes``; for a *no* question it is *no* iff it contains the
  substring ``no`` (which also matches ``not``, ``nothing``, ``snow``).  The decision depends on the
  label, exactly as in the script.
* ``"substring"`` (non-standard): *yes* iff the lower-cased answer contains ``yes``.

OPOPE (offline POPE, HALC ``eval/opope_eval.py``) answers each question from the model's caption of the
image instead of asking the model.  ``rule="halc"`` (default) is HALC's ``recorder``: split the object
name on spaces; *yes* if any piece is a substring of the raw caption (case-sensitive: ``ball`` matches
``baseball``, ``tv`` does not match ``TV``).  ``rule="words"`` is a stricter, non-standard rule:
lower-cased whole words, ``s``/``es`` plurals accepted.

Metrics: Accuracy, Precision, Recall, F1 (positive class *yes*), YesRatio, in percent, plus TP/FP/TN/FN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .bootstrap import bootstrap_intervals, f1_score, format_summary, intervals_to_json, safe_ratio
from .records import (
    EvalInputError, Records, as_records, coco_image_id, index_records, read_captions, record_id, record_text,
)

__all__ = [
    "parse_yes_no",
    "binary_metrics",
    "binary_intervals",
    "PopeResult",
    "load_pope_questions",
    "load_pope_answers",
    "compute_pope",
    "compute_opope",
    "caption_says_yes",
    "object_from_question",
    "POPE_RULES",
    "OPOPE_RULES",
]

POPE_RULES = ("official", "vcd", "substring")
OPOPE_RULES = ("halc", "words")
BINARY_METRICS = ("Accuracy", "Precision", "Recall", "F1", "YesRatio")


def parse_yes_no(text: str, rule: str = "official", label: str | None = None) -> str:
    """Map a free-form answer to ``"yes"`` or ``"no"`` under ``rule`` (see the module docstring).

    ``label`` (``"yes"``/``"no"``) is needed by ``rule="vcd"`` only.
    """
    if rule == "official":
        if "." in text:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if ("No" in words or "no" in words or "not" in words) else "yes"
    if rule == "vcd":
        if label not in ("yes", "no"):
            raise ValueError("rule='vcd' decides per label: pass label='yes' or 'no'")
        t = text.lower().strip()
        if label == "yes":
            return "yes" if "yes" in t else "no"
        return "no" if "no" in t else "yes"
    if rule == "substring":
        return "yes" if "yes" in text.lower() else "no"
    raise ValueError(f"unknown POPE answer rule {rule!r}; choose one of {', '.join(POPE_RULES)}")


def binary_metrics(preds: Sequence[str], labels: Sequence[str], positive: str = "yes") -> dict[str, float]:
    """Accuracy, precision, recall, F1 (``positive`` is the positive class) and the ratio of ``positive``
    predictions, in percent; plus TP/FP/TN/FN counts."""
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
        "F1": 100.0 * f1_score(precision, recall),
        "YesRatio": 100.0 * safe_ratio(tp + fp, len(preds)),
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
    }


def binary_intervals(preds: Sequence[str], labels: Sequence[str], n_bootstrap: int, seed: int,
                     positive: str = "yes") -> dict[str, tuple[float, float]]:
    """Seeded bootstrap 95% intervals of :func:`binary_metrics` over questions."""
    p = np.array([x == positive for x in preds], dtype=float)
    l = np.array([x == positive for x in labels], dtype=float)
    cols = {"one": np.ones(len(p)), "tp": p * l, "fp": p * (1 - l), "tn": (1 - p) * (1 - l), "fn": (1 - p) * l}
    stats = {
        "Accuracy": lambda s: 100.0 * (s["tp"] + s["tn"]) / s["one"],
        "Precision": lambda s: 100.0 * s["tp"] / (s["tp"] + s["fp"]),
        "Recall": lambda s: 100.0 * s["tp"] / (s["tp"] + s["fn"]),
        "F1": lambda s: 100.0 * f1_score(s["tp"] / (s["tp"] + s["fp"]), s["tp"] / (s["tp"] + s["fn"])),
        "YesRatio": lambda s: 100.0 * (s["tp"] + s["fp"]) / s["one"],
    }
    return bootstrap_intervals(cols, stats, n_resamples=n_bootstrap, seed=seed)


@dataclass
class PopeResult:
    """POPE/OPOPE metrics (percent), per-question records and bootstrap intervals."""

    overall: dict[str, float]
    items: list[dict]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    rule: str = "official"
    answer_format: str | None = None  # POPE only: "pope", "llava" or "vcd"

    def to_dict(self) -> dict:
        return {"overall": dict(self.overall), "ci95": intervals_to_json(self.intervals), "rule": self.rule,
                "answer_format": self.answer_format, "items": list(self.items)}

    def summary(self) -> str:
        return format_summary(self.overall, self.intervals, BINARY_METRICS,
                              f"{'questions':<10}: {len(self.items):6d}  (rule: {self.rule})")


def _norm_label(value: Any, where: str) -> str:
    s = value.strip().lower() if isinstance(value, str) else None
    if s in ("yes", "no"):
        return s
    raise EvalInputError(f"{where}: field 'label' must be \"yes\" or \"no\", got {value!r}")


_QUESTION_RE = re.compile(r"is there (?:an? |the |any |some )?(.+?)\s+in the (?:image|picture|photo)", re.I)


def object_from_question(text: str) -> str:
    """The object of a POPE question ("Is there a dining table in the image?" → "dining table").

    Text that is not a POPE question is taken as the object name itself (HALC's question files store the
    bare object name in ``text``).
    """
    m = _QUESTION_RE.search(text)
    if m:
        return m.group(1).strip()
    if not text.strip():
        raise EvalInputError("empty POPE question text; give the question or an 'object' field")
    return text.strip()


def load_pope_questions(source: str | Path | Iterable[Mapping[str, Any]], on_duplicate: str = "error") -> list[dict]:
    """POPE questions as ``[{"question_id", "image", "text", "object", "label", "where"}]``.

    Reads the files as distributed (JSON Lines, any suffix).  ``label`` must be ``yes``/``no`` (any case);
    ``question_id`` an integer or string; ``object`` is taken from an ``object`` field or parsed from
    ``text``.  A repeated ``question_id`` is an error (``on_duplicate="warn"`` keeps the first).
    """
    recs = as_records(source, required=("question_id", "label"), what="POPE question")
    out = []
    for i, r in enumerate(recs):
        where = recs.where(i)
        qid = record_id(r, "question_id", where, integer=False)
        text = record_text(r, "text", where) if "text" in r else ""
        if "object" in r:
            obj = record_text(r, "object", where)
        elif text:
            obj = object_from_question(text)
        else:
            obj = None
        image = r.get("image", r.get("image_id"))
        out.append({"question_id": qid, "image": image, "text": text, "object": obj,
                    "label": _norm_label(r["label"], where), "where": where})
    index_records(Records(out, [q["where"] for q in out]), lambda i, q: q["question_id"],
                  lambda i, q: (q["image"], q["text"], q["label"]), "question", "question_id", on_duplicate)
    seen, kept = set(), []
    for q in out:
        if q["question_id"] not in seen:
            seen.add(q["question_id"])
            kept.append(q)
    return kept


def load_pope_answers(
    source: str | Path | Iterable[Mapping[str, Any]],
    questions: list[dict],
    on_duplicate: str = "error",
) -> tuple[list[str], str]:
    """The answer text for every question (in question order) and the format detected.

    Formats (by content of the first record):

    * ``"pope"``: records with ``answer`` and no ``question_id`` — paired by position (as POPE's
      ``evaluate.py`` does); the count must equal the questions', and a ``question`` field, when present,
      must equal the question's ``text``.
    * ``"llava"`` / ``"vcd"``: records with ``question_id`` and ``text`` (VCD also has ``prompt`` and
      ``model_id``) — matched by id; every question needs an answer.  ``answer`` is accepted in place of
      ``text``.  Ids not among the questions are an error, repeated ids too (``on_duplicate="warn"``:
      keep the first).
    """
    recs = as_records(source, what="POPE answer")
    first = recs[0]
    if "question_id" not in first:
        if "answer" not in first:
            raise EvalInputError(f"{recs.where(0)}: a POPE answer needs 'question_id' and 'text' (LLaVA / VCD "
                                 "format) or 'answer' (POPE format, paired with the questions by position); "
                                 f"fields present: {', '.join(sorted(first)) or 'none'}")
        if len(recs) != len(questions):
            raise EvalInputError(f"{recs.source}: {len(recs)} answers for {len(questions)} questions; POPE-format "
                                 "answers ({\"question\", \"answer\"}) are paired by position, so the counts must "
                                 "match (use the question file the answers were generated from)")
        texts = []
        for i, (r, q) in enumerate(zip(recs, questions)):
            where = recs.where(i)
            if "question_id" in r:
                raise EvalInputError(f"{where}: mixes answer formats (a 'question_id' after records without one)")
            if "question" in r and q["text"] and record_text(r, "question", where).strip() != q["text"].strip():
                raise EvalInputError(f"{where}: field 'question' is {r['question']!r} but question {i + 1} "
                                     f"({q['where']}) is {q['text']!r}; answers are paired by position — use the "
                                     "matching question file")
            texts.append(record_text(r, "answer", where))
        return texts, "pope"
    fmt = "vcd" if ("prompt" in first and "model_id" in first) else "llava"
    for i, r in enumerate(recs):
        if "question_id" not in r:
            raise EvalInputError(f"{recs.where(i)}: missing field 'question_id' (the file's first record has one)")
        if "text" not in r and "answer" not in r:
            raise EvalInputError(f"{recs.where(i)}: missing field 'text' (the answer); fields present: "
                                 f"{', '.join(sorted(r))}")
    by_id = index_records(recs, lambda i, r: record_id(r, "question_id", recs.where(i), integer=False),
                          lambda i, r: record_text(r, "text" if "text" in r else "answer", recs.where(i)),
                          "answer", "question_id", on_duplicate)
    qids = {q["question_id"] for q in questions}
    extra = [(k, w) for k, (_, w) in by_id.items() if k not in qids]
    if extra:
        raise EvalInputError(f"{extra[0][1]}: question_id {extra[0][0]!r} is not in the question file "
                             f"({len(extra)} such answers); use the question file the answers were generated from")
    texts = []
    for q in questions:
        if q["question_id"] not in by_id:
            raise EvalInputError(f"{recs.source}: no answer for question_id {q['question_id']!r} ({q['where']}); "
                                 "answers must cover every question")
        texts.append(by_id[q["question_id"]][0])
    return texts, fmt


def _result(preds, labels, items, n_bootstrap, seed, rule) -> PopeResult:
    overall = binary_metrics(preds, labels)
    intervals = binary_intervals(preds, labels, n_bootstrap, seed) if n_bootstrap else {}
    return PopeResult(overall=overall, items=items, intervals=intervals, rule=rule)


def compute_pope(
    questions: str | Path | Iterable[Mapping[str, Any]],
    answers: str | Path | Iterable[Mapping[str, Any]],
    rule: str = "official",
    n_bootstrap: int = 1000,
    seed: int = 0,
    on_duplicate: str = "error",
) -> PopeResult:
    """POPE metrics of model ``answers`` for ``questions`` (files or record lists; see the loaders)."""
    if rule not in POPE_RULES:
        raise EvalInputError(f"unknown POPE answer rule {rule!r}; choose one of {', '.join(POPE_RULES)}")
    qs = load_pope_questions(questions, on_duplicate=on_duplicate)
    texts, fmt = load_pope_answers(answers, qs, on_duplicate=on_duplicate)
    preds, labels, items = [], [], []
    for q, text in zip(qs, texts):
        pred = parse_yes_no(text, rule, q["label"])
        preds.append(pred)
        labels.append(q["label"])
        items.append({"question_id": q["question_id"], "label": q["label"], "pred": pred, "answer": text})
    res = _result(preds, labels, items, n_bootstrap, seed, rule)
    res.answer_format = fmt
    return res


def caption_says_yes(caption: str, object_name: str, rule: str = "halc") -> bool:
    """OPOPE decision for one question (see the module docstring for the rules)."""
    if rule == "halc":
        return any(piece in caption for piece in object_name.split(" "))
    if rule == "words":
        words = set(re.findall(r"[a-z0-9]+", caption.lower()))
        return any(w in words or w + "s" in words or w + "es" in words
                   for w in re.findall(r"[a-z0-9]+", object_name.lower()))
    raise EvalInputError(f"unknown OPOPE rule {rule!r}; choose one of {', '.join(OPOPE_RULES)}")


def compute_opope(
    questions: str | Path | Iterable[Mapping[str, Any]],
    captions: str | Path | Iterable[Mapping[str, Any]],
    rule: str = "halc",
    n_bootstrap: int = 1000,
    seed: int = 0,
    on_duplicate: str = "error",
) -> PopeResult:
    """OPOPE: answer POPE ``questions`` from one caption per image.

    Captions are read with :func:`~kvsmooth_hooks.eval.records.read_captions` (``image_id`` or a COCO
    file name in ``image``; ``caption`` or ``text``); questions need ``image`` (or ``image_id``), ``text``
    (or ``object``) and ``label``.  Every question's image needs a caption.
    """
    if rule not in OPOPE_RULES:
        raise EvalInputError(f"unknown OPOPE rule {rule!r}; choose one of {', '.join(OPOPE_RULES)}")
    qs = load_pope_questions(questions, on_duplicate=on_duplicate)
    caps = {c["image_id"]: c["caption"] for c in read_captions(captions, on_duplicate=on_duplicate)}
    preds, labels, items = [], [], []
    for q in qs:
        if q["image"] is None:
            raise EvalInputError(f"{q['where']}: missing field 'image' (or 'image_id'); OPOPE needs the image")
        if q["object"] is None:
            raise EvalInputError(f"{q['where']}: missing field 'text' (or 'object'); OPOPE needs the object name")
        key = coco_image_id(q["image"])
        if key not in caps:
            raise EvalInputError(f"{q['where']}: no caption for image {q['image']!r}; the captions file must have "
                                 "one caption per question image")
        pred = "yes" if caption_says_yes(caps[key], q["object"], rule) else "no"
        preds.append(pred)
        labels.append(q["label"])
        items.append({"question_id": q["question_id"], "image_id": key, "object": q["object"], "label": q["label"],
                      "pred": pred})
    return _result(preds, labels, items, n_bootstrap, seed, rule)
