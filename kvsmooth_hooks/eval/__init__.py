"""Hallucination evaluation: CHAIR, POPE / OPOPE, AMBER and Object-HalBench.

See ``docs/evaluation.md`` for definitions, sources and parity with the
reference scripts.
"""

from .amber import AmberResult, compute_amber, load_amber_data, load_amber_responses
from .bootstrap import bootstrap_intervals, f1_score, format_summary
from .chair import (
    CaptionResult,
    ChairEvaluator,
    ChairResult,
    build_coco_ground_truth,
    compute_chair,
    load_captions,
    load_ground_truth,
    save_ground_truth,
)
from .coco_objects import ObjectExtractor, coco_categories
from .lemmatize import NltkDataMissingError, get_lemmatizer, tokenize
from .objhal import ObjHalResult, compute_objhal
from .pope import (
    PopeResult, binary_metrics, compute_opope, compute_pope, load_pope_answers, load_pope_questions, parse_yes_no,
)
from .records import EvalInputError, EvalInputWarning, read_captions, read_json, read_records

__all__ = [
    "AmberResult",
    "CaptionResult",
    "ChairEvaluator",
    "ChairResult",
    "EvalInputError",
    "EvalInputWarning",
    "NltkDataMissingError",
    "ObjHalResult",
    "ObjectExtractor",
    "PopeResult",
    "binary_metrics",
    "bootstrap_intervals",
    "f1_score",
    "format_summary",
    "load_amber_responses",
    "load_pope_answers",
    "load_pope_questions",
    "read_captions",
    "read_json",
    "read_records",
    "build_coco_ground_truth",
    "coco_categories",
    "compute_amber",
    "compute_chair",
    "compute_objhal",
    "compute_opope",
    "compute_pope",
    "get_lemmatizer",
    "load_amber_data",
    "load_captions",
    "load_ground_truth",
    "parse_yes_no",
    "save_ground_truth",
    "tokenize",
]
