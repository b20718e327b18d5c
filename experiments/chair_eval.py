"""CHAIR captioning runner: baseline and smoothed arms of one multimodal model on COCO val2014.

    python experiments/chair_eval.py --coco-images coco/val2014 --coco-annotations coco/annotations \
        --n 500 --seed 0 --preset llava-1.5 --out results/chair/llava15

For users with a GPU (a 7B model on CPU takes minutes per caption). What it does:

1. lists the images in ``--coco-images`` (``COCO_val2014_000000391895.jpg``: the number is the image id),
   sorts the ids and draws ``--n`` of them with ``random.Random(seed).sample``; the chosen ids are written
   to ``image_ids.json`` and ``results.json`` (the usual "shuffle the directory listing" is not
   reproducible: listing order depends on the file system);
2. builds the CHAIR ground truth from the COCO 2014 annotation files (``build_coco_ground_truth``, cached
   as JSON) or reads ``--gt-objects``;
3. captions every chosen image greedily with the paper's prompt ("Please help me describe the image in
   detail.") in the model's chat format (the processor's chat template; the LLaVA-1.5
   ``USER: <image>\\n... ASSISTANT:`` format when it has none), ``--max-new-tokens 512``, once per arm:
   ``baseline`` (no hooks) and ``smoothed`` (inside ``kvsmooth_hooks.smooth`` with ``--preset`` or
   ``--config``); captions go to ``captions_<arm>.jsonl`` (resumable: rerun the same command to continue);
4. scores both arms with CHAIR and prints CHAIR_S, CHAIR_I, Recall, F1, Len and seconds per caption,
   with the command that reproduces the table; everything is also in ``results.json``.

The model is loaded with ``AutoProcessor`` + ``AutoModelForImageTextToText`` (``--model``, default
``llava-hf/llava-1.5-7b-hf``); :func:`main` takes a ``loader`` so tests can pass a tiny random model.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from kvsmooth_hooks import ConfigError, KVSmoothConfig  # noqa: E402
from kvsmooth_hooks.eval.records import EvalInputError, check_run_settings  # noqa: E402

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
#: the captioning prompt of the paper for LLaVA-1.5 (and of OPERA / PAI, whose CHAIR setup it follows)
PAPER_PROMPT = "Please help me describe the image in detail."
#: LLaVA-1.5's conversation format, used when the processor has no chat template
LLAVA15_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"
ARMS = ("baseline", "smoothed")
METRIC_COLUMNS = ("CHAIR_S", "CHAIR_I", "Recall", "F1", "Len")
_IMAGE_RE = re.compile(r"(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


# ---------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python experiments/chair_eval.py",
                                 description="CHAIR of an MLLM on COCO val2014: baseline vs KV-smoothed, one run.")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"HF model id or local directory (default {DEFAULT_MODEL})")
    ap.add_argument("--coco-images", type=Path, required=True, metavar="DIR",
                    help="folder of COCO val2014 images (COCO_val2014_<12-digit id>.jpg)")
    gt = ap.add_mutually_exclusive_group(required=True)
    gt.add_argument("--coco-annotations", type=Path, metavar="DIR",
                    help="COCO 2014 annotations (instances_/captions_{train,val}2014.json) for the CHAIR ground truth")
    gt.add_argument("--gt-objects", type=Path, metavar="FILE", help="ground truth as JSON {image_id: [COCO categories]}")
    ap.add_argument("--gt-cache", type=Path, metavar="FILE",
                    help="JSON cache of the ground truth built from --coco-annotations (default: user cache dir)")
    ap.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the image draw and the bootstrap (default 0)")
    ap.add_argument("--prompt", default=PAPER_PROMPT, help=f"captioning prompt (default: {PAPER_PROMPT!r})")
    ap.add_argument("--max-new-tokens", type=int, default=512, help="default 512, as in the paper")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="smoothed arm: a preset name (default llava-1.5)")
    src.add_argument("--config", type=Path, default=None, help="smoothed arm: a config file (.yaml/.json)")
    ap.add_argument("--arms", default="baseline,smoothed", help="comma list of baseline, smoothed (default both)")
    ap.add_argument("--batch-size", type=int, default=1,
                    help="images per generate call (default 1, which makes seconds per caption comparable)")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                    help="auto = float16 on GPU, float32 on CPU")
    ap.add_argument("--backend", choices=("offline", "nltk"), default="offline", help="CHAIR lemmatizer backend")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% intervals (0 = off)")
    ap.add_argument("--out", type=Path, default=Path("results/chair"), help="output directory (resumable)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def smoothing_config(args) -> KVSmoothConfig:
    return KVSmoothConfig.from_source(args.config, None if args.config is not None else args.preset or "llava-1.5")


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise EvalInputError(f"--arms {text!r}: use baseline and/or smoothed, comma separated")
    return list(dict.fromkeys(arms))


# ---------------------------------------------------------------------------- images and ground truth
def list_coco_images(image_dir: str | Path) -> dict[int, Path]:
    """``{image_id: path}`` for the images in ``image_dir`` (the id is the number before the suffix)."""
    d = Path(image_dir)
    if not d.is_dir():
        raise EvalInputError(f"--coco-images {d}: image folder not found (expected COCO val2014 jpgs such as "
                             "COCO_val2014_000000391895.jpg; download val2014.zip from https://cocodataset.org)")
    images = {}
    for p in d.iterdir():
        m = _IMAGE_RE.search(p.name)
        if m and p.is_file():
            images[int(m.group(1))] = p
    if not images:
        raise EvalInputError(f"--coco-images {d}: no images named like COCO_val2014_000000391895.jpg in this folder")
    return images


def choose_image_ids(image_ids, n: int, seed: int) -> list[int]:
    """``n`` ids drawn from the *sorted* ids with ``random.Random(seed).sample`` (all of them if fewer)."""
    if n < 1:
        raise EvalInputError(f"--n {n}: need at least one image")
    ids = sorted(image_ids)
    return random.Random(seed).sample(ids, min(n, len(ids)))


def load_gt(args, extractor) -> dict:
    from kvsmooth_hooks.eval.chair import build_coco_ground_truth, default_gt_cache, load_ground_truth

    if args.gt_objects is not None:
        return load_ground_truth(args.gt_objects)
    cache = args.gt_cache or default_gt_cache(args.coco_annotations, args.backend)
    return build_coco_ground_truth(args.coco_annotations, extractor, cache_path=cache, show_progress=not args.no_progress)


# ---------------------------------------------------------------------------- model
def resolve_device_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if str(device).startswith("cuda") else "float32"
    return device, getattr(torch, dtype)


def load_model(model_id: str, device: str, dtype):
    """``(model, processor)`` from the hub or a local directory (``AutoModelForImageTextToText``)."""
    from transformers import AutoProcessor

    try:
        from transformers import AutoModelForImageTextToText as Auto
    except ImportError:  # older transformers
        from transformers import LlavaForConditionalGeneration as Auto
    processor = AutoProcessor.from_pretrained(model_id)
    model = Auto.from_pretrained(model_id, dtype=dtype).to(device).eval()
    return model, processor


def format_prompt(processor, prompt: str) -> str:
    """The prompt in the model's chat format with one image."""
    if getattr(processor, "chat_template", None):
        conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conv, add_generation_prompt=True)
    return LLAVA15_FORMAT.format(prompt=prompt)


