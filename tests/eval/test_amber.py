import json

import pytest

from kvsmooth_hooks.eval.amber import compute_amber, load_amber_data
from kvsmooth_hooks.eval.records import EvalInputError


@pytest.fixture()
def amber_dir(tmp_path):
    ann = [
        {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "frisbee"]},
        {"id": 2, "type": "discriminative-hallucination", "truth": "no"},
        {"id": 3, "type": "discriminative-attribute-state", "truth": "yes"},
        {"id": 4, "type": "discriminative-relation", "truth": "no"},
    ]
    rel = {"dog": ["puppy"], "cat": ["kitten"], "grass": [], "frisbee": [], "tree": [], "animal": []}
    (tmp_path / "annotations.json").write_text(json.dumps(ann))
    (tmp_path / "relation.json").write_text(json.dumps(rel))
    (tmp_path / "safe_words.txt").write_text("animal\n")
    return tmp_path


RESPONSES = [
    # nouns: puppy (covers dog), grass (covers grass), kitten (cat: cog + hallucinated),
    # tree (hallucinated), animal (safe word: counted, not hallucinated)
    {"id": 1, "response": "A puppy runs on the grass next to a kitten, a tree and an animal."},
    {"id": 2, "response": "No"},
    {"id": 3, "response": "No, it is not."},
    {"id": 4, "response": "Yes"},
]


def test_amber_hand_computed(amber_dir):
    res = compute_amber(RESPONSES, amber_dir, answer_rule="pope")
    g = res.generative
    assert g["CHAIR"] == pytest.approx(40.0)
    assert g["Cover"] == pytest.approx(100.0)
    assert g["Hal"] == pytest.approx(100.0)
    assert g["Cog"] == pytest.approx(50.0)
    d = res.discriminative["overall"]
    assert d["Accuracy"] == pytest.approx(100 / 3)
    assert d["Precision"] == pytest.approx(50.0)
    assert d["Recall"] == pytest.approx(50.0)
    assert d["F1"] == pytest.approx(50.0)
    assert res.discriminative["existence"]["F1"] == pytest.approx(100.0)
    assert res.discriminative["attribute"]["Accuracy"] == pytest.approx(0.0)
    assert res.amber_score == pytest.approx(55.0)


def test_amber_strict_answers(amber_dir):
    rows = [{"id": 2, "response": "no"}, {"id": 4, "response": "No"}]
    assert compute_amber(rows, amber_dir).discriminative["overall"]["Accuracy"] == pytest.approx(50.0)
    assert compute_amber(rows, amber_dir, strict=True).discriminative["overall"]["Accuracy"] == pytest.approx(50.0)
    assert compute_amber(rows, amber_dir, answer_rule="pope").discriminative["overall"]["Accuracy"] == \
        pytest.approx(100.0)


def test_amber_errors(amber_dir, tmp_path):
    with pytest.raises(EvalInputError, match="outside 1..4"):
        compute_amber([{"id": 9, "response": "x"}], amber_dir)
    with pytest.raises(EvalInputError, match="nowhere: AMBER data folder not found"):
        load_amber_data(tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    with pytest.raises(EvalInputError, match="relation.json"):
        load_amber_data(tmp_path / "partial")


@pytest.mark.parametrize("text, nouns", [
    ("A frisbee can be seen near the dog.", ["frisbee", "dog"]),  # modal "can"
    ("A can of soda sits on the table.", ["can", "table"]),
    ("The man is preparing to board the boat.", ["man", "boat"]),  # "to board": a verb
    ("A man paddles a boat while the dog watches the birds.", ["man", "boat", "dog", "bird"]),
    ("Two paddles lie in the boat.", ["paddle", "boat"]),
    ("A boat sailing across the lake.", ["boat", "lake"]),
    ("Colorful hot air balloons and a tall building.", ["balloon", "building"]),
    ("Dogs run. The TV is on, and trees sway.", ["TV", "tree"]),  # case kept: "Dogs" is not lemmatised
    ("She wears an orange shirt and holds an orange.", ["orange"]),
    ("A light blue sky above the light.", ["sky", "light"]),
    ("A man wearing sunglasses and slippers.", ["man"]),  # WordNet: sunglass, slipper (not vocabulary words)
])
def test_offline_nouns_imitate_the_tagger(text, nouns):
    from kvsmooth_hooks.eval.amber import _OfflineNouns

    vocab = {"frisbee", "dog", "can", "table", "man", "board", "boat", "paddle", "watch", "bird", "sailing", "lake",
             "hot", "balloon", "building", "TV", "tree", "orange", "shirt", "light", "sky", "sunglasses", "slippers"}
    vocab.discard("shirt")
    assert _OfflineNouns(vocab)(text) == nouns


def test_discriminative_official_rule_counts_other_answers_as_wrong(amber_dir):
    # inference.py: only the exact strings "Yes" / "No" count; "No." and "yes" are neither (wrong, never a "no")
    rows = [{"id": 2, "response": "No."}, {"id": 3, "response": "yes"}, {"id": 4, "response": "No"}]
    d = compute_amber(rows, amber_dir).discriminative
    assert d["overall"]["Accuracy"] == pytest.approx(100 / 3)
    assert d["overall"]["Precision"] == pytest.approx(100.0)  # 1 correct "No" / 1 answered "No"
    assert d["overall"]["Recall"] == pytest.approx(50.0)  # 1 of 2 true "no"
    assert d["overall"]["F1"] == pytest.approx(200 / 3)
    assert d["existence"]["Accuracy"] == 0.0 and d["relation"]["Accuracy"] == 100.0
    # the POPE rule reads "No." as no and "yes" as yes: all three right
    assert compute_amber(rows, amber_dir, answer_rule="pope").discriminative["overall"]["Accuracy"] == \
        pytest.approx(100.0)


def test_empty_or_unknown_answer_rule(amber_dir):
    with pytest.raises(EvalInputError, match="unknown AMBER answer rule"):
        compute_amber([{"id": 2, "response": "No"}], amber_dir, answer_rule="loose")
    with pytest.raises(EvalInputError, match="no AMBER response records"):
        compute_amber([], amber_dir)


def test_generative_bootstrap_intervals(amber_dir):
    rows = [{"id": 1, "response": "A puppy on the grass next to a kitten."}]
    a = compute_amber(rows, amber_dir, n_bootstrap=50, seed=3)
    assert set(a.intervals) == {"CHAIR", "Cover", "Hal", "Cog"}
    lo, hi = a.intervals["CHAIR"]
    assert lo == hi == pytest.approx(a.generative["CHAIR"])  # one response: every resample is the same
    assert compute_amber(rows, amber_dir, n_bootstrap=0).intervals == {}
    assert "95% CI" in a.summary()


def test_duplicate_responses(amber_dir):
    rows = [{"id": 2, "response": "No"}, {"id": 2, "response": "No"}, {"id": 4, "response": "Yes"}]
    with pytest.raises(EvalInputError, match="id 2 repeats"):
        compute_amber(rows, amber_dir)
    kept = compute_amber(rows, amber_dir, on_duplicate="keep")  # a resample: every record counts
    assert kept.discriminative["overall"]["num"] == 3
