import pytest

from kvsmooth_hooks.eval.objhal import compute_objhal

GT = {1: ["dog"], 2: ["cat"], 3: ["car"]}
RESPONSES = [
    {"image_id": 1, "response": "A dog catches a frisbee."},  # dog ok, frisbee hallucinated
    {"image_id": 2, "response": "A cat."},
    {"image_id": 3, "response": "Nothing to see here."},  # no object: excluded from CHAIR_S
]


def test_objhal_hand_computed():
    res = compute_objhal(RESPONSES, GT, n_bootstrap=0)
    o = res.overall
    assert o["CHAIR_S"] == pytest.approx(50.0)
    assert o["CHAIR_I"] == pytest.approx(100 / 3)
    assert o["Recall"] == pytest.approx(200 / 3)
    assert o["Precision"] == pytest.approx(200 / 3)
    assert o["F1"] == pytest.approx(200 / 3)
    assert (o["num_responses"], o["num_with_objects"]) == (3, 2)
    assert res.responses[0].hallucinated_objects == ["frisbee"]


def test_objhal_bootstrap_reproducible():
    a = compute_objhal(RESPONSES * 5, GT, n_bootstrap=100, seed=1)
    b = compute_objhal(RESPONSES * 5, GT, n_bootstrap=100, seed=1)
    assert a.intervals == b.intervals
