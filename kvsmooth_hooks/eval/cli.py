"""``kvsmooth eval ...`` command line: CHAIR, POPE, OPOPE, AMBER, Object-HalBench.

The main ``kvsmooth`` CLI wires this in with::

    from kvsmooth_hooks.eval.cli import add_eval_parser, run as run_eval
    add_eval_parser(subparsers)          # adds the "eval" command group
    ...
    if args.command == "eval": return run_eval(args)

It also runs stand-alone: ``python -m kvsmooth_hooks.eval.cli chair CAPTIONS.jsonl --gt-objects GT.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ..core.errors import add_traceback_option
from .records import EvalInputError

__all__ = ["add_eval_parser", "build_parser", "run", "main"]


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, help="write the full result as JSON to this file")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="repeated ids (and conflicting answers for one id) are warnings, keeping the first, "
                        "instead of errors")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for 95%% intervals (0 disables; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    add_traceback_option(p)


def _add_gt(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--coco-annotations", type=Path, metavar="DIR",
                   help="COCO 2014 annotation directory (instances_/captions_{train,val}2014.json)")
    g.add_argument("--gt-objects", type=Path, metavar="FILE", help="JSON {image_id: [COCO category names]}")
    p.add_argument("--gt-cache", type=Path, metavar="FILE",
                   help="JSON cache for ground truth built from --coco-annotations (default: user cache dir)")
    p.add_argument("--backend", choices=("offline", "nltk"), default="offline",
                   help="tokenizer/lemmatizer: offline (default, no data needed) or nltk (reference, needs NLTK data)")


def _fill_eval_subcommands(sub) -> None:
    p = sub.add_parser("chair", help="CHAIR_S / CHAIR_I / Recall / Precision / F1 / Len of captions",
                       description="CHAIR (Rohrbach et al. 2018) as computed by OPERA/PAI chair.py.")
    p.add_argument("captions", type=Path, help="captions (JSON Lines or a JSON list, any suffix): "
                   "{image_id, caption} (OPERA/HALC), {question_id, text} (LLaVA) or {image: COCO file name, ...}")
    p.add_argument("--image-id-key", default=None, help="image id field (default: image_id, image or question_id)")
    p.add_argument("--caption-key", default=None, help="caption field (default: caption, text, response or answer)")
    _add_gt(p)
    _add_common(p)
    p.set_defaults(eval_func=_run_chair)

    p = sub.add_parser("pope", help="POPE accuracy / precision / recall / F1 / yes-ratio",
                       description="POPE (Li et al. 2023) from model answers.")
    p.add_argument("questions", type=Path, help="POPE question file as distributed (JSON Lines, any suffix: "
                   "question_id, image, text, label)")
    p.add_argument("answers", type=Path, help="answers: POPE {question, answer} (by position), LLaVA or VCD "
                   "{question_id, text} (by id)")
    p.add_argument("--rule", choices=("official", "vcd", "substring"), default="official",
                   help="answer parsing: official = POPE evaluate.py / LLaVA eval_pope.py (default); vcd = VCD "
                        "eval_pope.py; substring = 'yes' in the lower-cased answer (non-standard)")
    _add_common(p)
    p.set_defaults(eval_func=_run_pope)

    p = sub.add_parser("opope", help="offline POPE from captions (HALC)",
                       description="OPOPE: answer POPE questions from one caption per image.")
    p.add_argument("questions", type=Path, help="POPE question file (JSON Lines, any suffix)")
    p.add_argument("captions", type=Path, help="captions (image_id or image, caption or text)")
    p.add_argument("--rule", choices=("halc", "words"), default="halc",
                   help="halc = HALC opope_eval.py, case-sensitive substring of the raw caption (default); "
                        "words = lower-cased whole words with plurals (non-standard)")
    _add_common(p)
    p.set_defaults(eval_func=_run_pope)

    p = sub.add_parser("amber", help="AMBER generative + discriminative metrics",
                       description="AMBER (Wang et al. 2023).")
    p.add_argument("responses", type=Path, help="responses: JSON list or JSON Lines of {id, response}")
    p.add_argument("--amber-data", type=Path, required=True, metavar="DIR",
                   help="AMBER data/ folder (annotations.json, relation.json, safe_words.txt)")
    p.add_argument("--backend", choices=("offline", "nltk"), default="offline")
    p.add_argument("--similarity", choices=("none", "spacy"), default="none",
                   help="word matching: exact (default) or spaCy vectors > threshold (reference)")
    p.add_argument("--similarity-threshold", type=float, default=0.8)
    p.add_argument("--answer-rule", choices=("official", "pope"), default="official",
                   help="discriminative answers: official = exactly 'Yes'/'No' as inference.py (default); "
                        "pope = parse free-form answers with the POPE rule")
    _add_common(p)
    p.set_defaults(eval_func=_run_amber)

    p = sub.add_parser("objhal", help="Object-HalBench, rule-based",
                       description="Object-HalBench (RLHF-V) with rule-based object extraction.")
    p.add_argument("responses", type=Path, help="responses (.jsonl: image_id, response)")
    p.add_argument("--response-key", default=None, help="response field (default: response, caption, text or answer)")
    _add_gt(p)
    _add_common(p)
    p.set_defaults(eval_func=_run_objhal)


def add_eval_parser(subparsers, extra=()) -> argparse.ArgumentParser:
    """Add the ``eval`` command group to ``subparsers`` (from ``parser.add_subparsers()``).

    ``extra``: functions that add more subcommands to the group (the application adds ``grounded``, which runs a
    model and therefore lives outside ``eval/``)."""
    p = subparsers.add_parser("eval", help="hallucination metrics (CHAIR, POPE, OPOPE, AMBER, Object-HalBench, grounded-text proxy)",
                              description="Hallucination evaluation.")
    sub = p.add_subparsers(dest="eval_command", metavar="{chair,pope,opope,amber,objhal,grounded}")
    sub.required = True
    _fill_eval_subcommands(sub)
    for add in extra:
        add(sub)
    return p


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser (``python -m kvsmooth_hooks.eval.cli``)."""
    parser = argparse.ArgumentParser(prog="python -m kvsmooth_hooks.eval.cli", description="Hallucination evaluation.")
    sub = parser.add_subparsers(dest="eval_command", metavar="{chair,pope,opope,amber,objhal}")
    sub.required = True
    _fill_eval_subcommands(sub)
    return parser


