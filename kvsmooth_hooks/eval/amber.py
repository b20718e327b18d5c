"""AMBER: generative and discriminative hallucination metrics.

Wang et al., *AMBER: An LLM-free Multi-dimensional Benchmark for MLLMs
Hallucination Evaluation*, 2023 (github.com/junyangwang0410/AMBER).  The
benchmark data (``annotations.json``, ``relation.json``, ``safe_words.txt``)
is not shipped here; point ``data_dir`` at the AMBER ``data/`` folder.
Responses are a JSON list (or JSON lines) of ``{"id": int, "response": str}``
where ``id`` is the 1-based index into ``annotations.json``.

Generative task (per response of type ``generative``):

* nouns of the response are lemmatised and kept if they are AMBER object
  words (the keys and values of ``relation.json``);
* a noun in ``safe_words.txt`` is ignored (but counted in the denominator, as
  in the reference); a noun equal to a ground-truth object or one of its
  associated words covers that object; a noun equal to an annotated
  hallucination target (or its associations) marks that target; a noun that
  covers no ground-truth object is a hallucination;
* ``CHAIR`` = hallucinated nouns / nouns, ``Cover`` = covered ground-truth
  objects / ground-truth objects, ``Hal`` = responses with a hallucination /
  responses, ``Cog`` = marked hallucination targets / hallucination targets.

The reference additionally treats a noun as matching a word when their spaCy
``en_core_web_lg`` vector similarity exceeds 0.8.  ``similarity="spacy"``
does the same (needs ``pip install spacy`` and ``python -m spacy download
en_core_web_lg``); the default ``similarity="none"`` uses exact matches only,
so CHAIR can be slightly higher and Cover/Cog slightly lower than the reference.

Noun extraction: ``backend="nltk"`` runs NLTK's tokenizer + POS tagger and
keeps ``NN*`` tokens (the reference); ``backend="offline"`` lower-cases,
tokenises with the offline tokenizer, singularises each token towards the
AMBER vocabulary and keeps vocabulary words whatever their part of speech.

Discriminative tasks (existence, attribute, relation): "no" is the positive
class.  Accuracy, Precision (correct "no" / answered "no"), Recall (correct
"no" / true "no") and F1.  The reference compares the response string with
``"Yes"``/``"No"`` exactly; ``strict=True`` does that, the default parses the
answer with the POPE rule first.

``AMBER score`` = ½ (100 − CHAIR + F1), with F1 over all discriminative questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .bootstrap import safe_ratio
from .lemmatize import OfflineLemmatizer, tokenize
from .pope import parse_yes_no
from .records import EvalInputError, Records, as_records, index_records, read_json, record_id, record_text

__all__ = ["AmberData", "AmberResult", "compute_amber", "load_amber_data", "load_amber_responses", "amber_generative_item"]

_ATTRIBUTE_TYPES = (
    "discriminative-attribute-state",
    "discriminative-attribute-number",
    "discriminative-attribute-action",
)
_EXISTENCE_TYPE = "discriminative-hallucination"


@dataclass
class AmberData:
    """AMBER annotations, word associations and safe words."""

    annotations: list[dict]
    association: dict[str, list[str]]
    safe_words: set[str]

    @property
    def object_words(self) -> set[str]:
        words = set(self.association)
        for vals in self.association.values():
            words.update(vals)
        return words


def load_amber_data(data_dir: str | Path) -> AmberData:
    """Load ``annotations.json``, ``relation.json`` and ``safe_words.txt`` from ``data_dir`` (checked)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise EvalInputError(f"{d}: AMBER data folder not found; pass the data/ folder of "
                             "github.com/junyangwang0410/AMBER")
    paths = {name: d / name for name in ("annotations.json", "relation.json", "safe_words.txt")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise EvalInputError(
            f"missing AMBER data file(s): {', '.join(missing)}; pass the data/ folder of "
            "github.com/junyangwang0410/AMBER"
        )
    annotations = read_json(paths["annotations.json"], "AMBER annotations (a JSON list)")
    if not isinstance(annotations, list) or not annotations:
        raise EvalInputError(f"{paths['annotations.json']}: expected a non-empty JSON list of annotations")
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "type" not in ann or "truth" not in ann:
            raise EvalInputError(f"{paths['annotations.json']} item {i + 1}: expected an object with 'type' and "
                                 "'truth'; is this AMBER's annotations.json?")
        if ann["type"] == "generative" and not (isinstance(ann["truth"], list) and isinstance(ann.get("hallu"), list)):
            raise EvalInputError(f"{paths['annotations.json']} item {i + 1}: a generative annotation needs lists "
                                 "'truth' and 'hallu'")
    association = read_json(paths["relation.json"], "AMBER word associations (a JSON object)")
    if not isinstance(association, dict) or not all(
            isinstance(v, list) and all(isinstance(w, str) for w in v) for v in association.values()):
        raise EvalInputError(f"{paths['relation.json']}: expected a JSON object {{word: [associated words]}}")
    text = paths["safe_words.txt"].read_bytes()
    try:
        safe = {line.rstrip("\r") for line in text.decode("utf-8").split("\n")}
    except UnicodeDecodeError:
        raise EvalInputError(f"{paths['safe_words.txt']}: not UTF-8 text") from None
    return AmberData(annotations=annotations, association=association, safe_words=safe)


def load_amber_responses(source: str | Path | Iterable[Mapping[str, Any]], num_annotations: int,
                         on_duplicate: str = "error") -> list[dict]:
    """AMBER responses ``[{"id", "response"}]`` (JSON list or JSON Lines), checked.

    ``id`` must be an integer in ``1..num_annotations`` (the 1-based index into ``annotations.json``;
    ``"7"`` and ``7.0`` are accepted, ``1.7`` and ``"AMBER_7"`` are not); ``response`` a string.  A
    repeated id is an error (``on_duplicate="warn"``: keep the first).
    """
    recs = as_records(source, required=("id", "response"), what="AMBER response")
    rows = []
    for i, r in enumerate(recs):
        where = recs.where(i)
        rid = record_id(r, "id", where)
        if not 1 <= rid <= num_annotations:
            raise EvalInputError(f"{where}: field 'id' is {rid}, outside 1..{num_annotations} of annotations.json")
        rows.append({"id": rid, "response": record_text(r, "response", where), "where": where})
    index = index_records(Records(rows, [x["where"] for x in rows]), lambda i, x: x["id"], lambda i, x: x["response"],
                          "response", "id", on_duplicate)
    kept = {w for _, w in index.values()}
    return [x for x in rows if x["where"] in kept]


def _index(words_by_target: Iterable[str], association: Mapping[str, list[str]]) -> dict[str, int]:
    """word → index of the target it covers; association words take precedence, first match wins."""
    targets = list(words_by_target)
    idx: dict[str, int] = {}
    for i, t in enumerate(targets):
        for w in association.get(t, []):
            idx.setdefault(w, i)
    for i, t in enumerate(targets):
        idx.setdefault(t, i)
    return idx


def amber_generative_item(
    nouns: list[str],
    truth: list[str],
    hallu: list[str],
    data: AmberData,
    similar: Callable[[str, str], bool] | None = None,
) -> dict:
    """Score one generative response given its (already filtered) nouns."""
    safe_idx = _index(truth, data.association)
    hal_idx = _index(hallu, data.association)
    safe_order = [w for t in truth for w in data.association.get(t, [])] + list(truth)
    hal_order = [w for t in hallu for w in data.association.get(t, [])] + list(hallu)
    covered = [0] * len(truth)
    cog = [0] * len(hallu)
    hallucinated: list[str] = []
    for noun in nouns:
        if noun in data.safe_words:
            continue
        if noun in safe_idx:
            covered[safe_idx[noun]] = 1
            continue
        if noun in hal_idx:
            cog[hal_idx[noun]] = 1
        if similar is not None:
            for w in hal_order:
                if similar(noun, w):
                    cog[hal_idx[w]] = 1
                    break
            match = next((w for w in safe_order if similar(noun, w)), None)
            if match is not None:
                covered[safe_idx[match]] = 1
                continue
        hallucinated.append(noun)
    return {
        "nouns": nouns,
        "hallucinated": hallucinated,
        "covered": [t for t, c in zip(truth, covered) if c],
        "cog": [t for t, c in zip(hallu, cog) if c],
        "num_truth": len(truth),
        "num_hallu": len(hallu),
    }


class _OfflineNouns:
    def __init__(self, vocabulary: set[str]) -> None:
        self.vocab = vocabulary
        self.lem = OfflineLemmatizer(vocabulary=vocabulary)

    def __call__(self, text: str) -> list[str]:
        out = []
        for tok in tokenize(text.lower()):
            lemma = self.lem.noun_lemma(tok)
            if lemma in self.vocab:
                out.append(lemma)
        return out


class _NltkNouns:
    def __init__(self, vocabulary: set[str]) -> None:
        from .lemmatize import NltkLemmatizer

        self.vocab = vocabulary
        self.nl = NltkLemmatizer()

    def __call__(self, text: str) -> list[str]:
        nltk = self.nl._nltk
        tagged = nltk.pos_tag(nltk.word_tokenize(text))
        lemmas = [self.nl._wnl.lemmatize(w) for w, pos in tagged if pos.startswith("NN")]
        return [w for w in lemmas if w in self.vocab]


def _spacy_similarity(threshold: float) -> Callable[[str, str], bool]:
    try:
        import spacy
    except ImportError as exc:
        raise EvalInputError(
            "similarity='spacy' needs spaCy: pip install 'kvsmooth-hooks[spacy]' && "
            "python -m spacy download en_core_web_lg (or use similarity='none')"
        ) from exc
    try:
        nlp = spacy.load("en_core_web_lg")
    except OSError as exc:
        raise EvalInputError(
            "spaCy model en_core_web_lg is not installed: python -m spacy download en_core_web_lg"
        ) from exc
    cache: dict[str, Any] = {}

    def doc(w):
        if w not in cache:
            cache[w] = nlp(w)
        return cache[w]

    return lambda a, b: doc(a).similarity(doc(b)) > threshold


def _disc_metrics(rows: list[tuple[str, str]]) -> dict[str, float]:
    """rows of (truth, pred) with values 'yes'/'no'; 'no' is the positive class."""
    n = len(rows)
    correct = sum(t == p for t, p in rows)
    ans_no = sum(p == "no" for _, p in rows)
    true_no = sum(t == "no" for t, _ in rows)
    hit_no = sum(t == "no" and p == "no" for t, p in rows)
    precision = safe_ratio(hit_no, ans_no)
    recall = safe_ratio(hit_no, true_no)
    return {
        "Accuracy": 100.0 * safe_ratio(correct, n),
        "Precision": 100.0 * precision,
        "Recall": 100.0 * recall,
        "F1": 100.0 * safe_ratio(2 * precision * recall, precision + recall),
        "num": n,
    }


@dataclass
class AmberResult:
    """AMBER metrics (percent) per task/dimension and per-response details."""

    generative: dict[str, float] = field(default_factory=dict)
    discriminative: dict[str, dict[str, float]] = field(default_factory=dict)
    amber_score: float | None = None
    items: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"generative": self.generative, "discriminative": self.discriminative,
                "AMBER": self.amber_score, "items": self.items}

    def summary(self) -> str:
        lines = []
        if self.generative:
            g = self.generative
            lines.append("Generative: " + "  ".join(f"{k} {g[k]:.1f}" for k in ("CHAIR", "Cover", "Hal", "Cog")))
        for name, m in self.discriminative.items():
            lines.append(f"{name.capitalize():<15}: " + "  ".join(f"{k} {m[k]:.1f}" for k in ("Accuracy", "Precision", "Recall", "F1")))
        if self.amber_score is not None:
            lines.append(f"AMBER score: {self.amber_score:.1f}")
        return "\n".join(lines)


