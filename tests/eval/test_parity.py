"""POPE, OPOPE and AMBER parity with the official scripts on real, published model outputs.

The data (LLaVA-1.5-13B POPE answers with the question files as distributed, POPE's Instruction2 captions,
83 LLaVA-1.5-7B AMBER responses with AMBER's data folder) and what RUCAIBox/POPE ``evaluate.py``, HALC
``eval/opope_eval.py`` and AMBER ``inference.py`` compute on them live in ``shared/eval_parity`` beside the
project checkout; see its README.md.  Every result file there is compared.

Tolerances (issue 13): POPE and OPOPE 0.1 point (counts exact), AMBER 0.5 point.
"""

from __future__ import annotations

import json

import pytest

from helpers import ROOT

from kvsmooth_hooks.eval.amber import compute_amber
from kvsmooth_hooks.eval.pope import compute_opope, compute_pope, load_pope_questions

PARITY_DIR = ROOT.parent / "shared" / "eval_parity"

if not (PARITY_DIR / "README.md").is_file():
    pytest.skip(f"eval parity data not found at {PARITY_DIR.resolve()} (expected shared/eval_parity beside the "
                "checkout; a user's clone does not have it)", allow_module_level=True)

METRICS = ("Accuracy", "Precision", "Recall", "F1", "YesRatio")
COUNTS = ("TP", "FP", "TN", "FN")


def _results(sub: str) -> dict:
    return json.loads((PARITY_DIR / sub / "official_results.json").read_text())["results"]


POPE = _results("pope")
OPOPE = _results("opope")
AMBER = _results("amber")


def _split(name: str) -> str:
    return name.rsplit("_", 1)[-1]


def _check_binary(ours: dict, ref: dict, tol: float = 0.1) -> None:
    for k in COUNTS:
        assert ours[k] == ref[k], (k, ours[k], ref[k])
    for k in METRICS:
        assert abs(ours[k] - ref[k]) <= tol, (k, ours[k], ref[k])


def test_every_data_file_has_a_result():
    answers = {p.stem for p in (PARITY_DIR / "pope" / "answers").glob("*.jsonl")}
    assert answers and answers == set(POPE)
    captions = {p.stem for p in (PARITY_DIR / "opope" / "captions").glob("*.jsonl")}
    assert captions and captions == {n.split("__")[0] for n in OPOPE}
    responses = {f"amber/{p.relative_to(PARITY_DIR / 'amber').as_posix()}"
                 for p in (PARITY_DIR / "amber" / "responses").glob("*.json")}
    assert responses and responses == {r["responses"] for r in AMBER.values()}


@pytest.mark.parametrize("name", sorted(POPE))
def test_pope_official_files_as_distributed(name):
    """Question files read as distributed (JSON Lines named .json), POPE-format answers by position."""
    questions = PARITY_DIR / "pope" / "questions" / f"coco_pope_{_split(name)}.json"
    res = compute_pope(questions, PARITY_DIR / "pope" / "answers" / f"{name}.jsonl", n_bootstrap=0)
    assert res.answer_format == "pope"
    _check_binary(res.overall, POPE[name])


@pytest.mark.parametrize("name", sorted(POPE))
def test_pope_llava_and_vcd_answer_formats(name, tmp_path):
    """The same answers in LLaVA's and VCD's shapes (by question_id, shuffled) give the official numbers;
    VCD's own rule agrees on these files too (see shared/eval_parity/README.md)."""
    questions = PARITY_DIR / "pope" / "questions" / f"coco_pope_{_split(name)}.json"
    qs = load_pope_questions(questions)
    answers = [json.loads(line) for line in (PARITY_DIR / "pope" / "answers" / f"{name}.jsonl").read_text().splitlines()
               if line.strip()]
    llava = [{"question_id": q["question_id"], "prompt": q["text"], "text": a["answer"], "answer_id": str(i),
              "model_id": "llava-v1.5-13b", "metadata": {}} for i, (q, a) in enumerate(zip(qs, answers))]
    vcd = [{"question_id": q["question_id"], "prompt": q["text"], "text": a["answer"], "model_id": "llava",
            "image": q["image"], "metadata": {}} for q, a in zip(qs, answers)]
    (tmp_path / "llava.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(llava)))
    (tmp_path / "vcd.json").write_text(json.dumps(vcd))  # a JSON list with a .json suffix
    res = compute_pope(questions, tmp_path / "llava.jsonl", n_bootstrap=0)
    _check_binary(res.overall, POPE[name])
    res = compute_pope(questions, tmp_path / "vcd.json", rule="vcd", n_bootstrap=0)
    assert res.answer_format == "vcd"
    _check_binary(res.overall, POPE[name])


@pytest.mark.parametrize("name", sorted(OPOPE))
def test_opope_halc_rule(name):
    captions, split = name.split("__")
    res = compute_opope(PARITY_DIR / "opope" / "questions" / f"coco_pope_{split}_captioned.jsonl",
                        PARITY_DIR / "opope" / "captions" / f"{captions}.jsonl", n_bootstrap=0)
    assert res.rule == "halc"
    _check_binary(res.overall, OPOPE[name])


@pytest.mark.parametrize("name", sorted(AMBER))
def test_amber_generative_offline_within_half_a_point(name):
    entry = AMBER[name]
    ref = entry["full_precision"]["Generative Task"]
    res = compute_amber(PARITY_DIR / entry["responses"], PARITY_DIR / "amber" / "data", backend="offline")
    for k, v in ref.items():
        assert abs(res.generative[k] - v) <= 0.5, (k, res.generative[k], v)


@pytest.mark.parametrize("name", sorted(AMBER))
def test_amber_generative_nltk_exact(name):
    from kvsmooth_hooks.eval.lemmatize import NltkDataMissingError

    entry = AMBER[name]
    try:
        res = compute_amber(PARITY_DIR / entry["responses"], PARITY_DIR / "amber" / "data", backend="nltk")
    except NltkDataMissingError as exc:
        pytest.skip(f"NLTK or its data is not installed here: {exc}")
    ref = entry["full_precision"]["Generative Task"]
    for k, v in ref.items():  # the reference starts its denominators at 0.001: agreement to 1e-3 point
        assert abs(res.generative[k] - v) <= 1e-3, (k, res.generative[k], v)
