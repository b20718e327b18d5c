"""The COCO object vocabulary of CHAIR: the synonym and double-word tables, the 80 categories and every word that
matters for extraction. Shared by :mod:`.coco_objects` (extraction) and :mod:`.lemmatize` (the offline
lemmatiser restricts itself to these words); it imports neither.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ["DATA_DIR", "load_synonyms", "load_double_words", "coco_categories", "lemma_vocabulary"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def _load_json(name: str):
    with open(DATA_DIR / name, encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def load_synonyms() -> dict[str, str]:
    """Word → COCO category table (Rohrbach et al. 2018 ``synonyms.txt``)."""
    return dict(_load_json("chair_synonyms.json"))


@lru_cache(maxsize=None)
def load_double_words() -> dict[str, str]:
    """Two-word phrase → replacement word, as hard-coded in the reference ``chair.py``."""
    return dict(_load_json("chair_rules.json")["double_word_dict"])


@lru_cache(maxsize=None)
def coco_categories() -> tuple[str, ...]:
    """The 80 COCO category names (first word of each synonym line), sorted."""
    return tuple(sorted({c for c in load_synonyms().values() if c}))


@lru_cache(maxsize=None)
def lemma_vocabulary() -> frozenset[str]:
    """Every single word that can matter for extraction: synonyms and double-word parts."""
    words: set[str] = set()
    for key in load_synonyms():
        words.update(key.split())
    for key, value in load_double_words().items():
        words.update(key.split())
        words.update(value.split())
    words.discard("")
    return frozenset(words)