def _read_done(path: Path) -> dict[int, dict]:
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interrupted run: that caption is redone
                continue
            done[int(rec["image_id"])] = rec
    return done


def caption_images(model, processor, items: list[tuple[int, Path]], text: str, config: KVSmoothConfig | None,
                   out_jsonl: Path, max_new_tokens: int, batch_size: int = 1, progress: bool = True,
                   desc: str = "captions") -> list[dict]:
    """Caption ``items`` (``(image_id, path)``) greedily, appending to ``out_jsonl``; skips ids already there.

    ``config`` runs generation inside ``smooth(model, config)``; ``None`` is the baseline.
    Returns the records of all items, in order.
    """
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from kvsmooth_hooks.session import generate

    done = _read_done(out_jsonl)
    todo = [it for it in items if it[0] not in done]
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, disable=not progress, file=sys.stderr)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        images = []
        for _, path in batch:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        enc = processor(images=images, text=[text] * len(batch), return_tensors="pt", padding=True)
        enc = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in enc.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = generate(model, config, **enc, max_new_tokens=max_new_tokens, do_sample=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - t0) / len(batch)
        new = gen[:, enc["input_ids"].shape[1]:]
        captions = processor.batch_decode(new, skip_special_tokens=True)
        pad = getattr(tok, "pad_token_id", None)
        with out_jsonl.open("a", encoding="utf-8") as fh:
            for (image_id, path), caption, row in zip(batch, captions, new):
                n_new = int((row != pad).sum()) if pad is not None else int(row.numel())
                rec = {"image_id": image_id, "file": path.name, "caption": caption.strip(),
                       "new_tokens": n_new, "seconds": round(seconds, 4)}
                fh.write(json.dumps(rec) + "\n")
                done[image_id] = rec
            fh.flush()
        bar.update(len(batch))
    bar.close()
    return [done[i] for i, _ in items]


