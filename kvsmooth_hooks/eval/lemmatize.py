"""Tokenisation and lemmatisation backends for CHAIR-style object extraction.

The reference CHAIR script (Rohrbach et al. 2018, as run by OPERA / PAI / HALC)
lower-cases a caption, tokenises it with NLTK's ``word_tokenize``, tags it with
NLTK's averaged-perceptron POS tagger and lemmatises *every* token with the
WordNet lemmatiser using the tagged part of speech (adjective, verb, noun,
adverb; anything else is lemmatised as a noun).  Only the lemmas that land in
the COCO synonym vocabulary matter for the metric, plus the token count (``Len``).

Two backends are provided:

``offline`` (default)
    Needs no downloaded data.  A regex tokeniser that mimics ``word_tokenize``
    (sentence-final periods, commas, quotes, brackets and clitics are split off,
    hyphenated words stay whole) and a rule-based lemmatiser that reproduces what
    WordNet does to the words of the COCO vocabulary: regular and irregular
    plurals, the NLTK 3.8 quirk that ``men`` stays ``men`` (it is a WordNet noun
    in its own right), and verb forms such as ``skiing``/``seated`` that the
    reference turns into ``ski``/``seat`` when the tagger calls them verbs.
    Tagger decisions are approximated from the neighbouring words.

``nltk``
    The reference pipeline itself, for exact parity.  Requires ``pip install
    nltk`` and the data packages ``punkt``, ``punkt_tab``,
    ``averaged_perceptron_tagger``, ``averaged_perceptron_tagger_eng`` and
    ``wordnet`` (``python -m nltk.downloader <names>``).
"""

from __future__ import annotations

import re
from typing import Callable, Protocol

from ..core.errors import UserError

__all__ = [
    "Lemmatizer",
    "OfflineLemmatizer",
    "NltkLemmatizer",
    "NltkDataMissingError",
    "get_lemmatizer",
    "tokenize",
    "BACKENDS",
]

BACKENDS = ("offline", "nltk")


class Lemmatizer(Protocol):
    """Turns a caption into its list of lower-cased lemmas (one per token)."""

    name: str

    def __call__(self, caption: str) -> list[str]: ...


# ---------------------------------------------------------------------------
# Tokenisation (offline imitation of nltk.word_tokenize)
# ---------------------------------------------------------------------------

# Sentence boundary: a sentence-ending mark (optionally followed by closing
# quotes/brackets) and whitespace.  Punkt (the sentence splitter used by
# word_tokenize) treats every period-final word that is not a known abbreviation
# as a sentence end, whatever the case of the next word.
_SENT_SPLIT = re.compile(r"(?<=[.!?])([\]\)}>\"'”’]*)\s+")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc e.g i.e u.s inc co ltd mt ft no approx".split()
)

_NO_BREAK_WORD = re.compile(r"^(?:[a-z]|\d+)$")

