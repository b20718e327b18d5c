"""The demo's object marking, side-by-side layout, paired comparison and honest reading (no model)."""

import pytest

from kvsmooth_hooks.demo import compare_arms, mark_objects, reading, render, side_by_side, visible_len
from kvsmooth_hooks.eval.grounded import score_description


def test_marks_grounded_and_invented_mentions_like_chair():
    text = "A dog sleeps near two Cats, a hair drier and a red car."
    m = mark_objects(text, ["dog", "hair drier"])
    assert m.text == "A [+dog] sleeps near two [!Cats], a [+hair drier] and a red [!car]."
    assert m.grounded == ["dog", "hair drier"] and m.invented == ["cat", "car"]
    # the marks agree with the CHAIR scoring of the same text
    r = score_description(text, ["dog", "hair drier"])
    assert sorted(set(r["hallucinated_objects"])) == sorted(m.invented)


def test_marks_survive_quotes_and_repeats():
    m = mark_objects('He said "a dog" and a dog.', ["dog"])
    assert m.text.count("[+dog]") == 2 and not m.invented
    assert mark_objects("Nothing here.", ["dog"]).text == "Nothing here."


def test_colour_rendering_and_columns_keep_marks_whole():
    line = "a [+parking meter] and a [!car]"
    coloured = render(line, True)
    assert "[+" not in coloured and "[!" not in coloured and "\033[32mparking meter" in coloured and "\033[1;31mcar" in coloured
    assert visible_len(coloured) == len("a parking meter and a car")
    rows = side_by_side(("baseline", "KVSmooth"), ["word " * 8 + "[+parking meter] end", "x"], 50, color=False)
    body = [r.split(" | ")[0] for r in rows[2:]]
    assert any("[+parking meter]" in b for b in body)  # never split across lines
    coloured_rows = side_by_side(("a", "b"), ["[+dog] " * 10, "[!cat]"], 50, color=True)
    assert len({visible_len(r.split(" | ")[0]) for r in coloured_rows[2:]}) == 1  # columns aligned


def _rec(i, hall, mentions, correct, gt, rep):
    return {"id": f"s{i}", "CHAIR_S": int(hall > 0), "hallucinated_objects": ["car"] * hall,
            "mentioned_objects": ["x"] * mentions, "correct_objects": ["y"] * correct, "objects": ["z"] * gt,
            "Rep3": rep}


def test_paired_comparison_and_reading():
    base = [_rec(i, 1 if i < 10 else 0, 4, 2, 4, 0.0) for i in range(20)]
    same = [dict(r) for r in base]
    cmp = compare_arms(base, same, n_bootstrap=200)
    assert cmp["CHAIR_S"]["baseline"] == 50.0 and cmp["CHAIR_S"]["diff"] == 0.0
    assert cmp["CHAIR_S"]["ci_diff"] == (0.0, 0.0)
    assert "all differences" in reading(cmp, 20) and "within noise" in reading(cmp, 20)
    better = [_rec(i, 0, 4, 2, 4, 0.0) for i in range(20)]
    cmp = compare_arms(base, better, n_bootstrap=500)
    assert cmp["CHAIR_S"]["diff"] == -50.0 and cmp["CHAIR_S"]["ci_diff"][1] < 0
    text = reading(cmp, 20)
    assert "improves CHAIR_S 50.0 -> 0.0" in text and "Recall" in text
    worse = [_rec(i, 0, 4, 2, 4, 0.5) for i in range(20)]
    assert "worsens Rep3 0.0 -> 50.0" in reading(compare_arms(base, worse, n_bootstrap=200), 20)
    with pytest.raises(ValueError, match="same scenes"):
        compare_arms(base, better[::-1])