def _ground_truth(args, extractor):
    from .chair import build_coco_ground_truth, default_gt_cache, load_ground_truth

    if args.gt_objects is not None:
        return load_ground_truth(args.gt_objects)
    cache = args.gt_cache or default_gt_cache(args.coco_annotations, args.backend)
    return build_coco_ground_truth(args.coco_annotations, extractor, cache_path=cache)


def _check_output(args) -> None:
    out = getattr(args, "output", None)
    if out is not None and out.is_dir():
        raise EvalInputError(f"-o {out}: is a directory; give a file name such as {out / 'result.json'}")


def _write(args, payload: dict) -> None:
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        print(f"wrote {args.output}")


def _dup(args) -> str:
    return "warn" if getattr(args, "allow_duplicates", False) else "error"


def _run_chair(args):
    from .chair import ChairEvaluator, load_captions
    from .coco_objects import ObjectExtractor

    captions = load_captions(args.captions, args.image_id_key, args.caption_key, on_duplicate=_dup(args))
    extractor = ObjectExtractor(args.backend)
    gt = _ground_truth(args, extractor)
    result = ChairEvaluator(gt, extractor).evaluate(captions, n_bootstrap=args.bootstrap, seed=args.seed,
                                                     show_progress=len(captions) > 2000)
    return result


def _run_pope(args):
    """``pope`` (model answers) and ``opope`` (captions answer the questions): one POPE scoring."""
    from .pope import compute_opope, compute_pope

    compute, given = (compute_opope, args.captions) if args.eval_command == "opope" else (compute_pope, args.answers)
    return compute(args.questions, given, rule=args.rule, n_bootstrap=args.bootstrap, seed=args.seed,
                   on_duplicate=_dup(args))


def _run_amber(args):
    from .amber import compute_amber

    result = compute_amber(args.responses, args.amber_data, backend=args.backend, similarity=args.similarity,
                           similarity_threshold=args.similarity_threshold, answer_rule=args.answer_rule,
                           n_bootstrap=args.bootstrap, seed=args.seed,
                           on_duplicate=_dup(args))
    return result


def _run_objhal(args):
    from .coco_objects import ObjectExtractor
    from .objhal import compute_objhal

    gt = _ground_truth(args, ObjectExtractor(args.backend))
    result = compute_objhal(args.responses, gt, backend=args.backend, response_key=args.response_key,
                            n_bootstrap=args.bootstrap, seed=args.seed, on_duplicate="keep")
    return result


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``eval`` command under the package's error policy
    (:func:`~kvsmooth_hooks.core.errors.run_command`): a bad input prints ``error: <one line>`` on stderr and
    returns 2; tolerated input problems print ``warning: ...``."""
    import warnings

    from ..core.errors import run_command
    from .records import EvalInputWarning

    def body() -> int:
        _check_output(args)
        if getattr(args, "bootstrap", 0) < 0:
            raise EvalInputError(f"--bootstrap {args.bootstrap}: must be at least 0 (0 = no intervals)")
        result = args.eval_func(args)
        if isinstance(result, int):  # commands that report themselves (grounded, added by the application)
            return result
        print(result.summary())
        _write(args, result.to_dict())
        return 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvalInputWarning)
        status = run_command(body, getattr(args, "traceback", False))
    for w in caught:
        if issubclass(w.category, EvalInputWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
