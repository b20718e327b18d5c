"""Small synthetic data in each benchmark's official file layout (images written with PIL), for the runner tests.

``write_all(root)`` makes::

    root/coco/val2014/COCO_val2014_<id>.jpg      6 random images
    root/coco/annotations/{instances,captions}_{train,val}2014.json   COCO 2014 annotation files
    root/coco/coco/coco_pope_{random,popular,adversarial}.json        POPE question files (JSON lines, as distributed)
    root/coco/obj_halbench_300_with_image.jsonl  Object-HalBench questions (image as base64, as in RLHF-V)
    root/amber/data/{annotations.json, relation.json, safe_words.txt, query/query_{generative,discriminative,all}.json}
    root/amber/image/AMBER_<i>.jpg
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

IMAGE_IDS = [9, 25, 42, 73, 391895, 522418]
CATS = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 15, "name": "bench"}, {"id": 3, "name": "car"},
        {"id": 62, "name": "chair"}, {"id": 47, "name": "cup"}]
OBJECTS = {9: [18, 15], 25: [1], 42: [3, 62], 73: [47, 1], 391895: [18], 522418: [62, 47]}


def _jpeg(rng, size=(40, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_coco(root: Path) -> Path:
    rng = np.random.RandomState(0)
    d = root / "coco"
    (d / "val2014").mkdir(parents=True)
    for i in IMAGE_IDS:
        (d / "val2014" / f"COCO_val2014_{i:012d}.jpg").write_bytes(_jpeg(rng))
    ann = d / "annotations"
    ann.mkdir()
    names = {c["id"]: c["name"] for c in CATS}
    inst = {"categories": CATS, "annotations": [{"image_id": i, "category_id": c} for i, cs in OBJECTS.items() for c in cs]}
    caps = {"annotations": [{"image_id": i, "caption": "A photo of a " + " and a ".join(names[c] for c in cs) + "."}
                            for i, cs in OBJECTS.items()]}
    (ann / "instances_val2014.json").write_text(json.dumps(inst))
    (ann / "captions_val2014.json").write_text(json.dumps(caps))
    (ann / "instances_train2014.json").write_text(json.dumps({"categories": CATS, "annotations": []}))
    (ann / "captions_train2014.json").write_text(json.dumps({"annotations": []}))
    # POPE: for every image one present object (yes) and one absent object (no); JSON lines in a .json file
    (d / "coco").mkdir()
    for split in ("random", "popular", "adversarial"):
        lines, qid = [], 1
        for i, cs in OBJECTS.items():
            absent = next(c for c in names if c not in cs and (c + len(split)) % 2 == 0 or c not in cs)
            for obj, label in ((names[cs[0]], "yes"), (names[absent], "no")):
                lines.append(json.dumps({"question_id": qid, "image": f"COCO_val2014_{i:012d}.jpg",
                                         "text": f"Is there a {obj} in the image?", "label": label}))
                qid += 1
        (d / "coco" / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
    # Object-HalBench (RLHF-V release: image_id, question, base64 image)
    rows = [{"image_id": i, "question": "Describe this image in detail.",
             "image": base64.b64encode(_jpeg(rng)).decode()} for i in IMAGE_IDS[:4]]
    (d / "obj_halbench_300_with_image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def write_amber(root: Path) -> Path:
    rng = np.random.RandomState(1)
    d = root / "amber"
    (d / "data" / "query").mkdir(parents=True)
    (d / "image").mkdir()
    anns, gen_q, disc_q = [], [], []
    scenes = [(["dog", "bench"], ["cat", "car"]), (["person", "cup"], ["zebra"]), (["car", "tree"], ["dog"])]
    for k, (truth, hallu) in enumerate(scenes):
        anns.append({"id": len(anns) + 1, "image": f"AMBER_{k + 1}.jpg", "type": "generative", "truth": truth,
                     "hallu": hallu})
        gen_q.append({"id": len(anns), "image": f"AMBER_{k + 1}.jpg", "query": "Describe this image."})
        (d / "image" / f"AMBER_{k + 1}.jpg").write_bytes(_jpeg(rng))
    for k, (truth, hallu) in enumerate(scenes):
        for obj, ans in ((truth[0], "yes"), (hallu[0], "no")):
            anns.append({"id": len(anns) + 1, "image": f"AMBER_{k + 1}.jpg", "type": "discriminative-hallucination",
                         "truth": ans})
            disc_q.append({"id": len(anns), "image": f"AMBER_{k + 1}.jpg", "query": f"Is there a {obj} in this image?"})
    data = d / "data"
    (data / "annotations.json").write_text(json.dumps(anns))
    (data / "relation.json").write_text(json.dumps({"dog": ["puppy"], "car": ["vehicle"], "person": ["man", "woman"],
                                                    "cup": [], "bench": [], "cat": [], "zebra": [], "tree": []}))
    (data / "safe_words.txt").write_text("image\nphoto\n")
    (data / "query" / "query_generative.json").write_text(json.dumps(gen_q))
    (data / "query" / "query_discriminative.json").write_text(json.dumps(disc_q))
    (data / "query" / "query_all.json").write_text(json.dumps(gen_q + disc_q))
    return d


def write_all(root: Path) -> dict[str, Path]:
    return {"coco": write_coco(root), "amber": write_amber(root)}
