"""Object-HalBench (RLHF-V): detailed descriptions of COCO images, objects scored with CHAIR's rules.

Data folder: the question file (``--set questions=``, default ``obj_halbench_300_with_image.jsonl``; JSON
lines or a JSON list with ``image_id`` and ``question``; the image is the ``image`` field, a path relative
to ``--data`` or a base64-encoded image as in the RLHF-V release, or else ``images/<COCO name>`` for the
image id), and the ground truth as for CHAIR (``annotations/`` or ``--set gt=FILE``).
Items: the first ``n`` questions in file order (the benchmark is a fixed set of 300; no draw).
Score: :func:`kvsmooth_hooks.eval.objhal.compute_objhal` (rule-based object extraction, no paid API).
"""

from __future__ import annotations

import base64
import binascii
import os

from .registry import register_benchmark
from .base import Benchmark, BenchmarkError, Item, coco_image_index, read_json_records
from .chair import CocoGroundTruth


@register_benchmark
class ObjectHalBench(CocoGroundTruth, Benchmark):
    name = "objhal"
    metrics = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1")
    lower_is_better = ("CHAIR_S", "CHAIR_I")
    plot_metrics = ("CHAIR_S", "Recall")
    options = {"questions": "obj_halbench_300_with_image.jsonl", "images": "images", "annotations": "annotations",
               "gt": "", "backend": "offline"}

    def items(self, n, seed):
        qfile = self.need(self.path("questions"), "Object-HalBench question file", "questions")
        rows = read_json_records(qfile, "question")
        rows = rows if n is None else rows[:n]
        out, index = [], None
        for i, r in enumerate(rows, 1):
            for key in ("image_id", "question"):
                if key not in r:
                    raise BenchmarkError(f"{qfile} item {i}: missing field {key!r} (fields: {', '.join(sorted(r))})")
            image = r.get("image")
            path = None
            if isinstance(image, str) and (self.data / image).is_file():
                path = self.data / image
            elif isinstance(image, str) and len(image) > 200:
                path = self._decoded(qfile, i, image, r["image_id"])
            else:
                index = index or coco_image_index(self.path("images"), "--set images")
                path = index.get(int(r["image_id"]))
                if path is None:
                    raise BenchmarkError(f"{qfile} item {i}: no image for image_id {r['image_id']} in {self.path('images')}")
            out.append(Item(f"{i:05d}", r["question"], path, {"image_id": int(r["image_id"])}))
        self.check_gt([it.meta["image_id"] for it in out], str(qfile))
        return out

    def _decoded(self, qfile, i, b64: str, image_id):
        """Base64 images of the release are written once to ``<data>/.objhal_images/``."""
        folder = self.data / ".objhal_images"
        folder.mkdir(exist_ok=True)
        path = folder / f"{i:05d}_{image_id}.jpg"
        if not path.is_file():
            try:
                data = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise BenchmarkError(f"{qfile} item {i}: field 'image' is neither a file under --data nor base64")
            tmp = path.with_suffix(f".{os.getpid()}.part")  # ranks may decode the same file at once
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return path

    def data_files(self):
        return [self.path("questions")] + self.gt_files()

    def score(self, records, n_bootstrap=1000, seed=0):
        from ..eval.objhal import compute_objhal

        res = compute_objhal([{"image_id": r["image_id"], "response": r["output"]} for r in records],
                             self.ground_truth, backend=self.opts["backend"], n_bootstrap=n_bootstrap, seed=seed)
        return {**{k: res.overall[k] for k in self.metrics}, "ci95": {k: list(v) for k, v in res.intervals.items()},
                "n": len(records)}
