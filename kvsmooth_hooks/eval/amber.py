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
keeps ``NN*`` tokens, lemmatised by WordNet as nouns (the reference);
``backend="offline"`` (default, no data) imitates it: the offline
``word_tokenize``, case kept (WordNet does not lower-case, so ``Trees`` never
matches ``tree``), WordNet plural lemmas, and context rules in place of the
tagger's ``NN*`` decision for the vocabulary words that are also verbs, modals
or adjectives (``can be seen``, ``to board``, ``a man paddles``, ``a boat
sailing``, ``hot air``, ``light blue``, ``an orange shirt``).

Discriminative tasks (existence, attribute, relation): "no" is the positive
class.  Accuracy, Precision (correct "no" / answered "no"), Recall (correct
"no" / true "no") and F1.  ``answer_rule="official"`` (default) is the
reference: the response string must be exactly ``"Yes"`` or ``"No"`` (anything
else is neither, so it is wrong and never a "no"); ``answer_rule="pope"``
parses free-form answers with the POPE rule first.  F1 is computed exactly from
P and R (the reference rounds P and R to one decimal and adds 1e-4, or 1e-3
for existence, to the denominator: at most 0.1 point lower).

``AMBER score`` = ½ (100 − CHAIR + F1), with F1 over all discriminative questions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .bootstrap import bootstrap_intervals, f1_score, format_summary, intervals_to_json, safe_ratio
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
    repeated id is an error (``on_duplicate="warn"``: keep the first; ``"keep"``: score every record, for
    callers that resample responses on purpose).
    """
    recs = as_records(source, required=("id", "response"), what="AMBER response")
    rows = []
    for i, r in enumerate(recs):
        where = recs.where(i)
        rid = record_id(r, "id", where)
        if not 1 <= rid <= num_annotations:
            raise EvalInputError(f"{where}: field 'id' is {rid}, outside 1..{num_annotations} of annotations.json")
        rows.append({"id": rid, "response": record_text(r, "response", where), "where": where})
    if on_duplicate == "keep":  # e.g. a bootstrap resample of responses: every record is scored
        return rows
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


# --- offline noun extraction: an imitation of NLTK word_tokenize + pos_tag (NN*) + WordNet noun lemmas ---

_DETERMINERS = frozenset(
    "a an the this that these those his her their its my your our each every some any no another either "
    "one two three four five six seven eight nine ten several many few both all 's".split())
_PREPOSITIONS = frozenset("of in on at with for near by from into onto under over behind beside next across "
                          "through along around inside outside between against toward towards like".split())
_BE = frozenset("is are was were be been being am 's 're".split())
_VERB_BEFORE = frozenset("to can could will would may might must should shall they we you i "
                         "not n't 'll 'd".split())
_SUBJECT_PRONOUNS = frozenset("he she it who which that".split())
_PLURAL_SUBJECTS = frozenset("they we you people men women children".split())
_AFTER_VERB = _DETERMINERS | _PREPOSITIONS | frozenset(
    "up down out off away around along about together across through".split())
_NOUN_FOLLOWERS = frozenset(". , ; : ! ? ) of and or on in with is are was were next near".split())
_COLOURS = frozenset("blue brown green gray grey pink yellow purple red white black colored coloured "
                     "tan beige".split())
# Vocabulary words whose verb reading is common in image descriptions ("preparing to board", "a man
# paddles a kayak", "people watch the game"): after "to", a modal or a subject they are verbs (VB/VBZ/VBP).
_VERB_CAPABLE = frozenset(
    "board ski skate paddle watch sign lounge fish drink lock support water sink pack plug switch tie tape "
    "spray grill brush shovel sled hose note file cash box duck cage pen drain glove microwave monitor "
    "phone telephone sail ship train rock ring string light line range cover snack play park ride "
    "surf dress bag bat bill bowl can cushion floor house mat net pad pipe plate pot rail saddle sand "
    "screen shell signal sound stage star stone table tank tire toast top towel track wire".split())
# -s forms the tagger reads as verbs after a singular subject ("a man paddles a canoe"); other plurals
# stay nouns there ("the dog lounges in the grass" is tagged NNS).
_VBZ_FORMS = frozenset("paddles skates skis watches surfs plays rides drinks fishes sails boards signs".split())
_SINGULAR_SUBJECTS = frozenset("man woman person boy girl child kid dog cat horse bird player skater surfer "
                               "skier rider one someone crowd audience family group team couple".split())
_NOT_SUBJECTS = frozenset("roller ice inline other".split())


def _singular_subject(word: str) -> bool:
    """A word that reads as a singular subject before a verb ("man", "skateboarder", "cyclist")."""
    if word in _SINGULAR_SUBJECTS:
        return True
    return word.isalpha() and word not in _NOT_SUBJECTS and word.endswith(("er", "or", "ist", "man", "woman"))
# -ing words of the vocabulary: the tagger's default reading when the context does not decide.
_ING_DEFAULT_NOUN = frozenset("building painting drawing railing ceiling".split())


def _looks_like_noun(tokens: list[str], i: int, lemma: str) -> bool:
    """Guess whether NLTK's tagger tags ``tokens[i]`` (a vocabulary word) ``NN*``.

    The rules cover the verb / modal / adjective readings of vocabulary words that occur in image
    descriptions: ``can`` as a modal, ``to board``, ``a man paddles``, ``a boat sailing``, ``hot dog``,
    ``light blue``, ``an orange shirt``, ``individual items``.
    """
    tok = tokens[i]
    prev = tokens[i - 1].lower() if i > 0 else ""
    nxt = tokens[i + 1].lower() if i + 1 < len(tokens) else "."
    if lemma == "hot":
        return False  # "hot dog", "hot day": JJ
    if tok == "can":
        return prev in _DETERMINERS or nxt in _NOUN_FOLLOWERS
    if tok in ("light", "orange"):
        if prev in _BE or nxt in _COLOURS or nxt.endswith("-colored"):
            return False
        if tok == "orange" and nxt.isalpha() and nxt not in _NOUN_FOLLOWERS and nxt not in _AFTER_VERB:
            return False  # "an orange shirt"
        return True
    if tok == "individual":
        return not (nxt.isalpha() and nxt not in _NOUN_FOLLOWERS and nxt not in _AFTER_VERB
                    and nxt not in _BE and nxt not in ("who", "that", "can"))
    if tok.endswith("ing") and tok == lemma and len(tok) > 5:
        if prev in _BE or prev in _SUBJECT_PRONOUNS or prev in _PLURAL_SUBJECTS:
            return False
        if prev in _DETERMINERS or prev in _PREPOSITIONS:
            return True
        return tok in _ING_DEFAULT_NOUN
    if lemma not in _VERB_CAPABLE:
        return True
    if tok == lemma:  # base form: VB after to / a modal / a subject pronoun, VBP after a plural subject
        if prev in _VERB_BEFORE:
            return False
        if prev in _PLURAL_SUBJECTS and nxt in _AFTER_VERB:
            return False
        return True
    if tok in _VBZ_FORMS:  # VBZ after a singular subject when an object / adverbial follows
        if prev in _SUBJECT_PRONOUNS:
            return False
        if nxt in _AFTER_VERB and _singular_subject(prev):
            return False
    return True


# Plural vocabulary words that WordNet lemmatises to a singular outside the vocabulary (NLTK >= 3.8 returns
# the shortest candidate), so the reference never counts them.
_WORDNET_PLURALS = {"sunglasses": "sunglass", "earrings": "earring", "slippers": "slipper", "chopsticks": "chopstick"}


class _OfflineNouns:
    """Nouns of a response that are AMBER vocabulary words, without NLTK data.

    Imitates the reference: tokens keep their case (WordNet does not lower-case, so ``Trees`` never
    matches ``tree``; ``TV`` does match), plural nouns get their WordNet lemma, and
    :func:`_looks_like_noun` stands in for the ``NN*`` test of the tagger.
    """

    def __init__(self, vocabulary: set[str]) -> None:
        self.vocab = vocabulary
        self.lem = OfflineLemmatizer(vocabulary={w for w in vocabulary if w == w.lower()})

    def __call__(self, text: str) -> list[str]:
        tokens = tokenize(text)
        out = []
        for i, tok in enumerate(tokens):
            if tok in self.vocab and tok != tok.lower():
                lemma = tok  # "TV"
            elif tok != tok.lower():
                continue
            else:
                lemma = _WORDNET_PLURALS.get(tok) or self.lem.noun_lemma(tok)
            if lemma in self.vocab and _looks_like_noun(tokens, i, lemma):
                out.append(lemma)
        return out


class _NltkNouns:
    def __init__(self, vocabulary: set[str]) -> None:
        from .lemmatize import NltkLemmatizer

        self.vocab = vocabulary
        self.nl = NltkLemmatizer()

    def __call__(self, text: str) -> list[str]:
        return [w for w in self.nl.noun_lemmas(text) if w in self.vocab]


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
            "F1": 100.0 * f1_score(precision, recall),
        "num": n,
    }


GENERATIVE_METRICS = ("CHAIR", "Cover", "Hal", "Cog")


def _generative_intervals(gen_items: list[dict], n_bootstrap: int, seed: int) -> dict[str, tuple[float, float]]:
    """Seeded bootstrap 95% intervals of the generative metrics, resampling responses."""
    cols = {
        "one": np.ones(len(gen_items)),
        "hall": np.array([len(x["hallucinated"]) for x in gen_items], dtype=float),
        "nouns": np.array([len(x["nouns"]) for x in gen_items], dtype=float),
        "covered": np.array([len(x["covered"]) for x in gen_items], dtype=float),
        "truth": np.array([x["num_truth"] for x in gen_items], dtype=float),
        "hal_resp": np.array([bool(x["hallucinated"]) for x in gen_items], dtype=float),
        "cog": np.array([len(x["cog"]) for x in gen_items], dtype=float),
        "targets": np.array([x["num_hallu"] for x in gen_items], dtype=float),
    }
    return bootstrap_intervals(cols, {
        "CHAIR": lambda s: 100.0 * s["hall"] / s["nouns"],
        "Cover": lambda s: 100.0 * s["covered"] / s["truth"],
        "Hal": lambda s: 100.0 * s["hal_resp"] / s["one"],
        "Cog": lambda s: 100.0 * s["cog"] / s["targets"],
    }, n_resamples=n_bootstrap, seed=seed)


@dataclass
class AmberResult:
    """AMBER metrics (percent) per task/dimension and per-response details."""

    generative: dict[str, float] = field(default_factory=dict)
    discriminative: dict[str, dict[str, float]] = field(default_factory=dict)
    amber_score: float | None = None
    items: list[dict] = field(default_factory=list)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # generative metrics, over responses

    def to_dict(self) -> dict:
        return {"generative": self.generative, "ci95": intervals_to_json(self.intervals),
                "discriminative": self.discriminative, "AMBER": self.amber_score, "items": self.items}

    def summary(self) -> str:
        lines = []
        if self.generative:
            lines.append(format_summary(self.generative, self.intervals, GENERATIVE_METRICS,
                                        f"{'responses':<10}: {self.generative['num']:6d}  (generative)"))
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
    answer_rule: str = "official",
    on_duplicate: str = "error",
    strict: bool | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> AmberResult:
    """AMBER metrics for ``responses`` (file or ``{"id", "response"}`` records).

    Args:
        data: an :class:`AmberData` or the AMBER ``data/`` directory.
        backend: noun extraction, ``"offline"`` or ``"nltk"``.
        similarity: ``"none"`` (exact word matches) or ``"spacy"`` (the reference).
        answer_rule: ``"official"`` (discriminative answers must be exactly ``"Yes"``/``"No"``, as in
            ``inference.py``) or ``"pope"`` (parse free-form answers with the POPE rule).
        on_duplicate: a repeated response id is an error (``"warn"``: keep the first; ``"keep"``: score every
            record, e.g. a bootstrap resample).
        strict: older spelling of ``answer_rule`` (``True`` = ``"official"``, ``False`` = ``"pope"``).
    """
    if strict is not None:
        answer_rule = "official" if strict else "pope"
    if answer_rule not in ("official", "pope"):
        raise EvalInputError(f"unknown AMBER answer rule {answer_rule!r}; choose official or pope")
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
            if answer_rule == "official":
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
        if n_bootstrap:
            result.intervals = _generative_intervals(gen_items, n_bootstrap, seed)
    all_rows = [row for rows in disc.values() for row in rows]
    if all_rows:
        result.discriminative["overall"] = _disc_metrics(all_rows)
        for dim, rows in disc.items():
            if rows:
                result.discriminative[dim] = _disc_metrics(rows)
    if gen_items and all_rows:
        result.amber_score = 0.5 * (100.0 - result.generative["CHAIR"] + result.discriminative["overall"]["F1"])
    return result
