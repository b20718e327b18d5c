import json

import pytest

from kvsmooth_hooks.eval.chair import (
    ChairEvaluator, build_coco_ground_truth, compute_chair, load_captions, load_ground_truth,
)
from kvsmooth_hooks.eval.coco_objects import ObjectExtractor, coco_categories, load_synonyms
from kvsmooth_hooks.eval.records import EvalInputError


@pytest.fixture(scope="module")
def ex():
    return ObjectExtractor("offline")


def test_tables():
    assert len(coco_categories()) == 80
    syn = load_synonyms()
    assert syn["puppy"] == "dog" and syn[" motor bike"] == "motorcycle" and "" in syn


@pytest.mark.parametrize("caption, expected", [
    ("A man walks two dogs.", ["person", "dog"]),
    ("Two men and a woman.", ["person"]),  # 'men' stays 'men' (NLTK 3.8 WordNet quirk)
    ("A baby elephant and a passenger train.", ["elephant", "train"]),
    ("Hot dogs and wine glasses near a traffic light.", ["hot dog", "wine glass", "traffic light"]),
    ("A toilet seat.", ["toilet"]),
    ("The seat of the toilet.", ["toilet"]),
    ("A bow tie.", ["tie"]),
    ("A motor bike.", []),  # ' motor bike' has a leading space in synonyms.txt: never matches
    ("A cheesecake and a train track.", []),
    ("Two vases.", []),  # WordNet lemma of 'vases' is 'vas'
])
def test_extraction(ex, caption, expected):
    assert ex.categories(caption) == expected


def test_mention_indices_and_tokens(ex):
    e = ex.extract("A hot dog and a dog.")
    assert e.tokens == ["a", "hot dog", "and", "a", "dog", "."]
    assert [(m.word, m.category, m.index) for m in e.mentions] == [("hot dog", "hot dog", 1), ("dog", "dog", 5)]


GT = {1: ["dog", "person"], 2: ["cat", "bed"]}
CAPS = [
    {"image_id": 1, "caption": "A man walks a dog next to a car."},  # person, dog, car(hallucinated); 10 tokens
    {"image_id": 2, "caption": "Two cats on a bed."},  # cat, bed; 6 tokens
]


def test_chair_numbers():
    res = ChairEvaluator(GT).evaluate(CAPS, n_bootstrap=0)
    o = res.overall
    assert o["CHAIR_S"] == pytest.approx(50.0)
    assert o["CHAIR_I"] == pytest.approx(20.0)
    assert o["Recall"] == pytest.approx(100.0)
    assert o["Precision"] == pytest.approx(80.0)
    assert o["F1"] == pytest.approx(800 / 9)
    assert o["Len"] == pytest.approx(8.0)
    c = res.captions[0]
    assert c.mentioned_objects == ["person", "dog", "car"]
    assert c.hallucinated_objects == ["car"]
    assert c.correct_objects == ["person", "dog"]
    d = res.to_dict()
    assert set(d["overall"]) == {"CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len"}
    assert d["captions"][1]["hallucinated_objects"] == []


def test_repeats_kept_in_hallucinated_objects():
    res = ChairEvaluator({1: ["dog"]}).evaluate([{"image_id": 1, "caption": "A cat, a cat and a dog."}], n_bootstrap=0)
    assert res.captions[0].hallucinated_objects == ["cat", "cat"]
    assert res.overall["CHAIR_I"] == pytest.approx(200 / 3)


def test_bootstrap_seeded():
    caps = CAPS * 10
    a = ChairEvaluator(GT).evaluate(caps, n_bootstrap=200, seed=3)
    b = ChairEvaluator(GT).evaluate(caps, n_bootstrap=200, seed=3)
    assert a.intervals == b.intervals
    lo, hi = a.intervals["CHAIR_S"]
    assert 0.0 <= lo <= 50.0 <= hi <= 100.0


def test_missing_ground_truth_is_an_error():
    with pytest.raises(EvalInputError, match="image_id 7"):
        ChairEvaluator(GT).evaluate([{"image_id": 7, "caption": "a dog"}], n_bootstrap=0)
    res = ChairEvaluator(GT, missing_gt="empty").evaluate([{"image_id": 7, "caption": "a dog"}], n_bootstrap=0)
    assert res.overall["CHAIR_S"] == 100.0


def test_load_captions_names_line(tmp_path):
    p = tmp_path / "caps.jsonl"
    p.write_text('{"image_id": 1, "caption": "a"}\n{"image_id": 2}\n')
    with pytest.raises(EvalInputError, match=r"caps.jsonl:2: no caption text field"):
        load_captions(p)


def test_gt_file_and_compute_chair(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"1": ["dog", "person"], "2": ["cat", "bed"]}))
    assert load_ground_truth(gt)[1] == {"dog", "person"}
    caps = tmp_path / "c.jsonl"
    caps.write_text("\n".join(json.dumps(c) for c in CAPS))
    assert compute_chair(caps, gt, n_bootstrap=0).overall["CHAIR_S"] == pytest.approx(50.0)


def _write_coco(d):
    cats = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 67, "name": "dining table"}]
    for split, anns, caps in (
        ("train", [{"image_id": 1, "category_id": 18}], [{"image_id": 1, "caption": "A man with his puppy."}]),
        ("val", [{"image_id": 2, "category_id": 67}], [{"image_id": 2, "caption": "Cups on a desk."}]),
    ):
        (d / f"instances_{split}2014.json").write_text(json.dumps({"categories": cats, "annotations": anns}))
        (d / f"captions_{split}2014.json").write_text(json.dumps({"annotations": caps}))


def test_build_coco_ground_truth_with_cache(tmp_path):
    _write_coco(tmp_path)
    cache = tmp_path / "cache" / "gt.json"
    gt = build_coco_ground_truth(tmp_path, cache_path=cache, show_progress=False)
    assert gt == {1: {"dog", "person"}, 2: {"dining table", "cup"}}
    payload = json.loads(cache.read_text())
    assert payload["objects"]["2"] == ["cup", "dining table"]
    assert build_coco_ground_truth(tmp_path, cache_path=cache, show_progress=False) == gt
    assert load_ground_truth(cache) == gt


def test_ground_truth_cache_is_keyed_by_content(tmp_path):
    """An annotation edit that keeps the file's size (and its time stamp) is not scored against the stale cache."""
    import os

    _write_coco(tmp_path)
    cache = tmp_path / "cache" / "gt.json"
    assert build_coco_ground_truth(tmp_path, cache_path=cache, show_progress=False)[1] == {"dog", "person"}
    inst = tmp_path / "instances_train2014.json"
    stat = inst.stat()
    text = inst.read_text()
    edited = text.replace('"category_id": 18', '"category_id": 67')  # dog -> dining table, same length
    assert len(edited) == len(text) and edited != text
    inst.write_text(edited)
    os.utime(inst, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "dining table" in build_coco_ground_truth(tmp_path, cache_path=cache, show_progress=False)[1]


def test_build_coco_ground_truth_missing_file(tmp_path):
    with pytest.raises(EvalInputError, match="instances_train2014.json"):
        build_coco_ground_truth(tmp_path, show_progress=False)