def compute_amber(
    responses: str | Path | Iterable[Mapping[str, Any]],
    data: AmberData | str | Path,
    backend: str = "offline",
    similarity: str = "none",
    similarity_threshold: float = 0.8,
    strict: bool = False,
    on_duplicate: str = "error",
) -> AmberResult:
    """AMBER metrics for ``responses`` (file or ``{"id", "response"}`` records).

    Args:
        data: an :class:`AmberData` or the AMBER ``data/`` directory.
        backend: noun extraction, ``"offline"`` or ``"nltk"``.
        similarity: ``"none"`` (exact word matches) or ``"spacy"`` (the reference).
        strict: compare discriminative answers with ``"Yes"``/``"No"`` exactly.
    """
    if not isinstance(data, AmberData):
        data = load_amber_data(data)
    responses = load_amber_responses(responses, len(data.annotations), on_duplicate=on_duplicate)
    vocab = data.object_words
    if backend == "offline":
        nouns_of = _OfflineNouns(vocab)
    elif backend == "nltk":
        nouns_of = _NltkNouns(vocab)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose offline or nltk")
    if similarity == "none":
        similar = None
    elif similarity == "spacy":
        similar = _spacy_similarity(similarity_threshold)
    else:
        raise ValueError(f"unknown similarity {similarity!r}; choose none or spacy")

    gen_items: list[dict] = []
    disc: dict[str, list[tuple[str, str]]] = {"existence": [], "attribute": [], "relation": []}
    items: list[dict] = []
    for r in responses:
        rid = r["id"]
        ann = data.annotations[rid - 1]
        text = r["response"]
        if ann["type"] == "generative":
            item = amber_generative_item(nouns_of(text), list(ann["truth"]), list(ann["hallu"]), data, similar)
            gen_items.append(item)
            items.append({"id": rid, "type": "generative", **item})
        else:
            truth = str(ann["truth"]).strip().lower()
            if strict:
                pred = "yes" if text == "Yes" else ("no" if text == "No" else "other")
            else:
                pred = parse_yes_no(text, "official")
            dim = "existence" if ann["type"] == _EXISTENCE_TYPE else (
                "attribute" if ann["type"] in _ATTRIBUTE_TYPES else "relation")
            disc[dim].append((truth, pred))
            items.append({"id": rid, "type": ann["type"], "truth": truth, "pred": pred})

    result = AmberResult(items=items)
    if gen_items:
        nouns = sum(len(x["nouns"]) for x in gen_items)
        result.generative = {
            "CHAIR": 100.0 * safe_ratio(sum(len(x["hallucinated"]) for x in gen_items), nouns),
            "Cover": 100.0 * safe_ratio(sum(len(x["covered"]) for x in gen_items), sum(x["num_truth"] for x in gen_items)),
            "Hal": 100.0 * safe_ratio(sum(bool(x["hallucinated"]) for x in gen_items), len(gen_items)),
            "Cog": 100.0 * safe_ratio(sum(len(x["cog"]) for x in gen_items), sum(x["num_hallu"] for x in gen_items)),
            "num": len(gen_items),
        }
    all_rows = [row for rows in disc.values() for row in rows]
    if all_rows:
        result.discriminative["overall"] = _disc_metrics(all_rows)
        for dim, rows in disc.items():
            if rows:
                result.discriminative[dim] = _disc_metrics(rows)
    if gen_items and all_rows:
        result.amber_score = 0.5 * (100.0 - result.generative["CHAIR"] + result.discriminative["overall"]["F1"])
    return result