_RULES: list[tuple[re.Pattern[str], str]] = [
    # opening quotes
    (re.compile(r'^"'), " `` "),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r'([ \(\[{<])("|\'{2})'), r"\1 `` "),
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    # punctuation
    (re.compile(r"([^\.])(\.)([\]\)}>\"'»”’ ]*)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    # brackets and double dashes
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
    # closing quotes and clitics
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
    # contractions (MacIntyre list used by the Treebank tokenizer)
    (re.compile(r"(?i)\b(can)(not)\b"), r" \1 \2 "),
    (re.compile(r"(?i)\b(d)('ye)\b"), r" \1 \2 "),
    (re.compile(r"(?i)\b(gim)(me)\b"), r" \1 \2 "),
    (re.compile(r"(?i)\b(gon)(na)\b"), r" \1 \2 "),
    (re.compile(r"(?i)\b(got)(ta)\b"), r" \1 \2 "),
    (re.compile(r"(?i)\b(lem)(me)\b"), r" \1 \2 "),
    (re.compile(r"(?i)\b(more)('n)\b"), r" \1 \2 "),
    (re.compile(r"(?i)\b(wan)(na)(?=\s)"), r" \1 \2 "),
    (re.compile(r"(?i) ('t)(is)\b"), r" \1 \2 "),
    (re.compile(r"(?i) ('t)(was)\b"), r" \1 \2 "),
]


def _split_sentences(text: str) -> list[str]:
    """Split at sentence-final ``.``/``!``/``?`` followed by whitespace."""
    sentences: list[str] = []
    start = 0
    for m in _SENT_SPLIT.finditer(text):
        end = m.start() + len(m.group(1))
        piece = text[start:end]
        last_word = piece.rsplit(None, 1)[-1].rstrip(".").strip("\"'()[]") if piece.strip() else ""
        if piece.endswith(".") and (last_word in _ABBREVIATIONS or _NO_BREAK_WORD.match(last_word)):
            # abbreviations, initials ("f.") and numbers ("12.") followed by a
            # lower-case word do not end a sentence for Punkt
            continue
        sentences.append(piece)
        start = m.end()
    sentences.append(text[start:])
    return [s for s in sentences if s.strip()]


def tokenize(text: str) -> list[str]:
    """Tokenise like ``nltk.word_tokenize`` (Treebank rules per sentence), offline."""
    tokens: list[str] = []
    for sentence in _split_sentences(text):
        s = " " + sentence + " "
        for pattern, repl in _RULES:
            s = pattern.sub(repl, s)
        tokens.extend(s.split())
    return tokens


# ---------------------------------------------------------------------------
# Offline lemmatiser
# ---------------------------------------------------------------------------

# Irregular noun plurals relevant to the COCO vocabulary (WordNet noun.exc),
# and plural forms that WordNet keeps because they are nouns in their own right
# and the singular is not shorter (NLTK >= 3.8 returns the shortest candidate,
# the original form first).
_IRREGULAR_NOUNS: dict[str, str] = {
    "men": "men",  # WordNet noun ("work force"), so NLTK 3.8 keeps it
    "women": "woman",
    "children": "child",
    "people": "people",
    "persons": "person",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "calves": "calf",
    "knives": "knife",
    "pocketknives": "pocketknife",
    "wolves": "wolf",
    "teeth": "tooth",
    "feet": "foot",
    "leaves": "leaf",
    "shelves": "shelf",
    "loaves": "loaf",
    "halves": "half",
    "buffaloes": "buffalo",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "gentlemen": "gentleman",
    "policemen": "policeman",
    "servicemen": "serviceman",
    "sheep": "sheep",
    "cattle": "cattle",
    "scissors": "scissors",
    "sports": "sport",
    "glasses": "glass",
    "vases": "vas",  # WordNet noun 'vas' is shorter than 'vase'

    "skis": "ski",
    "bus": "bus",
    "buses": "bus",
    "busses": "bus",
    "minibuses": "minibus",
}

# COCO vocabulary words that are also WordNet verbs: their -ing / -ed forms
# lemmatise to the vocabulary word when the tagger calls them verbs.
_VERB_VOCABULARY = frozenset(
    "ski seat tie skateboard snowboard groom boat kayak canoe bowl train bus ship ferry "
    "bike bicycle motorcycle kite fork bottle cup book clock sink monitor duck crow hound "
    "horse dog bear ram lamb bow table bench phone telephone truck cab".split()
)
_IRREGULAR_VERBS: dict[str, str] = {
    "tying": "tie",
    "tied": "tie",
    "skied": "ski",
    "skiing": "ski",
    "bussing": "bus",
    "busing": "bus",
}


class OfflineLemmatizer:
    """Rule-based imitation of NLTK POS tagging + WordNet lemmatisation.

    Exact for the COCO vocabulary in the common cases; the remaining differences
    come from tagger decisions that cannot be reproduced without the tagger
    model (see ``docs/evaluation.md``).
    """

    name = "offline"

    def __init__(self, vocabulary: set[str] | None = None) -> None:
        if vocabulary is None:
            from .vocabulary import lemma_vocabulary

            vocabulary = lemma_vocabulary()
        self.vocabulary = frozenset(vocabulary)

    # -- nouns ---------------------------------------------------------------
    def noun_lemma(self, token: str) -> str:
        """WordNet-style noun lemma of ``token`` restricted to known words."""
        if token in _IRREGULAR_NOUNS:
            return _IRREGULAR_NOUNS[token]
        vocab = self.vocabulary
        for old, new in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"),
                         ("zes", "z"), ("ses", "s"), ("ves", "f"), ("men", "man"), ("s", "")):
            if token.endswith(old) and len(token) > len(old):
                cand = token[: -len(old)] + new
                if cand in vocab:
                    return cand
        return token

    # -- verbs ---------------------------------------------------------------
    def verb_lemma(self, token: str) -> str | None:
        """Verb lemma of an -ing/-ed form if it is a vocabulary word, else None."""
        if token in _IRREGULAR_VERBS:
            return _IRREGULAR_VERBS[token]
        for suffix in ("ing", "ed"):
            if token.endswith(suffix) and len(token) > len(suffix) + 2:
                stem = token[: -len(suffix)]
                doubled = stem[:-1] if len(stem) > 2 and stem[-1] == stem[-2] else None
                for cand in (stem, stem + "e", doubled):
                    if cand and cand in _VERB_VOCABULARY:
                        return cand
        return None

    def lemmatize_tokens(self, tokens: list[str]) -> list[str]:
        out: list[str] = []
        for i, tok in enumerate(tokens):
            verb = self.verb_lemma(tok)
            if verb is not None and _looks_verbal(tokens, i):
                out.append(verb)
            else:
                out.append(self.noun_lemma(tok))
        return out

    def __call__(self, caption: str) -> list[str]:
        return self.lemmatize_tokens(tokenize(caption.lower()))


