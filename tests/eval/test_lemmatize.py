import pytest

from kvsmooth_hooks.eval.lemmatize import NltkDataMissingError, OfflineLemmatizer, get_lemmatizer, tokenize


def test_tokenize_splits_punctuation_and_clitics():
    assert tokenize("a dog's bowl, two cats.") == ["a", "dog", "'s", "bowl", ",", "two", "cats", "."]


def test_tokenize_sentence_final_periods_only():
    assert tokenize("a cat. a snow-covered dog!") == ["a", "cat", ".", "a", "snow-covered", "dog", "!"]


def test_tokenize_keeps_period_after_number_and_initial():
    assert tokenize("the number 12. there is f. scott.") == ["the", "number", "12.", "there", "is", "f.", "scott", "."]


def test_tokenize_quotes_and_brackets():
    assert tokenize('it reads "stop" (red).') == ["it", "reads", "``", "stop", "''", "(", "red", ")", "."]


@pytest.mark.parametrize("token, lemma", [
    ("dogs", "dog"), ("men", "men"), ("women", "woman"), ("children", "child"), ("vases", "vas"),
    ("glasses", "glass"), ("knives", "knife"), ("benches", "bench"), ("puppies", "puppy"), ("skis", "ski"),
    ("bus", "bus"), ("sheep", "sheep"), ("zzzs", "zzzs"),
])
def test_offline_noun_lemmas(token, lemma):
    assert OfflineLemmatizer().noun_lemma(token) == lemma


def test_offline_verb_forms_depend_on_context():
    lem = get_lemmatizer("offline")
    assert lem("They are skiing down.")[2] == "ski"
    assert lem("A skiing trip.")[1] == "skiing"
    assert lem("People seated at a table")[1] == "seat"
    assert lem("Providing seating for guests")[1] == "seat"
    assert lem("Additional seating options")[1] == "seating"
    assert lem("She cared for it")[1] == "cared"


def test_unknown_backend():
    with pytest.raises(ValueError, match="offline"):
        get_lemmatizer("spacy")


def test_nltk_backend_fails_clearly_without_data(tmp_path, monkeypatch):
    try:
        import nltk
    except ImportError:
        with pytest.raises(NltkDataMissingError, match="pip install"):
            get_lemmatizer("nltk")
        return
    for name in ("wordnet", "punkt_tab", "punkt"):
        try:
            nltk.data.find({"wordnet": "corpora/wordnet"}.get(name, f"tokenizers/{name}"))
            pytest.skip("NLTK data is installed here")
        except LookupError:
            pass
    with pytest.raises(NltkDataMissingError, match="wordnet"):
        get_lemmatizer("nltk")
