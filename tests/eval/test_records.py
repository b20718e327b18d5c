"""Bad and unusual inputs for every metric: one-line errors naming file, line and field (exit 2), content-based
format detection, duplicates and conflicts, and the shared readers."""

from __future__ import annotations

import json

import pytest

from kvsmooth_hooks.eval.cli import main
from kvsmooth_hooks.eval.pope import caption_says_yes, compute_pope, parse_yes_no
from kvsmooth_hooks.eval.records import EvalInputError, EvalInputWarning, read_captions, read_records

QUESTIONS = [
    {"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?", "label": "yes"},
    {"question_id": 2, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a tv in the image?", "label": "no"},
    {"question_id": 3, "image": "COCO_val2014_000000000007.jpg", "text": "Is there a ball in the image?", "label": "yes"},
]


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path):
    """A small valid set of inputs for every command."""
    d = {
        "q": _lines(tmp_path / "coco_pope_random.json", QUESTIONS),  # JSON Lines named .json, as distributed
        "a": _lines(tmp_path / "answers.jsonl", [{"question_id": q["question_id"], "text": "Yes"} for q in QUESTIONS]),
        "caps": _lines(tmp_path / "caps.jsonl", [{"image_id": 42, "caption": "A dog and a TV."},
                                                  {"image_id": 7, "caption": "A baseball game."}]),
        "gt": tmp_path / "gt.json",
        "amber": tmp_path / "amber",
    }
    d["gt"].write_text(json.dumps({"42": ["dog"], "7": ["person"]}))
    d["amber"].mkdir()
    (d["amber"] / "annotations.json").write_text(json.dumps([
        {"id": 1, "type": "generative", "truth": ["dog"], "hallu": ["cat"]},
        {"id": 2, "type": "discriminative-hallucination", "truth": "no"}]))
    (d["amber"] / "relation.json").write_text(json.dumps({"dog": [], "cat": []}))
    (d["amber"] / "safe_words.txt").write_text("")
    d["resp"] = tmp_path / "resp.json"
    d["resp"].write_text(json.dumps([{"id": 1, "response": "A dog."}, {"id": 2, "response": "No"}]))
    return d


def _argv(cmd, f, **over):
    f = {**f, **over}
    return {
        "chair": ["chair", str(f["caps"]), "--gt-objects", str(f["gt"]), "--bootstrap", "0"],
        "pope": ["pope", str(f["q"]), str(f["a"]), "--bootstrap", "0"],
        "opope": ["opope", str(f["q"]), str(f["caps"]), "--bootstrap", "0"],
        "amber": ["amber", str(f["resp"]), "--amber-data", str(f["amber"])],
    }[cmd]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("cmd", ["chair", "pope", "opope", "amber"])
def test_valid_inputs_score(cmd, files, capsys):
    assert main(_argv(cmd, files)) == 0
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize("cmd, key", [("chair", "caps"), ("pope", "q"), ("pope", "a"), ("opope", "caps"),
                                      ("amber", "resp")])
@pytest.mark.parametrize("content", ["", "\n  \n", "[]"])
def test_empty_input_is_an_error(cmd, key, content, files, tmp_path, capsys):
    empty = tmp_path / f"empty_{key}.jsonl"
    empty.write_text(content)
    assert main(_argv(cmd, files, **{key: empty})) == 2
    line = _error_line(capsys)
    assert str(empty) in line and ("no " in line or "nothing to score" in line)


@pytest.mark.parametrize("cmd, key", [("chair", "caps"), ("pope", "q"), ("pope", "a"), ("amber", "resp")])
def test_non_utf8_names_file_and_line(cmd, key, files, tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"x": 1}\n{"x": "caf\xe9"}\n')
    assert main(_argv(cmd, files, **{key: bad})) == 2
    assert f"{bad}:2: not UTF-8" in _error_line(capsys)


