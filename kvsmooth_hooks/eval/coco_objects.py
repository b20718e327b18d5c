"""COCO object vocabulary and the extraction of object mentions from text.

Implements the word → category mapping of the CHAIR metric (Rohrbach et al.
2018) exactly as the OPERA / PAI / HALC ``chair.py`` runs it:

1. lower-case, tokenise and lemmatise the caption (see :mod:`.lemmatize`);
2. scan left to right and merge a pair of adjacent lemmas when the pair is a
   key of the double-word table (``traffic light``, ``hot dog``, ``baby cat`` →
   ``cat``, ``passenger train`` → ``train``, ``toilet seat`` → ``toilet`` ...);
   a merged pair counts as one token;
3. if ``toilet`` occurs anywhere, drop every ``seat``;
4. keep the words that are in the synonym table and map each to its category.

The tables (``kvsmooth_hooks/data/chair_synonyms.json`` and ``chair_rules.json``, provenance in
``kvsmooth_hooks/data/README.md``) are read by :mod:`.vocabulary`, which the lemmatiser shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .vocabulary import coco_categories, lemma_vocabulary, load_double_words, load_synonyms

__all__ = [
    "Mention",
    "Extraction",
    "ObjectExtractor",
    "load_synonyms",
    "load_double_words",
    "coco_categories",
    "lemma_vocabulary",
]


@dataclass(frozen=True)
class Mention:
    """One object mention: the (merged) lemma, its COCO category and token position."""

    word: str
    category: str
    index: int


@dataclass
class Extraction:
    """Result of running the extraction on one text."""

    tokens: list[str] = field(default_factory=list)  # lemmas after double-word merging
    mentions: list[Mention] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        """Categories in mention order, repeats kept."""
        return [m.category for m in self.mentions]


class ObjectExtractor:
    """Finds COCO object mentions in captions.

    Args:
        lemmatizer: a backend name (``"offline"`` or ``"nltk"``) or any callable
            mapping a caption to its list of lemmas.
    """

    def __init__(self, lemmatizer="offline") -> None:
        from .lemmatize import get_lemmatizer

        self.lemmatizer = get_lemmatizer(lemmatizer) if isinstance(lemmatizer, str) else lemmatizer
        self.synonyms = load_synonyms()
        self.double_words = load_double_words()

    def merge_double_words(self, lemmas: list[str]) -> tuple[list[str], list[int]]:
        """Merge known two-word phrases; return merged tokens and their start indices."""
        merged: list[str] = []
        starts: list[int] = []
        i = 0
        n = len(lemmas)
        while i < n:
            starts.append(i)
            if i + 1 < n:
                pair = lemmas[i] + " " + lemmas[i + 1]
                if pair in self.double_words:
                    merged.append(self.double_words[pair])
                    i += 2
                    continue
            merged.append(lemmas[i])
            i += 1
        return merged, starts

    def extract(self, caption: str) -> Extraction:
        """Tokenise, lemmatise and map ``caption`` to COCO object mentions."""
        lemmas = self.lemmatizer(caption)
        tokens, starts = self.merge_double_words(lemmas)
        drop_seat = "toilet" in tokens
        mentions = [
            Mention(word=tok, category=self.synonyms[tok], index=start)
            for tok, start in zip(tokens, starts)
            if tok in self.synonyms and not (drop_seat and tok == "seat")
        ]
        return Extraction(tokens=tokens, mentions=mentions)

    def categories(self, caption: str) -> list[str]:
        """Categories mentioned in ``caption`` in order, repeats kept."""
        return self.extract(caption).categories
