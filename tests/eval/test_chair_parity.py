"""CHAIR parity with the reference OPERA/PAI chair.py on 3,000 real MLLM captions.

The data (captions, ground truth, reference per-caption output) lives in
``shared/chair_parity`` beside the project checkout; see its README.md.
"""

from __future__ import annotations

import json

import pytest

from helpers import ROOT

from kvsmooth_hooks.eval.chair import ChairEvaluator, load_captions, load_ground_truth

PARITY_DIR = ROOT.parent / "shared" / "chair_parity"

if not (PARITY_DIR / "captions").is_dir():
    pytest.skip(f"CHAIR parity data not found at {PARITY_DIR} (expected shared/chair_parity beside the checkout)",
                allow_module_level=True)

NAMES = sorted(p.stem for p in (PARITY_DIR / "captions").glob("*.jsonl"))


@pytest.fixture(scope="module")
def parity():
    out = {}
    gts = {}
    for name in NAMES:
        model = name.split("_")[0]
        if model not in gts:
            gts[model] = load_ground_truth(PARITY_DIR / "gt" / f"{model}.json")
        ref = json.loads((PARITY_DIR / "reference" / f"{name}.json").read_text())
        ours = ChairEvaluator(gts[model], "offline").evaluate(load_captions(PARITY_DIR / "captions" / f"{name}.jsonl"),
                                                              n_bootstrap=0)
        out[name] = (ours, ref)
    return out


def test_parity_files_present():
    assert len(NAMES) == 6


def test_per_caption_hallucinated_sets(parity):
    agree = total = 0
    for name, (ours, ref) in parity.items():
        assert len(ours.captions) == len(ref["sentences"])
        for c, r in zip(ours.captions, ref["sentences"]):
            assert c.image_id == r["image_id"]
            agree += set(c.hallucinated_objects) == {cat for _, cat in r["hallucinated_words"]}
            total += 1
    assert total == 3000
    assert agree / total >= 0.99, f"hallucinated-set agreement {agree / total:.4f}"


@pytest.mark.parametrize("name", NAMES)
def test_overall_metrics_within_tolerance(parity, name):
    ours, ref = parity[name]
    ro = ref["overall_metrics"]
    assert abs(ours.overall["CHAIR_S"] - 100 * ro["CHAIRs"]) <= 0.3
    assert abs(ours.overall["CHAIR_I"] - 100 * ro["CHAIRi"]) <= 0.3
    assert abs(ours.overall["Recall"] - 100 * ro["Recall"]) <= 0.3
    # Len is reported by the reference as mean tokens / 100
    assert abs(ours.overall["Len"] - 100 * ro["Len"]) <= 0.5