@pytest.mark.parametrize("cmd, key, rows, expect", [
    ("chair", "caps", [{"image_id": 42, "caption": None}], "caps_bad.jsonl:1: field 'caption' must be a string, got null"),
    ("chair", "caps", [{"image_id": 42, "caption": "x"}, {"image_id": 1.5, "caption": "y"}],
     "caps_bad.jsonl:2: field 'image_id' must be an integer"),
    ("chair", "caps", [{"image_id": 42, "caption": "x"}, {"image_id": 7}], "caps_bad.jsonl:2: no caption text field"),
    ("pope", "a", [{"question_id": 1, "text": None}], "caps_bad.jsonl:1: field 'text' must be a string, got null"),
    ("pope", "a", [{"question_id": 1}], "caps_bad.jsonl:1: missing field 'text'"),
    ("pope", "q", [{"question_id": 1, "image": "a.jpg", "text": "Is there a dog in the image?", "label": "maybe"}],
     "caps_bad.jsonl:1: field 'label' must be \"yes\" or \"no\""),
    ("pope", "q", [{"image": "a.jpg", "label": "yes"}], "caps_bad.jsonl:1: missing field 'question_id'"),
    ("amber", "resp", [{"id": 1.7, "response": "x"}], "caps_bad.jsonl:1: field 'id' must be an integer, got float 1.7"),
    ("amber", "resp", [{"id": "AMBER_12", "response": "x"}], "caps_bad.jsonl:1: field 'id' must be an integer, got str"),
    ("amber", "resp", [{"id": 9, "response": "x"}], "caps_bad.jsonl:1: field 'id' is 9, outside 1..2"),
    ("amber", "resp", [{"id": 1, "response": None}], "caps_bad.jsonl:1: field 'response' must be a string, got null"),
])
def test_bad_field_names_file_line_and_field(cmd, key, rows, expect, files, tmp_path, capsys):
    bad = _lines(tmp_path / "caps_bad.jsonl", rows)
    assert main(_argv(cmd, files, **{key: bad})) == 2
    assert expect in _error_line(capsys)


