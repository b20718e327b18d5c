"""Grounded-text CHAIR proxy: scenes, scoring and resumable runs."""

import json

import pytest
import torch

from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig
from kvsmooth_hooks.benchmarks.grounded import run_grounded_chair
from kvsmooth_hooks.eval.grounded import make_scenes, repetition_rate, score_description
from kvsmooth_hooks.eval.records import EvalInputWarning


def test_scenes_are_deterministic_and_extend():
    a, b = make_scenes(10, seed=3), make_scenes(25, seed=3)
    assert a == b[:10]
    assert make_scenes(10, seed=4) != a
    assert all(3 <= len(s.objects) <= 6 and len(set(s.objects)) == len(s.objects) for s in b)
    assert make_scenes(1, 0, 2, 2)[0].prompt().count(" and ") == 1
    with pytest.raises(ValueError, match="min_objects"):
        make_scenes(1, 0, 5, 2)


def test_score_description_by_hand():
    r = score_description("A dog catches a frisbee. A man sits on a bench by a car.", ["dog", "frisbee", "bench"])
    assert r["mentioned_objects"] == ["dog", "frisbee", "person", "bench", "car"]
    assert r["hallucinated_objects"] == ["person", "car"]
    assert r["CHAIR_S"] == 1 and r["CHAIR_I"] == pytest.approx(2 / 5) and r["Recall"] == 1.0
    r = score_description("A quiet scene with a dog.", ["dog", "cat"])
    assert r["CHAIR_S"] == 0 and r["Recall"] == 0.5
    assert repetition_rate("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert repetition_rate("one two") == 0.0


class WordTok:
    """A minimal tokenizer for a tiny random model: words <-> ids modulo the vocabulary."""

    pad_token = "<pad>"
    eos_token = "<pad>"
    padding_side = "left"
    chat_template = None

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=False):
        rows = [[3 + (hash(w) % 100) for w in t.split()] for t in texts]
        n = max(map(len, rows))
        ids = torch.tensor([[0] * (n - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])

        class Enc(dict):
            def to(self, device):
                return self

        return Enc(input_ids=ids, attention_mask=mask)

    def decode(self, ids, skip_special_tokens=True):
        words = ["dog", "car", "a", "the", "bench", "cat"]
        return " ".join(words[int(i) % len(words)] for i in ids)


def test_run_is_resumable_and_uses_the_session(tmp_path):
    model, tok = tiny_llama(), WordTok()
    scenes = make_scenes(5, seed=1)
    out = tmp_path / "s.jsonl"
    first = run_grounded_chair(model, tok, scenes[:3], None, out, batch_size=2, max_new_tokens=6, progress=False,
                               n_bootstrap=0)
    assert first["n"] == 3 and len(out.read_text().splitlines()) == 3
    full = run_grounded_chair(model, tok, scenes, None, out, batch_size=2, max_new_tokens=6, progress=False,
                              n_bootstrap=0)
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert full["n"] == 5 and [l["scene_id"] for l in lines] == [s.scene_id for s in scenes]  # only 2 new samples
    # an interrupted run cut the last line: that scene is redone, and the cut line replaced
    text = out.read_text()
    out.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 12])
    with pytest.warns(EvalInputWarning, match="line 5"):
        again = run_grounded_chair(model, tok, scenes, None, out, batch_size=2, max_new_tokens=6, progress=False,
                                   n_bootstrap=0)
    assert {k: v for k, v in again.items() if k != "seconds_per_sample"} == \
        {k: v for k, v in full.items() if k != "seconds_per_sample"}
    assert out.read_text().splitlines()[:4] == text.splitlines()[:4]
    assert [json.loads(l)["scene_id"] for l in out.read_text().splitlines()] == [s.scene_id for s in scenes]
    smoothed = run_grounded_chair(model, tok, scenes, KVSmoothConfig(layers="1:-1"), tmp_path / "sm.jsonl",
                                  batch_size=5, max_new_tokens=6, progress=False, n_bootstrap=0)
    descs = [json.loads(l)["description"] for l in (tmp_path / "sm.jsonl").read_text().splitlines()]
    assert smoothed["n"] == 5 and descs != [l["description"] for l in lines]


def test_resume_refuses_other_settings_but_grows(tmp_path):
    from kvsmooth_hooks.benchmarks.grounded import evaluate_config
    from kvsmooth_hooks.eval.records import EvalInputError

    model, tok = tiny_llama(), WordTok()
    out = tmp_path / "arm"
    small = evaluate_config(model, tok, None, n_scenes=2, seed=0, out_dir=out, max_new_tokens=4, batch_size=2,
                            progress=False)
    assert small["n"] == 2 and json.loads((out / "summary.json").read_text())["n"] == 2
    grown = evaluate_config(model, tok, None, n_scenes=3, seed=0, out_dir=out, max_new_tokens=4, batch_size=2,
                            progress=False)  # a larger n extends the same scenes
    assert grown["n"] == 3 and len((out / "samples.jsonl").read_text().splitlines()) == 3
    with pytest.raises(EvalInputError, match="max_new_tokens"):
        evaluate_config(model, tok, None, n_scenes=3, seed=0, out_dir=out, max_new_tokens=5, progress=False)
    with pytest.raises(EvalInputError, match="config"):
        evaluate_config(model, tok, KVSmoothConfig(), n_scenes=3, seed=0, out_dir=out, max_new_tokens=4,
                        progress=False)


@pytest.mark.slow
def test_four_scenes_on_smollm2(smollm2, tmp_path):
    """The real model, both arms: well-formed samples and summaries (the numbers themselves are in the docs)."""
    from kvsmooth_hooks.benchmarks.grounded import evaluate_config

    model, tok = smollm2
    for arm, cfg in (("baseline", None), ("smoothed", KVSmoothConfig.preset("llava-1.5"))):
        s = evaluate_config(model, tok, cfg, n_scenes=4, seed=0, out_dir=tmp_path / arm, max_new_tokens=24,
                            batch_size=4, progress=False)
        assert s["n"] == 4 and 0 <= s["CHAIR_S"] <= 100 and 0 <= s["Recall"] <= 100 and s["Len"] > 5
        recs = [json.loads(l) for l in (tmp_path / arm / "samples.jsonl").read_text().splitlines()]
        assert [r["scene_id"] for r in recs] == [f"s0-{i:05d}" for i in range(4)]
        assert all(r["description"] for r in recs)
        assert set(s["ci95"]) >= {"CHAIR_S", "CHAIR_I", "Recall", "F1"}
