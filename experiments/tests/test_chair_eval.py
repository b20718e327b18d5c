"""experiments/chair_eval.py (a thin entry point over the runner's chair benchmark) end to end on CPU: a tiny
random LLaVA with its processor, synthetic COCO val2014 images and COCO 2014 annotation files."""

import json
import random
import sys
from pathlib import Path

import pytest

from benchmark_data import IMAGE_IDS, write_coco

EXP = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXP))

import chair_eval  # noqa: E402

from kvsmooth_hooks.runner.models import format_vlm_prompt  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def coco(tmp_path):
    return write_coco(tmp_path)


def _argv(coco, out, *extra):
    return ["--model", "tiny-llava", "--loader", "tiny_vlms:load_tiny_vlm", "--coco-images", str(coco / "val2014"),
            "--coco-annotations", str(coco / "annotations"), "--n", "2", "--seed", "1", "--max-new-tokens", "5",
            "--bootstrap", "30", "--no-progress", "--out", str(out), *extra]


def test_chair_eval_runs_the_paper_protocol(coco, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text('layers: "1:-1"\nlambda_ref: 0.9\n')
    out = tmp_path / "run"
    assert chair_eval.run(_argv(coco, out, "--config", str(cfg))) == 0
    printed = capsys.readouterr().out
    assert "| baseline |" in printed and "reproduce with: python -m kvsmooth_hooks.run" in printed
    settings = json.loads((out / "run.json").read_text())
    assert settings["benchmark"] == "chair" and settings["options"]["prompt"] == "Please help me describe the image in detail."
    assert settings["max_new_tokens"] == 512 and settings["generation"]["max_new_tokens"] == 5  # benchmark default, override
    chosen = random.Random(1).sample(sorted(IMAGE_IDS), 2)  # the seeded draw from sorted ids
    for arm in ("baseline", "smoothed"):
        recs = [json.loads(l) for l in (out / "cells" / arm / "records.jsonl").read_text().splitlines()]
        assert [r["image_id"] for r in recs] == chosen
    res = json.loads((out / "results.json").read_text())
    assert res["model_info"]["prompt_format"] == "chat template"
    for row in res["arms"]:
        assert {"CHAIR_S", "CHAIR_I", "Recall", "F1", "Len"} <= set(row) and row["seconds_per_item"] > 0


def test_chair_eval_defaults_to_the_llava_preset_and_500_images(coco):
    argv = chair_eval.translate(["--coco-images", str(coco / "val2014"), "--gt-objects", "gt.json"])
    assert argv[argv.index("--preset") + 1] == "llava-1.5" and argv[argv.index("--n") + 1] == "500"
    assert argv[argv.index("--model") + 1] == "llava-hf/llava-1.5-7b-hf"
    assert any(a.startswith("gt=") for a in argv)


def test_chair_eval_input_errors(coco, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _argv(coco, out)
    argv[argv.index("--coco-images") + 1] = str(tmp_path / "nope")
    assert chair_eval.run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "image folder" in err and "nope" in err
    (coco / "annotations" / "captions_train2014.json").unlink()
    assert chair_eval.run(_argv(coco, tmp_path / "run2")) == 2
    err = capsys.readouterr().err
    assert "missing COCO 2014 annotation file" in err and "captions_train2014.json" in err
    with pytest.raises(SystemExit, match="--coco-annotations DIR or --gt-objects"):
        chair_eval.translate(["--coco-images", "x"])


def test_prompt_formats():
    class NoTemplate:
        chat_template = None

    class InstructBlipProcessor:
        chat_template = None

    assert format_vlm_prompt(NoTemplate(), "Hi.") == "USER: <image>\nHi. ASSISTANT:"
    assert format_vlm_prompt(InstructBlipProcessor(), "Hi.") == "Hi."


def test_chair_cost_script_smoke(tmp_path, capsys):
    """experiments/chair_cost.py (the GPU cost measurement) on its tiny shape: the 7B path differs only in sizes."""
    import chair_cost

    assert chair_cost.run(["--shape", "tiny", "--n", "1", "--max-new-tokens", "3", "--out", str(tmp_path / "c"),
                           "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "s/caption   500 images:" in out and "llava-1.5" in out
    rec = json.loads((tmp_path / "c" / "run" / "cells" / "llava-1.5" / "records.jsonl").read_text())
    assert rec["new_tokens"] == 3


def test_help_shows_this_scripts_options_then_the_runners(capsys):
    # --help needs no --coco-images: it prints the script's own spelling, then the runner's options, and exits 0
    with pytest.raises(SystemExit) as exc:
        chair_eval.run(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--coco-images DIR" in out and "--benchmark" in out
