import json

import pytest

from kvsmooth_hooks.eval.pope import (
    binary_metrics, caption_says_yes, compute_opope, compute_pope, object_from_question, parse_yes_no,
)
from kvsmooth_hooks.eval.records import EvalInputError


@pytest.mark.parametrize("text, official, substring", [
    ("Yes, there is a dog.", "yes", "yes"),
    ("No.", "no", "no"),
    ("There is not a dog in the image", "no", "no"),
    ("Yes. No other dogs are visible.", "yes", "yes"),  # only the first sentence counts
    ("Nope", "yes", "no"),
    ("NO", "yes", "no"),
    ("I think YES", "yes", "yes"),
])
def test_parse_yes_no(text, official, substring):
    assert parse_yes_no(text, "official") == official
    assert parse_yes_no(text, "substring") == substring


def test_binary_metrics_hand_computed():
    m = binary_metrics(["yes", "no", "no", "yes", "yes"], ["yes", "yes", "no", "no", "yes"])
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (2, 1, 1, 1)
    assert m["Accuracy"] == pytest.approx(60.0)
    assert m["Precision"] == pytest.approx(200 / 3)
    assert m["Recall"] == pytest.approx(200 / 3)
    assert m["F1"] == pytest.approx(200 / 3)
    assert m["YesRatio"] == pytest.approx(60.0)


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


QUESTIONS = [
    {"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?", "label": "yes"},
    {"question_id": 2, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dining table in the image?", "label": "no"},
    {"question_id": 3, "image": "COCO_val2014_000000000007.jpg", "text": "Is there an umbrella in the image?", "label": "no"},
    {"question_id": 4, "image": "COCO_val2014_000000000007.jpg", "text": "Is there a person in the image?", "label": "yes"},
]


def test_compute_pope_files(tmp_path):
    q = _jsonl(tmp_path / "q.jsonl", QUESTIONS)
    a = _jsonl(tmp_path / "a.jsonl", [
        {"question_id": 4, "text": "No, there is no person."},
        {"question_id": 1, "text": "Yes, there is a dog."},
        {"question_id": 2, "text": "Yes"},
        {"question_id": 3, "text": "No"},
    ])
    res = compute_pope(q, a, n_bootstrap=100)
    # preds yes, yes, no, no vs labels yes, no, no, yes -> TP1 FP1 TN1 FN1
    assert res.overall["Accuracy"] == pytest.approx(50.0)
    assert res.overall["Precision"] == pytest.approx(50.0)
    assert res.overall["Recall"] == pytest.approx(50.0)
    assert res.overall["YesRatio"] == pytest.approx(50.0)
    assert set(res.intervals) == {"Accuracy", "Precision", "Recall", "F1", "YesRatio"}


def test_compute_pope_missing_answer(tmp_path):
    q = _jsonl(tmp_path / "q.jsonl", QUESTIONS)
    a = _jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "Yes"}])
    with pytest.raises(EvalInputError, match="question_id 2"):
        compute_pope(q, a, n_bootstrap=0)


def test_object_from_question():
    assert object_from_question("Is there a dining table in the image?") == "dining table"
    assert object_from_question("Is there an apple in the image?") == "apple"


def test_caption_says_yes():
    assert caption_says_yes("A wooden table with cups.", "dining table")
    assert caption_says_yes("Two dogs play.", "dog")
    assert not caption_says_yes("A cat sleeps.", "dog")


def test_compute_opope(tmp_path):
    q = _jsonl(tmp_path / "q.jsonl", QUESTIONS)
    c = _jsonl(tmp_path / "c.jsonl", [
        {"image_id": 42, "caption": "A dog lies under a table."},
        {"image_id": 7, "caption": "An empty street in the rain."},
    ])
    res = compute_opope(q, c, n_bootstrap=0)
    assert [i["pred"] for i in res.items] == ["yes", "yes", "no", "no"]
    # TP1 FP1 TN1 FN1
    assert res.overall["Accuracy"] == pytest.approx(50.0)
    assert res.overall["F1"] == pytest.approx(50.0)
