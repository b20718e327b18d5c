"""Evaluation protocols in one word, and what every result records to be reproducible.

A protocol fixes what a reproduction thread asks for: the benchmark, the items (count and seed), the prompt
template and question, the decoding settings, the smoothing preset of the model family, and the metric rule.
:func:`resolve_protocol` turns a protocol name and a model id into those settings; :func:`protocol_record` is the
block a result carries (template text and digest, digest of the item-id list, decoding settings, seeds, versions,
metric rule).

``kvsmooth-chair`` (KVSmooth, arXiv 2602.04268, Sec. 4): CHAIR on 500 COCO val2014 images, greedy, 512 new tokens,
layers 3..L-2, the family's λ_ref (LLaVA-1.5 0.9, MiniGPT-4 0.5, InstructBLIP 0.7), the OPERA harness template of
the family (``chair_eval.py``, which PAI and later papers reuse) with its question. The paper does not print its
prompt; OPERA's is our choice (docs/experiments.md).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .core.errors import UserError

__all__ = ["Protocol", "PROTOCOLS", "ProtocolError", "model_family", "resolve_protocol", "protocol_record",
           "ids_digest", "cpu_threads_per_process", "auto_batch_size"]

CHAIR_RULE = ("CHAIR (Rohrbach et al., EMNLP 2018) as in OPERA / PAI chair.py: MS-COCO 2014 instances + captions, "
              "synonyms.txt, two-word rules; CHAIR_S = captions with a hallucinated object / captions, CHAIR_I = "
              "hallucinated / mentioned object instances; Recall = correct / ground-truth objects")


class ProtocolError(UserError):
    """A protocol name or model the protocol cannot serve; the message says which and the fix."""


@dataclass(frozen=True)
class Protocol:
    name: str
    benchmark: str
    n: int
    seed: int
    max_new_tokens: int
    decoding: dict
    layers: str
    preset_by_family: dict
    template_by_family: dict
    metric_rule: str
    source: str


PROTOCOLS: dict[str, Protocol] = {
    "kvsmooth-chair": Protocol(
        name="kvsmooth-chair", benchmark="chair", n=500, seed=0, max_new_tokens=512,
        decoding={"do_sample": False, "num_beams": 1}, layers="3:-1",
        preset_by_family={"llava-1.5": "llava-1.5", "minigpt-4": "minigpt-4", "instructblip": "instructblip"},
        template_by_family={"llava-1.5": "opera-llava-1.5", "minigpt-4": "opera-minigpt4",
                            "instructblip": "opera-instructblip", "shikra": "opera-shikra"},
        metric_rule=CHAIR_RULE, source="KVSmooth (arXiv 2602.04268) Sec. 4; OPERA chair_eval.py for the prompt"),
}

_FAMILY_WORDS = (("instructblip", "instructblip"), ("minigpt", "minigpt-4"), ("shikra", "shikra"), ("llava", "llava-1.5"))


def model_family(model_id: str) -> str | None:
    """``llava-1.5``, ``instructblip``, ``minigpt-4``, ``shikra`` from words of a model id (None: none of them)."""
    text = model_id.lower()
    for word, family in _FAMILY_WORDS:
        if word in text:
            return family
    return None


def resolve_protocol(name: str, model_id: str, family: str | None = None) -> dict:
    """The settings of protocol ``name`` for ``model_id``: benchmark, n, seed, max_new_tokens, decoding, preset,
    template, question, layers, metric_rule. ``family`` overrides the family read from the model id."""
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; protocols: {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    fam = family or model_family(model_id)
    if fam not in p.template_by_family:
        raise ProtocolError(f"protocol {name!r} knows the families {sorted(p.template_by_family)}, and {model_id!r} "
                            f"is {'of family ' + repr(fam) if fam else 'none of them'}: pass the family "
                            "(--set family=llava-1.5) or give --template and --preset yourself")
    from .templates import get_template

    template = get_template(p.template_by_family[fam])
    return {"protocol": name, "family": fam, "benchmark": p.benchmark, "n": p.n, "seed": p.seed,
            "max_new_tokens": p.max_new_tokens, "decoding": dict(p.decoding), "layers": p.layers,
            "preset": p.preset_by_family.get(fam), "template": template.name, "question": template.question,
            "metric_rule": p.metric_rule, "source": p.source}


def ids_digest(ids) -> str:
    """sha256 (first 16 hex digits) of the item ids in order, one per line: two runs asked the same items iff equal."""
    return hashlib.sha256("\n".join(str(i) for i in ids).encode()).hexdigest()[:16]


def protocol_record(*, template=None, question: str | None = None, ids=(), decoding: dict | None = None,
                    seeds: dict | None = None, metric_rule: str | None = None, protocol: str | None = None) -> dict:
    """What a result carries so that a reader can tell whether two results are comparable."""
    import platform

    import torch
    import transformers

    from ._version import __version__

    tmpl = None
    if template is not None:
        from .templates import get_template

        tmpl = get_template(template).record()
    ids = list(ids)
    return {"protocol": protocol, "template": tmpl, "question": question, "n_items": len(ids),
            "item_ids_sha256": ids_digest(ids), "decoding": dict(decoding or {}), "seeds": dict(seeds or {}),
            "metric_rule": metric_rule,
            "versions": {"kvsmooth_hooks": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()}}


def cpu_threads_per_process(local_world_size: int, cpu_count: int | None = None, env=None) -> int | None:
    """Intra-op threads for one of ``local_world_size`` CPU processes on this node: the cores split evenly
    (at least 1), or None when the user set ``OMP_NUM_THREADS`` (theirs wins). Without this every process starts
    as many threads as there are cores, and N processes on C cores run N x C threads: oversubscription, which
    costs far more than a fair share (issue 23 measured a 30x slowdown with three processes on two cores)."""
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS"):
        return None
    cores = cpu_count or os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def auto_batch_size(n_items: int, device: str, kv_bytes_per_item: int | None = None, free_bytes: int | None = None,
                    cpu_batch: int = 8, max_batch: int = 64, share: float = 0.5) -> int:
    """``--batch-size auto``: on CPU ``cpu_batch`` (the best items/s measured on SmolLM2 here, docs/experiments.md);
    on a GPU the largest batch whose KV caches (``kv_bytes_per_item``: 2 x layers x KV heads x head dim x (prompt +
    new tokens) x bytes) fit in ``share`` of the free memory, capped at ``max_batch``; never more than the items."""
    if not str(device).startswith("cuda") or not kv_bytes_per_item or not free_bytes:
        return max(1, min(cpu_batch, n_items))
    return max(1, min(max_batch, n_items, int(free_bytes * share // kv_bytes_per_item)))