_BE = frozenset("is are was were be been being am 's 're".split())
# Words after which the tagger reads an -ing form as a noun (gerund used as a noun).
_NOUN_CONTEXT_BEFORE = frozenset("a an the his her their its 's my your our go downhill".split())
# Words after which (or before which) it reads an -ing form as a verb.
_VERB_CONTEXT_BEFORE = frozenset("for from while of like".split())
_VERB_CONTEXT_AFTER = frozenset("for during down together in at on with downhill".split())


def _looks_verbal(tokens: list[str], i: int) -> bool:
    """Guess whether the tagger would tag the -ing/-ed token ``tokens[i]`` as a verb."""
    tok = tokens[i]
    if not tok.endswith("ing"):
        return True  # -ed forms: past participles are tagged VBN/VBD
    prev = tokens[i - 1] if i > 0 else ""
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    if prev in _BE:
        return True
    if prev in _NOUN_CONTEXT_BEFORE:
        return False
    return nxt in _VERB_CONTEXT_AFTER or prev in _VERB_CONTEXT_BEFORE


# ---------------------------------------------------------------------------
# NLTK backend
# ---------------------------------------------------------------------------

_NLTK_DATA = (
    ("tokenizers/punkt_tab", "punkt_tab"),
    ("taggers/averaged_perceptron_tagger_eng", "averaged_perceptron_tagger_eng"),
    ("corpora/wordnet", "wordnet"),
)


class NltkDataMissingError(UserError, RuntimeError):
    """Raised when the nltk backend is requested but nltk or its data is absent."""


class NltkLemmatizer:
    """The reference pipeline: word_tokenize + pos_tag + WordNet lemmatiser."""

    name = "nltk"

    def __init__(self) -> None:
        try:
            import nltk
        except ImportError as exc:  # pragma: no cover - depends on environment
            raise NltkDataMissingError(
                "the 'nltk' backend needs the nltk package: pip install 'kvsmooth-hooks[nltk]' "
                "(or pip install nltk), then python -m nltk.downloader punkt punkt_tab "
                "averaged_perceptron_tagger averaged_perceptron_tagger_eng wordnet"
            ) from exc
        missing = []
        for resource, package in _NLTK_DATA:
            old_resource, old_package = {
                "punkt_tab": ("tokenizers/punkt", "punkt"),
                "averaged_perceptron_tagger_eng": (
                    "taggers/averaged_perceptron_tagger",
                    "averaged_perceptron_tagger",
                ),
            }.get(package, (None, None))
            if not (_nltk_has(nltk, resource) or (old_resource and _nltk_has(nltk, old_resource))):
                missing.append(package if old_package is None else f"{package} (or {old_package})")
        if missing:
            raise NltkDataMissingError(
                "the 'nltk' backend is missing NLTK data package(s): "
                + ", ".join(missing)
                + ". Install with: python -m nltk.downloader punkt punkt_tab "
                "averaged_perceptron_tagger averaged_perceptron_tagger_eng wordnet "
                "(or use --backend offline)"
            )
        from nltk.corpus import wordnet
        from nltk.stem import WordNetLemmatizer

        self._nltk = nltk
        self._wordnet = wordnet
        self._wnl = WordNetLemmatizer()

    def _pos(self, tag: str) -> str:
        wn = self._wordnet
        if tag.startswith("J"):
            return wn.ADJ
        if tag.startswith("V"):
            return wn.VERB
        if tag.startswith("R"):
            return wn.ADV
        return wn.NOUN

    def __call__(self, caption: str) -> list[str]:
        tokens = self._nltk.word_tokenize(caption.lower())
        tagged = self._nltk.pos_tag(tokens)
        return [self._wnl.lemmatize(tok, pos=self._pos(tag)) for tok, tag in tagged]

    def noun_lemmas(self, text: str) -> list[str]:
        """WordNet noun lemmas of the words NLTK tags as nouns (``NN*``), case kept (AMBER's noun extraction)."""
        tagged = self._nltk.pos_tag(self._nltk.word_tokenize(text))
        return [self._wnl.lemmatize(w) for w, pos in tagged if pos.startswith("NN")]


def _nltk_has(nltk, resource: str) -> bool:
    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


_FACTORIES: dict[str, Callable[[], Lemmatizer]] = {
    "offline": OfflineLemmatizer,
    "nltk": NltkLemmatizer,
}


def get_lemmatizer(backend: str = "offline") -> Lemmatizer:
    """Return the lemmatiser for ``backend`` (``"offline"`` or ``"nltk"``)."""
    try:
        factory = _FACTORIES[backend]
    except KeyError:
        raise ValueError(f"unknown lemmatizer backend {backend!r}; choose one of {', '.join(BACKENDS)}") from None
    return factory()