# ---------------------------------------------------------------------------- results
def machine() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line(argv: Sequence[str]) -> str:
    return "python experiments/chair_eval.py " + " ".join(shlex.quote(a) for a in argv)


def format_table(arms: dict[str, dict]) -> str:
    cols = METRIC_COLUMNS + ("s/caption",)
    lines = ["| arm | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for arm, r in arms.items():
        vals = [f"{r[c]:.1f}" for c in METRIC_COLUMNS] + [f"{r['seconds_per_caption']:.2f}"]
        lines.append(f"| {arm} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def run(args, loader: Callable | None = None, argv: Sequence[str] = ()) -> dict:
    """The whole run; returns the results dict (also written to ``<out>/results.json``)."""
    from kvsmooth_hooks.eval.chair import ChairEvaluator
    from kvsmooth_hooks.eval.coco_objects import ObjectExtractor

    arms = parse_arms(args.arms)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise EvalInputError("--max-new-tokens and --batch-size must be at least 1")
    cfg = smoothing_config(args)
    # inputs first: a wrong folder fails in a second, not after loading a 7B model
    images = list_coco_images(args.coco_images)
    chosen = choose_image_ids(images, args.n, args.seed)
    extractor = ObjectExtractor(args.backend)
    gt = load_gt(args, extractor)
    missing = [i for i in chosen if i not in gt]
    if missing:
        raise EvalInputError(f"{len(missing)} chosen image(s) have no ground truth (e.g. image_id {missing[0]}, "
                             f"file {images[missing[0]].name}); are --coco-images and the annotations the same split?")
    out: Path = args.out
    settings = {"model": args.model, "prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "n": args.n,
                "seed": args.seed, "image_ids": chosen, "config": cfg.to_dict(), "backend": args.backend}
    check_run_settings(out, settings)
    (out / "image_ids.json").write_text(json.dumps({"seed": args.seed, "n": len(chosen), "image_ids": chosen,
                                                    "selection": "random.Random(seed).sample(sorted(ids), n)"}) + "\n")

    device, dtype = resolve_device_dtype(args.device, args.dtype)
    model, processor = (loader or load_model)(args.model, device, dtype)
    text = format_prompt(processor, args.prompt)
    evaluator = ChairEvaluator(gt, extractor)
    items = [(i, images[i]) for i in chosen]
    results = {}
    for arm in arms:
        path = out / f"captions_{arm}.jsonl"
        recs = caption_images(model, processor, items, text, cfg if arm == "smoothed" else None, path,
                              args.max_new_tokens, args.batch_size, progress=not args.no_progress, desc=arm)
        chair = evaluator.evaluate(recs, n_bootstrap=args.bootstrap, seed=args.seed)
        secs = [r["seconds"] for r in recs]
        results[arm] = {**chair.overall, "ci95": {k: list(v) for k, v in chair.intervals.items()},
                        "counts": chair.counts, "seconds_per_caption": sum(secs) / len(secs),
                        "mean_new_tokens": sum(r["new_tokens"] for r in recs) / len(recs), "captions": path.name}
        (out / f"chair_{arm}.json").write_text(json.dumps(chair.to_dict(), indent=1) + "\n", encoding="utf-8")
    command = command_line(argv)
    payload = {"command": command, "machine": machine(), "model": args.model, "prompt": args.prompt,
               "formatted_prompt": text, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
               "device": str(device), "dtype": str(dtype).replace("torch.", ""), "seed": args.seed, "n": len(chosen),
               "image_ids": chosen, "config": cfg.to_dict(), "arms": results}
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    table = format_table(results)
    (out / "results.md").write_text(f"{table}\n\n{command}\n", encoding="utf-8")
    print(f"\nCHAIR on {len(chosen)} COCO val2014 images (seed {args.seed}), {args.model}, "
          f"max_new_tokens {args.max_new_tokens}; smoothed = {cfg.site} lambda_ref={cfg.lambda_ref} layers={cfg.layers}")
    print(table)
    print(f"\nresults: {out}/results.json, results.md, captions_<arm>.jsonl, chair_<arm>.json, image_ids.json")
    print(f"reproduce with: {command}")
    return payload


def main(argv: Sequence[str] | None = None, loader: Callable | None = None) -> int:
    """Command-line entry; ``loader(model_id, device, dtype) -> (model, processor)`` replaces the hub loader."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, loader=loader, argv=argv)
    except (EvalInputError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
