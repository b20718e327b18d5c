"""CHAIR of an MLLM on COCO val2014, baseline vs KV-smoothed: a thin entry point over the experiment runner.

    python experiments/chair_eval.py --coco-images coco/val2014 --coco-annotations coco/annotations \\
        --n 500 --seed 0 --preset llava-1.5 --out results/chair/llava15

Same as ``python -m kvsmooth_hooks.run --benchmark chair`` (see docs/experiments.md) with this script's
spelling of the inputs: ``--coco-images DIR`` and ``--coco-annotations DIR`` (or ``--gt-objects FILE``) become
the chair benchmark's ``images`` / ``annotations`` / ``gt`` options, ``--backend`` its lemmatizer, ``--prompt``
its prompt. Defaults: ``llava-hf/llava-1.5-7b-hf``, 500 images drawn with ``random.Random(seed).sample`` from the
sorted image ids, the paper's prompt, 512 new tokens, greedy, arms ``baseline,smoothed`` with the ``llava-1.5``
preset. Every other runner option passes through (``--loader``, ``--device``, ``--dtype``, ``--batch-size``...).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvsmooth_hooks.runner.cli import main, with_defaults  # noqa: E402

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"


def translate(argv: list[str]) -> list[str]:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--coco-images", type=Path)
    ap.add_argument("--coco-annotations", type=Path)
    ap.add_argument("--gt-objects", type=Path)
    ap.add_argument("--backend")
    ap.add_argument("--prompt")
    known, rest = ap.parse_known_args(argv)
    if known.coco_images is None:
        raise SystemExit("error: --coco-images DIR is required (the COCO val2014 image folder)")
    if (known.coco_annotations is None) == (known.gt_objects is None):
        raise SystemExit("error: give one of --coco-annotations DIR or --gt-objects FILE")
    images = known.coco_images.resolve()
    out = ["--benchmark", "chair", "--data", str(images.parent), "--set", f"images={images}"]
    if known.gt_objects is not None:
        out += ["--set", f"gt={known.gt_objects.resolve()}"]
    else:
        out += ["--set", f"annotations={known.coco_annotations.resolve()}"]
    for name in ("backend", "prompt"):
        if getattr(known, name):
            out += ["--set", f"{name}={getattr(known, name)}"]
    defaults = ["--model", DEFAULT_MODEL, "--n", "500", "--arms", "baseline,smoothed", "--out", "results/chair"]
    if "--config" not in rest:
        defaults += ["--preset", "llava-1.5"]
    return with_defaults(defaults, out + rest)


def run(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # this script's own options, then the runner's
        print(__doc__)
        return main(["--help"])
    return main(translate(argv))


if __name__ == "__main__":
    sys.exit(run())
