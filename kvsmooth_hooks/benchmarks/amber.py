"""AMBER: generative (describe the image) and discriminative (yes/no about existence, attributes, relations).

Data folder: AMBER's ``data/`` folder as in github.com/junyangwang0410/AMBER (``annotations.json``,
``relation.json``, ``safe_words.txt``, ``query/query_<task>.json`` with ``{"id", "image", "query"}``) and
the images (``--set images=``, default ``image``, relative to ``--data``).
Options: ``task``: AMBER's evaluation args, ``g`` (generative, ``query_generative.json``), ``d``
(discriminative), ``de`` / ``da`` / ``dr`` (existence / attribute / relation), ``a`` or ``all``
(``query_all.json``), or a query file name; ``images``; ``backend``
(noun extraction: ``offline`` or ``nltk``, the reference); ``similarity`` (``none`` or ``spacy``, the reference);
``answer_rule`` (``official``: discriminative answers must be exactly Yes/No, as AMBER's script; ``pope``).
Items: the first ``n`` queries in file order, the query text as prompt; 512 new tokens for generative
queries (discriminative answers are parsed from the start of the text).
Score: :func:`kvsmooth_hooks.eval.amber.compute_amber` (CHAIR, Cover, Hal, Cog; discriminative accuracy and
F1 with *no* positive; AMBER score when both kinds are present), with bootstrap intervals for the generative
metrics; the runner resamples items for the others (see ``runner.report``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from .registry import register_benchmark
from .base import Benchmark, BenchmarkError, Item, read_json_records

#: AMBER's evaluation args (README) -> query file
TASK_FILES = {"a": "query_all.json", "all": "query_all.json", "g": "query_generative.json",
              "d": "query_discriminative.json", "de": "query_discriminative-existence.json",
              "da": "query_discriminative-attribute.json", "dr": "query_discriminative-relation.json"}


@register_benchmark
class Amber(Benchmark):
    name = "amber"
    metrics = ("CHAIR", "Cover", "Hal", "Cog", "Accuracy", "F1", "AMBER")
    lower_is_better = ("CHAIR", "Hal", "Cog")
    options = {"task": "g", "images": "image", "backend": "offline", "similarity": "none", "answer_rule": "official"}

    @property
    def root(self) -> Path:
        return self.data / "data" if not (self.data / "annotations.json").is_file() and (self.data / "data").is_dir() \
            else self.data

    @cached_property
    def amber_data(self):
        from ..eval.amber import load_amber_data

        return load_amber_data(self.root)

    def query_file(self) -> Path:
        name = TASK_FILES.get(self.opts["task"], self.opts["task"])
        return self.need(self.root / "query" / name, f"AMBER query file for task {self.opts['task']!r}", "task")

    def items(self, n, seed):
        qfile = self.query_file()
        rows = read_json_records(qfile, "AMBER query")
        rows = rows if n is None else rows[:n]
        n_ann = len(self.amber_data.annotations)
        items = []
        for i, r in enumerate(rows, 1):
            for key in ("id", "image", "query"):
                if key not in r:
                    raise BenchmarkError(f"{qfile} item {i}: missing field {key!r}; AMBER queries have id, image, query")
            if not 1 <= int(r["id"]) <= n_ann:
                raise BenchmarkError(f"{qfile} item {i}: id {r['id']} outside 1..{n_ann} of annotations.json")
            img = self.path("images")
            img = img if img.is_absolute() or (self.data / self.opts["images"]).exists() else self.root / self.opts["images"]
            path = img / r["image"]
            if not path.is_file():
                raise BenchmarkError(f"AMBER image {r['image']} (id {r['id']}) not found in {img} (--set images=FOLDER)")
            items.append(Item(str(r["id"]), r["query"], path, {"amber_id": int(r["id"])}))
        return items

    def data_files(self):
        return [self.query_file()] + [self.root / f for f in ("annotations.json", "relation.json", "safe_words.txt")]

    def score(self, records, n_bootstrap=1000, seed=0):
        from ..eval.amber import compute_amber

        res = compute_amber([{"id": r["amber_id"], "response": r["output"]} for r in records], self.amber_data,
                            backend=self.opts["backend"], similarity=self.opts["similarity"],
                            answer_rule=self.opts["answer_rule"], on_duplicate="keep", n_bootstrap=n_bootstrap,
                            seed=seed)
        out = dict(res.generative or {})
        out.pop("num", None)
        disc = res.discriminative.get("overall")
        if disc:
            out.update(Accuracy=disc["Accuracy"], F1=disc["F1"])
        if res.amber_score is not None:
            out["AMBER"] = res.amber_score
        out["n"] = len(records)
        out["ci95"] = {k: list(v) for k, v in res.intervals.items() if k in self.metrics}
        return out
