"""Grounded-text CHAIR proxy: scenes, scoring, and ``kvsmooth eval grounded`` as the runner with defaults."""

import json

import pytest

from kvsmooth_hooks.benchmarks.grounded import make_scenes
from kvsmooth_hooks.cli import main
from kvsmooth_hooks.eval.grounded import repetition_rate, score_description, summarize


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


def test_summarize_reads_runner_records():
    recs = [{"id": "s0", "objects": ["dog"], "output": "A dog and a car."},
            {"id": "s1", "objects": ["cat"], "output": "A cat."}]
    s = summarize(recs, n_bootstrap=0)
    assert s["CHAIR_S"] == 50.0 and s["Recall"] == 100.0 and s["n"] == 2 and s["Rep3"] == 0.0


def test_eval_grounded_is_the_runner_with_defaults(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text('layers: "1:-1"\n')  # the tiny text model has 4 layers
    out = tmp_path / "g"
    argv = ["eval", "grounded", "--model", "tiny-text", "--loader", "tiny_vlms:load_tiny_text", "--n", "3",
            "--config", str(cfg), "--max-new-tokens", "4", "--bootstrap", "0", "--no-progress", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in res["arms"]] == ["baseline", "smoothed"]  # the command's default arms
    assert res["settings"]["benchmark"] == "grounded" and res["settings"]["generation"]["batch_size"] == 10
    recs = [json.loads(l) for l in (out / "cells" / "smoothed" / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [s.scene_id for s in make_scenes(3)]
    assert set(recs[0]) >= {"id", "objects", "output", "new_tokens", "seconds"}  # the runner's record schema
    cmd = (out / "command.txt").read_text()
    assert cmd.startswith("python -m kvsmooth_hooks.run --benchmark grounded --batch-size 10 --arms baseline,smoothed")
    assert "--model tiny-text" in cmd and cmd.count("--model") == 1
    # the recorded command reproduces the run: same folder, same settings, nothing left to do
    from kvsmooth_hooks.runner.cli import main as run_main

    assert run_main(cmd.split()[3:]) == 0
    # the paper's default layers on this 4-layer model select nothing: refused, not run as the baseline
    assert main(argv[:argv.index("--config")] + argv[argv.index("--config") + 2:-1] + [str(tmp_path / "p")]) == 2
    assert "arm 'smoothed': layers '3:-1' select none of this model's 4 layers" in capsys.readouterr().err


def test_eval_grounded_help_shows_its_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "grounded", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("'smollm2' (default smollm2)", "default grounded", "items (default 100)", "(default 10;",
                  "(default baseline,smoothed)", "(resumable; default results/grounded)"):
        assert shown in text, shown
    assert "runs/run" not in text and "default 1;" not in text  # the runner's defaults are not this command's
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(resumable; default runs/run)" in text and "(default 1;" in text and "'smollm2' (required)" in text


def test_eval_grounded_parses_once_with_typed_defaults(monkeypatch):
    """The parsed options are the ones run (no second parse); the recorded command writes the defaults out."""
    from pathlib import Path

    import kvsmooth_hooks.runner.cli as runner_cli

    seen = []
    monkeypatch.setattr(runner_cli, "run", lambda args, argv: seen.append((args, argv)))
    assert main(["eval", "grounded", "--n", "7", "--seed", "1"]) == 0
    args, argv = seen[0]
    assert args.command == "eval" and args.eval_command == "grounded"  # the namespace kvsmooth parsed, not a second one
    assert (args.model, args.benchmark, args.n, args.batch_size, args.arms, args.out, args.seed) == \
        ("smollm2", "grounded", 7, 10, "baseline,smoothed", Path("results/grounded"), 1)
    assert argv == ["--model", "smollm2", "--benchmark", "grounded", "--batch-size", "10", "--arms", "baseline,smoothed",
                    "--out", "results/grounded", "--n", "7", "--seed", "1"]
    assert main(["eval", "grounded"]) == 0 and seen[1][0].n == 100 and seen[1][0].batch_size == 10


@pytest.mark.slow
def test_four_scenes_on_smollm2(tmp_path):
    """The real model, both arms: well-formed records and summaries (the numbers themselves are in the docs)."""
    out = tmp_path / "g"
    assert main(["eval", "grounded", "--n", "4", "--max-new-tokens", "24", "--preset", "llava-1.5", "--no-progress",
                 "--out", str(out)]) == 0
    res = {r["arm"]: r for r in json.loads((out / "results.json").read_text())["arms"]}
    for arm in ("baseline", "smoothed"):
        s = res[arm]
        assert s["n"] == 4 and 0 <= s["CHAIR_S"] <= 100 and 0 <= s["Recall"] <= 100 and s["Len"] > 5
        recs = [json.loads(l) for l in (out / "cells" / arm / "records.jsonl").read_text().splitlines()]
        assert [r["id"] for r in recs] == [f"s0-{i:05d}" for i in range(4)]
        assert all(r["output"] for r in recs)
        assert set(s["ci95"]) >= {"CHAIR_S", "CHAIR_I", "Recall", "F1"}
