"""CHAIR: Caption Hallucination Assessment with Image Relevance.

Rohrbach et al., *Object Hallucination in Image Captioning*, EMNLP 2018, in the
form used by OPERA (Huang et al., CVPR 2024), PAI (Liu et al., ECCV 2024) and
HALC (Chen et al., ICML 2024): object mentions are extracted from a caption
(:mod:`.coco_objects`) and compared with the ground-truth objects of the image,
the union of its COCO instance categories and the objects mentioned in its
COCO reference captions.

Metrics (all corpus-level ratios of sums):

* ``CHAIR_S`` — captions with at least one hallucinated mention / captions;
* ``CHAIR_I`` — hallucinated mentions / all mentions (repeats counted);
* ``Recall`` — Σ distinct correctly mentioned objects / Σ ground-truth objects;
* ``Precision`` — Σ distinct correct / Σ distinct mentioned (PAI's definition);
* ``F1`` — harmonic mean of Precision and Recall;
* ``Len`` — mean number of tokens per caption (after double-word merging).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .bootstrap import bootstrap_intervals, f1_score, format_summary, intervals_to_json, safe_ratio
from .coco_objects import ObjectExtractor, load_synonyms
from .digest import file_sha1
from .records import EvalInputError, normalize_image_id, read_captions, read_json

__all__ = [
    "CaptionResult",
    "ChairResult",
    "ChairEvaluator",
    "compute_chair",
    "build_coco_ground_truth",
    "load_ground_truth",
    "save_ground_truth",
    "load_captions",
    "CHAIR_METRICS",
    "aggregate_chair",
    "default_gt_cache",
]

CHAIR_METRICS = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len")
GT_CACHE_VERSION = 2


# ---------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------

def load_ground_truth(path: str | Path) -> dict[Any, set[str]]:
    """Read ``{image_id: [category, ...]}`` JSON (a cache file written by
    :func:`save_ground_truth` is accepted too)."""
    p = Path(path)
    data = read_json(p, "ground truth {image_id: [COCO category names]}")
    if isinstance(data, dict) and "objects" in data and isinstance(data["objects"], dict):
        data = data["objects"]
    if not isinstance(data, dict):
        raise EvalInputError(f"{p}: expected a JSON object {{image_id: [COCO category names]}}")
    gt: dict[Any, set[str]] = {}
    for key, cats in data.items():
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise EvalInputError(f"{p}: image {key!r}: expected a list of category names")
        gt[normalize_image_id(key)] = set(cats)
    return gt


def save_ground_truth(gt: Mapping[Any, Iterable[str]], path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
    """Write ground truth as JSON (sorted category lists, string keys)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": dict(meta or {}), "objects": {str(k): sorted(v) for k, v in gt.items()}}
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, p)


def _coco_files(annotation_dir: Path) -> dict[str, Path]:
    files = {}
    for kind in ("instances", "captions"):
        for split in ("train", "val"):
            files[f"{kind}_{split}"] = annotation_dir / f"{kind}_{split}2014.json"
    return files


def _coco_json(path: Path, keys: tuple[str, ...]) -> dict:
    data = read_json(path, "COCO 2014 annotation file")
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise EvalInputError(f"{path}: not a COCO annotation file (no {missing[0]!r} field); pass the COCO 2014 "
                             "annotations folder (instances_/captions_{train,val}2014.json)")
    return data


