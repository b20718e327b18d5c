"""CHAIR captioning runner for users with a GPU: baseline and smoothed arms in one run.

    python experiments/chair_eval.py --coco-images val2014/ --coco-annotations annotations/ \
        --n 500 --seed 0 --preset llava-1.5 --out results/chair_llava --device cuda --dtype float16

Loads any supported image-text-to-text model with its processor (default ``llava-hf/llava-1.5-7b-hf``),
draws N COCO val2014 images with a seeded sample of the *sorted* image ids (written to the results: the
common shuffle of a directory listing is not reproducible), captions each with the paper's prompt
("Please help me describe the image in detail.", max_new_tokens 512, greedy), once without and once with
smoothing, then scores both arms with CHAIR (ground truth from the COCO 2014 annotations, cached as JSON).
Per-arm captions are JSONL files and the run is resumable. Prints the table with seconds per caption.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

PAPER_PROMPT = "Please help me describe the image in detail."
_NAME = re.compile(r"COCO_val2014_(\d+)\.jpg$")


def list_images(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        raise SystemExit(f"error: --coco-images {folder}: not a directory (expected COCO val2014 images)")
    images = {int(m.group(1)): p for p in folder.iterdir() if (m := _NAME.search(p.name))}
    if not images:
        raise SystemExit(f"error: --coco-images {folder}: no file named like COCO_val2014_000000391895.jpg")
    return images


def choose(ids, n: int, seed: int) -> list[int]:
    """``n`` image ids: a seeded sample of the sorted ids (reproducible on any file system)."""
    ids = sorted(ids)
    return random.Random(seed).sample(ids, min(n, len(ids)))


def build_prompt(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"USER: <image>\n{prompt} ASSISTANT:"  # the LLaVA-1.5 conversation format


def load_default(model_id: str, device: str, dtype: str):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_id)
    model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=getattr(torch, dtype)).to(device).eval()
    return model, processor


def caption_arm(model, processor, images: dict[int, Path], chosen, text, config, out_jsonl: Path, max_new_tokens: int,
                desc: str) -> list[dict]:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from kvsmooth_hooks import smooth

    done = {}
    if out_jsonl.exists():
        for line in out_jsonl.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["image_id"]] = rec
    for image_id in tqdm([i for i in chosen if i not in done], desc=desc, file=sys.stderr):
        image = Image.open(images[image_id]).convert("RGB")
        inputs = processor(images=image, text=text, return_tensors="pt").to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        t0 = time.perf_counter()
        with torch.no_grad():
            if config is None:
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            else:
                with smooth(model, config, trace=False):
                    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        seconds = time.perf_counter() - t0
        caption = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        rec = {"image_id": image_id, "caption": caption, "seconds": round(seconds, 4)}
        with out_jsonl.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        done[image_id] = rec
    return [done[i] for i in chosen]


def main(argv=None, load=None) -> int:
    """``load(model_id, device, dtype) -> (model, processor)`` can be injected (tests use a tiny model)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llava-hf/llava-1.5-7b-hf")
    ap.add_argument("--coco-images", type=Path, required=True, help="COCO val2014 image folder")
    ap.add_argument("--coco-annotations", type=Path, help="COCO 2014 annotations folder (instances/captions train+val)")
    ap.add_argument("--gt-objects", type=Path, help="or: ground truth JSON {image_id: [categories]}")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt", default=PAPER_PROMPT)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default="llava-1.5")
    src.add_argument("--config", type=Path)
    ap.add_argument("--arms", default="baseline,smoothed")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", type=Path, default=Path("results/chair_eval"))
    args = ap.parse_args(argv)

    from kvsmooth_hooks import KVSmoothConfig
    from kvsmooth_hooks.eval import ChairEvaluator, build_coco_ground_truth, load_ground_truth

    if not args.coco_annotations and not args.gt_objects:
        raise SystemExit("error: give --coco-annotations DIR or --gt-objects FILE for the CHAIR ground truth")
    cfg = KVSmoothConfig.from_file(args.config) if args.config else KVSmoothConfig.preset(args.preset)
    images = list_images(args.coco_images)
    chosen = choose(images, args.n, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chosen_images.json").write_text(json.dumps({"seed": args.seed, "n": len(chosen), "image_ids": chosen}) + "\n")
    if args.gt_objects:
        gt = load_ground_truth(args.gt_objects)
    else:
        gt = build_coco_ground_truth(args.coco_annotations, cache_path=args.out / "coco_gt_cache.json")
    missing = [i for i in chosen if i not in gt]
    if missing:
        raise SystemExit(f"error: {len(missing)} chosen images have no ground truth (first: {missing[0]}); "
                         "are the annotations COCO 2014 train+val?")
    model, processor = (load or load_default)(args.model, args.device, args.dtype)
    text = build_prompt(processor, args.prompt)
    evaluator = ChairEvaluator({i: gt[i] for i in chosen})
    rows = {}
    for arm in [a.strip() for a in args.arms.split(",") if a.strip()]:
        if arm not in ("baseline", "smoothed"):
            raise SystemExit(f"error: --arms: unknown arm {arm!r}; use baseline and/or smoothed")
        caps = caption_arm(model, processor, images, chosen, text, cfg if arm == "smoothed" else None,
                           args.out / f"captions_{arm}.jsonl", args.max_new_tokens, arm)
        result = evaluator.evaluate(caps, n_bootstrap=1000, seed=args.seed)
        rows[arm] = {**result.overall, "s_per_caption": sum(c["seconds"] for c in caps) / len(caps),
                     "ci95": {k: list(v) for k, v in result.intervals.items()}}
        (args.out / f"chair_{arm}.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    cols = ("CHAIR_S", "CHAIR_I", "Recall", "F1", "Len", "s_per_caption")
    lines = [f"model {args.model}, {len(chosen)} COCO val2014 images (seed {args.seed}), max_new_tokens {args.max_new_tokens}, "
             f"smoothed = {cfg.site} lambda_ref={cfg.lambda_ref} layers={cfg.layers}",
             "| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for arm, r in rows.items():
        lines.append(f"| {arm} | " + " | ".join(f"{r[c]:.2f}" if c == "s_per_caption" else f"{r[c]:.1f}" for c in cols) + " |")
    print("\n".join(lines))
    results = {"model": args.model, "config": cfg.to_dict(), "prompt": args.prompt, "chosen_image_ids": chosen,
               "max_new_tokens": args.max_new_tokens, "arms": rows, "argv": sys.argv[1:] if argv is None else list(argv)}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}/results.json, captions_<arm>.jsonl, chosen_images.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