def test_broken_json_names_line(files, tmp_path, capsys):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"image_id": 42, "caption": "x"}\n{"image_id": 7, "caption": \n')
    assert main(_argv("chair", files, caps=bad)) == 2
    assert f"{bad}:2: not valid JSON" in _error_line(capsys)
    bad.write_text('[\n {"id": 1, "response": "x"},\n {"id": 2 "response": "y"}\n]\n')
    assert main(_argv("amber", files, resp=bad)) == 2
    assert f"{bad}:3: not valid JSON" in _error_line(capsys)


def test_broken_amber_data_names_file(files, capsys):
    (files["amber"] / "annotations.json").write_text('[{"id": 1, "type": "generative",\n')
    assert main(_argv("amber", files)) == 2
    assert "annotations.json:" in _error_line(capsys)
    (files["amber"] / "annotations.json").write_text('{"not": "a list"}')
    assert main(_argv("amber", files)) == 2
    assert "expected a non-empty JSON list" in _error_line(capsys)


def test_output_directory_is_an_error(files, tmp_path, capsys):
    assert main(_argv("pope", files) + ["-o", str(tmp_path)]) == 2
    assert "is a directory; give a file name" in _error_line(capsys)


@pytest.mark.parametrize("cmd, key, rows, what", [
    ("chair", "caps", [{"image_id": 42, "caption": "A dog."}, {"image_id": 7, "caption": "x"},
                       {"image_id": "42", "caption": "A dog."}], "image id 42 repeats"),
    ("pope", "q", QUESTIONS + [QUESTIONS[0]], "question_id 1 repeats"),
    ("pope", "a", [{"question_id": q["question_id"], "text": "Yes"} for q in QUESTIONS] + [{"question_id": 2, "text": "Yes"}],
     "question_id 2 repeats"),
    ("amber", "resp", [{"id": 1, "response": "A dog."}, {"id": 2, "response": "No"}, {"id": 2, "response": "No"}],
     "id 2 repeats"),
])
def test_duplicates_error_or_warn_with_flag(cmd, key, rows, what, files, tmp_path, capsys):
    dup = _lines(tmp_path / "dup.jsonl", rows)
    assert main(_argv(cmd, files, **{key: dup})) == 2
    line = _error_line(capsys)
    assert what in line and "--allow-duplicates" in line
    assert main(_argv(cmd, files, **{key: dup}) + ["--allow-duplicates"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and what in err


def test_conflicting_answers(files, tmp_path, capsys):
    rows = [{"question_id": q["question_id"], "text": "Yes"} for q in QUESTIONS] + [{"question_id": 1, "text": "No"}]
    dup = _lines(tmp_path / "conflict.jsonl", rows)
    with pytest.raises(EvalInputError, match="conflict.jsonl:4: question_id 1 repeats .*conflict.jsonl:1 with a different answer"):
        compute_pope(files["q"], dup, n_bootstrap=0)
    with pytest.warns(EvalInputWarning, match="conflicting duplicate"):
        res = compute_pope(files["q"], dup, n_bootstrap=0, on_duplicate="warn")
    assert [i["pred"] for i in res.items] == ["yes", "yes", "yes"]  # the first answer is kept


def test_pope_answers_unknown_or_missing_ids(files, tmp_path):
    extra = _lines(tmp_path / "a.jsonl", [{"question_id": q, "text": "No"} for q in (1, 2, 3, 99)])
    with pytest.raises(EvalInputError, match="a.jsonl:4: question_id 99 is not in the question file"):
        compute_pope(files["q"], extra, n_bootstrap=0)
    missing = _lines(tmp_path / "b.jsonl", [{"question_id": q, "text": "No"} for q in (1, 3)])
    with pytest.raises(EvalInputError, match="no answer for question_id 2"):
        compute_pope(files["q"], missing, n_bootstrap=0)


def test_pope_format_answers_by_position(files, tmp_path):
    rows = [{"question": q["text"], "answer": a} for q, a in zip(QUESTIONS, ["Yes", "No, there is not.", "NO"])]
    res = compute_pope(files["q"], _lines(tmp_path / "pope.jsonl", rows), n_bootstrap=0)
    assert res.answer_format == "pope"
    assert [i["pred"] for i in res.items] == ["yes", "no", "yes"]  # "NO" is yes under POPE's rule
    with pytest.raises(EvalInputError, match="3 answers for 2 questions|2 answers for 3 questions"):
        compute_pope(files["q"], _lines(tmp_path / "short.jsonl", rows[:2]), n_bootstrap=0)
    swapped = [rows[1], rows[0], rows[2]]
    with pytest.raises(EvalInputError, match="swapped.jsonl:1: field 'question' .* paired by position"):
        compute_pope(files["q"], _lines(tmp_path / "swapped.jsonl", swapped), n_bootstrap=0)


def test_formats_detected_by_content(tmp_path):
    rows = [{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}]
    as_list = tmp_path / "list.jsonl"
    as_list.write_text(json.dumps(rows, indent=1))
    as_lines = _lines(tmp_path / "lines.json", rows)
    wrapped = tmp_path / "wrapped.txt"
    wrapped.write_text(json.dumps({"model": "x", "results": rows}))
    for p in (as_list, as_lines, wrapped):
        assert [r["image_id"] for r in read_records(p)] == [1, 2], p
    assert read_records(as_list).where(1) == f"{as_list}:6"
    assert read_records(as_lines).where(1) == f"{as_lines}:2"


def test_caption_shapes_the_field_publishes(tmp_path):
    opera = _lines(tmp_path / "opera.jsonl", [{"image_id": 42, "caption": "A dog."}])
    llava = _lines(tmp_path / "llava.jsonl", [{"question_id": 42, "prompt": "Describe.", "text": "A dog.",
                                                "answer_id": "x", "model_id": "llava", "metadata": {}}])
    coco_name = _lines(tmp_path / "name.jsonl", [{"image": "COCO_val2014_000000000042.jpg", "caption": "A dog."}])
    for p in (opera, llava, coco_name):
        assert [(r["image_id"], r["caption"]) for r in read_captions(p)] == [(42, "A dog.")], p


def test_opope_rules():
    # HALC: case-sensitive substring of the raw caption, any space-separated piece of the object name
    assert caption_says_yes("A baseball game.", "ball")
    assert not caption_says_yes("A TV on a stand.", "tv")
    assert caption_says_yes("A wooden table.", "dining table")
    # the stricter non-standard rule: lower-cased whole words with plurals
    assert not caption_says_yes("A baseball game.", "ball", rule="words")
    assert caption_says_yes("A TV on a stand.", "tv", rule="words")


@pytest.mark.parametrize("text, label, pred", [
    ("Yes, there is.", "yes", "yes"), ("I see no dog", "yes", "no"), ("There is nothing.", "no", "no"),
    ("Yes", "no", "yes"), ("snow covers it", "no", "no"),  # VCD's substring 'no' also matches 'snow'
])
def test_vcd_rule(text, label, pred):
    assert parse_yes_no(text, "vcd", label) == pred