def build_coco_ground_truth(
    annotation_dir: str | Path,
    extractor: ObjectExtractor | None = None,
    cache_path: str | Path | None = None,
    show_progress: bool = True,
    digest_memo: dict | None = None,
) -> dict[Any, set[str]]:
    """Ground-truth objects per COCO image, as the reference CHAIR builds them.

    The union of (a) the categories of all instance annotations and (b) the
    objects extracted from all reference captions, over COCO 2014 train + val
    (``instances_{train,val}2014.json`` and ``captions_{train,val}2014.json`` in
    ``annotation_dir``).  With ``cache_path`` the result is stored as JSON after
    the first build and reused while the backend and the annotation files' contents (sha1) are unchanged;
    ``digest_memo``: digests the caller's run already computed (:func:`.digest.file_sha1`; a benchmark passes its
    ``digest_memo``, so the run key and the cache read each file once).
    """
    from tqdm.auto import tqdm

    extractor = extractor or ObjectExtractor("offline")
    backend = getattr(extractor.lemmatizer, "name", type(extractor.lemmatizer).__name__)
    adir = Path(annotation_dir)
    if not adir.is_dir():
        raise EvalInputError(f"{adir}: COCO annotation directory not found")
    files = _coco_files(adir)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise EvalInputError(
            f"missing COCO 2014 annotation file(s): {', '.join(missing)}; download "
            "annotations_trainval2014.zip from https://cocodataset.org and unzip it there"
        )
    meta = {
        "version": GT_CACHE_VERSION,
        "backend": backend,
        "files": {k: [p.name, file_sha1(p, digest_memo)] for k, p in files.items()},
    }
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cached = json.loads(Path(cache_path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cached = None
        if isinstance(cached, dict) and cached.get("meta") == meta:
            return {normalize_image_id(k): set(v) for k, v in cached["objects"].items()}

    synonyms = load_synonyms()
    gt: dict[Any, set[str]] = {}
    for split in ("train", "val"):
        instances = _coco_json(files[f"instances_{split}"], ("categories", "annotations"))
        names = {c["id"]: synonyms[c["name"]] for c in instances["categories"]}
        for ann in tqdm(instances["annotations"], desc=f"COCO {split} instances", disable=not show_progress):
            gt.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
        del instances
    for split in ("train", "val"):
        captions = _coco_json(files[f"captions_{split}"], ("annotations",))
        for ann in tqdm(captions["annotations"], desc=f"COCO {split} captions", disable=not show_progress):
            gt.setdefault(ann["image_id"], set()).update(extractor.categories(ann["caption"]))
        del captions
    if cache_path is not None:
        save_ground_truth(gt, cache_path, meta)
    return gt


# ---------------------------------------------------------------------------
# Captions and results
# ---------------------------------------------------------------------------

def load_captions(path: str | Path, image_id_key: str | None = None, caption_key: str | None = None,
                  on_duplicate: str = "error") -> list[dict]:
    """Read generated captions as ``{"image_id", "caption"}`` dicts, one per image.

    Any shape :func:`~kvsmooth_hooks.eval.records.read_captions` reads (OPERA / HALC ``{"image_id",
    "caption"}``, LLaVA ``{"question_id", "text"}``, COCO file names in ``image``; JSON Lines or a JSON
    list, by content).  A second caption of an image is an error (``on_duplicate="warn"``: keep the first).
    """
    rows = read_captions(path, image_id_key, caption_key, what="caption", on_duplicate=on_duplicate)
    return [{"image_id": r["image_id"], "caption": r["caption"]} for r in rows]


@dataclass
class CaptionResult:
    """CHAIR details of one caption."""

    image_id: Any
    caption: str
    mentioned_words: list[str]  # lemmas found in the synonym table, mention order
    mentioned_objects: list[str]  # their categories, repeats kept
    hallucinated_words: list[str]
    hallucinated_objects: list[str]  # categories not in the ground truth, repeats kept
    correct_objects: list[str]  # distinct categories in the ground truth, first-mention order
    gt_objects: list[str]
    num_tokens: int

    @property
    def hallucinated(self) -> bool:
        return bool(self.hallucinated_objects)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["CHAIR_S"] = int(self.hallucinated)
        d["CHAIR_I"] = safe_ratio(len(self.hallucinated_objects), len(self.mentioned_objects))
        d["Recall"] = safe_ratio(len(self.correct_objects), len(self.gt_objects))
        return d


@dataclass
class ChairResult:
    """Corpus-level CHAIR metrics (in percent), per-caption details and bootstrap intervals."""

    overall: dict[str, float]
    captions: list[CaptionResult]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    backend: str = "offline"

    def to_dict(self) -> dict:
        return {
            "overall": dict(self.overall),
            "ci95": intervals_to_json(self.intervals),
            "counts": dict(self.counts),
            "backend": self.backend,
            "captions": [c.to_dict() for c in self.captions],
        }

    def summary(self) -> str:
        return format_summary(self.overall, self.intervals, CHAIR_METRICS,
                              f"{'captions':<10}: {self.counts.get('num_captions', len(self.captions)):6d}")


def _chair_statistics():
    def ratio(num, den):
        return lambda s: 100.0 * s[num] / s[den]

    def f1(s):
        return 100.0 * f1_score(s["correct"] / s["distinct"], s["correct"] / s["gt"])

    return {
        "CHAIR_S": ratio("hall_caption", "one"),
        "CHAIR_I": ratio("hall_mentions", "mentions"),
        "Recall": ratio("correct", "gt"),
        "Precision": ratio("correct", "distinct"),
        "F1": f1,
        "Len": lambda s: s["tokens"] / s["one"],
    }


class ChairEvaluator:
    """Scores captions against per-image ground-truth object sets.

    Args:
        ground_truth: ``{image_id: iterable of COCO category names}``.
        backend: lemmatizer backend name or an :class:`ObjectExtractor`.
        missing_gt: ``"error"`` (default) raises for an image without ground
            truth; ``"empty"`` treats it as having no objects (what the
            reference script silently does).
    """

    def __init__(self, ground_truth: Mapping[Any, Iterable[str]], backend: str | ObjectExtractor = "offline",
                 missing_gt: str = "error") -> None:
        self.extractor = backend if isinstance(backend, ObjectExtractor) else ObjectExtractor(backend)
        self.ground_truth = {normalize_image_id(k): set(v) for k, v in ground_truth.items()}
        if missing_gt not in ("error", "empty"):
            raise ValueError("missing_gt must be 'error' or 'empty'")
        self.missing_gt = missing_gt

    @property
    def backend(self) -> str:
        return getattr(self.extractor.lemmatizer, "name", "custom")

    def evaluate_caption(self, image_id: Any, caption: str) -> CaptionResult:
        """CHAIR details for one caption."""
        image_id = normalize_image_id(image_id)
        gt = self.ground_truth.get(image_id)
        if gt is None:
            if self.missing_gt == "error":
                raise EvalInputError(
                    f"image_id {image_id!r} has no ground-truth objects; check the ground-truth file "
                    "or COCO annotation directory (or pass missing_gt='empty')"
                )
            gt = set()
        ext = self.extractor.extract(caption)
        words = [m.word for m in ext.mentions]
        cats = [m.category for m in ext.mentions]
        hall_w, hall_c, correct = [], [], []
        for w, c in zip(words, cats):
            if c in gt:
                if c not in correct:
                    correct.append(c)
            else:
                hall_w.append(w)
                hall_c.append(c)
        return CaptionResult(
            image_id=image_id,
            caption=caption,
            mentioned_words=words,
            mentioned_objects=cats,
            hallucinated_words=hall_w,
            hallucinated_objects=hall_c,
            correct_objects=correct,
            gt_objects=sorted(gt),
            num_tokens=len(ext.tokens),
        )

    def evaluate(self, captions: Iterable[Mapping[str, Any]], n_bootstrap: int = 1000, seed: int = 0,
                 show_progress: bool = False) -> ChairResult:
        """Score ``captions`` (dicts with ``image_id`` and ``caption``)."""
        from tqdm.auto import tqdm

        captions = list(captions)
        if not captions:
            raise EvalInputError("no captions to score (empty input)")
        results = [
            self.evaluate_caption(c["image_id"], c["caption"])
            for c in tqdm(captions, desc="CHAIR", disable=not show_progress)
        ]
        return aggregate_chair(results, n_bootstrap=n_bootstrap, seed=seed, backend=self.backend)


def aggregate_chair(results: list[CaptionResult], n_bootstrap: int = 1000, seed: int = 0,
                    backend: str = "offline") -> ChairResult:
    """Corpus-level metrics (percent; Len in tokens) from per-caption results."""
    cols = {
        "one": np.ones(len(results)),
        "hall_caption": np.array([r.hallucinated for r in results], dtype=float),
        "hall_mentions": np.array([len(r.hallucinated_objects) for r in results], dtype=float),
        "mentions": np.array([len(r.mentioned_objects) for r in results], dtype=float),
        "correct": np.array([len(r.correct_objects) for r in results], dtype=float),
        "distinct": np.array([len(set(r.mentioned_objects)) for r in results], dtype=float),
        "gt": np.array([len(r.gt_objects) for r in results], dtype=float),
        "tokens": np.array([r.num_tokens for r in results], dtype=float),
    }
    s = {k: float(v.sum()) for k, v in cols.items()}
    precision = safe_ratio(s["correct"], s["distinct"])
    recall = safe_ratio(s["correct"], s["gt"])
    overall = {
        "CHAIR_S": 100.0 * safe_ratio(s["hall_caption"], s["one"]),
        "CHAIR_I": 100.0 * safe_ratio(s["hall_mentions"], s["mentions"]),
        "Recall": 100.0 * recall,
        "Precision": 100.0 * precision,
        "F1": 100.0 * f1_score(precision, recall),
        "Len": safe_ratio(s["tokens"], s["one"]),
    }
    intervals = bootstrap_intervals(cols, _chair_statistics(), n_resamples=n_bootstrap, seed=seed) if n_bootstrap else {}
    counts = {
        "num_captions": len(results),
        "num_hallucinated_captions": int(s["hall_caption"]),
        "num_object_mentions": int(s["mentions"]),
        "num_hallucinated_mentions": int(s["hall_mentions"]),
        "num_correct_distinct": int(s["correct"]),
        "num_mentioned_distinct": int(s["distinct"]),
        "num_gt_objects": int(s["gt"]),
        "num_tokens": int(s["tokens"]),
    }
    return ChairResult(overall=overall, captions=results, intervals=intervals, counts=counts, backend=backend)


def compute_chair(
    captions: Iterable[Mapping[str, Any]] | str | Path,
    ground_truth: Mapping[Any, Iterable[str]] | str | Path,
    backend: str = "offline",
    n_bootstrap: int = 1000,
    seed: int = 0,
    missing_gt: str = "error",
) -> ChairResult:
    """One-call CHAIR.

    Args:
        captions: a captions file (``.jsonl``/``.json``) or dicts with
            ``image_id`` and ``caption``.
        ground_truth: ``{image_id: [categories]}``, a JSON file of that shape,
            or a COCO 2014 annotation directory (built and cached on first use
            in ``chair_gt_<backend>.json`` inside the user cache directory).
        backend: ``"offline"`` or ``"nltk"``.
        n_bootstrap: bootstrap resamples for the 95% intervals (0 disables them).
        seed: bootstrap seed.
    """
    extractor = ObjectExtractor(backend)
    if isinstance(captions, (str, Path)):
        captions = load_captions(captions)
    if isinstance(ground_truth, (str, Path)):
        p = Path(ground_truth)
        if p.is_dir():
            ground_truth = build_coco_ground_truth(p, extractor, cache_path=default_gt_cache(p, backend))
        else:
            ground_truth = load_ground_truth(p)
    evaluator = ChairEvaluator(ground_truth, extractor, missing_gt=missing_gt)
    return evaluator.evaluate(captions, n_bootstrap=n_bootstrap, seed=seed)


def default_gt_cache(annotation_dir: str | Path, backend: str) -> Path:
    """Where the ground truth built from ``annotation_dir`` is cached by default."""
    import hashlib

    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvsmooth_hooks"
    digest = hashlib.sha1(str(Path(annotation_dir).resolve()).encode()).hexdigest()[:12]
    return root / f"chair_gt_{backend}_{digest}.json"
