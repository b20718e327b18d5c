"""Inference-time methods as runner arms: ``--arms baseline,smoothed,vcd,pai,dola,...`` on the tiny LLaVA, Qwen2-VL
and InstructBLIP with synthetic CHAIR data, method parameters recorded and swept, composition with KVSmooth,
text models where a method applies, clear refusals."""

import json

import pytest

from tiny_vlms import load_tiny_vlm
from kvsmooth_hooks.benchmarks import get_benchmark
from kvsmooth_hooks.methods import VCD
from kvsmooth_hooks.runner.cli import main
from kvsmooth_hooks.runner.models import hf_bundle

pytestmark = pytest.mark.usefixtures("one_thread")
ML = ["--method-set", "middle-layer.start_layer=1", "--method-set", "middle-layer.end_layer=3"]  # 4-layer models



def _argv(data, out, model, *extra, benchmark="chair", loader="tiny_vlms:load_tiny_vlm"):
    d = ["--data", str(data["coco"])] if benchmark == "chair" else []
    return ["--model", model, "--loader", loader, "--benchmark", benchmark, *d, "--config", str(data["cfg"]),
            "--max-new-tokens", "5", "--bootstrap", "20", "--no-progress", "--out", str(out), "--n", "2", *extra]


def _rows(out):
    return {r["arm"]: r for r in json.loads((out / "results.json").read_text())["arms"]}


def _outputs(out, arm):
    return [json.loads(line)["output"] for line in (out / "cells" / arm / "records.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "instructblip"])
def test_method_arms_on_every_tiny_vlm(data, tmp_path, capsys, family):
    out = tmp_path / "run"
    arms = "baseline,smoothed,vcd,pai,dola,middle-layer,smoothed+vcd,smoothed+dola"
    assert main(_argv(data, out, f"tiny-{family}", "--arms", arms, *ML)) == 0, capsys.readouterr().err
    rows = _rows(out)
    assert list(rows) == ["baseline", "smoothed", "vcd", "pai", "dola", "middle-layer-start_layer=1-end_layer=3",
                          "smoothed+vcd", "smoothed+dola"]
    for name, row in rows.items():
        assert row["n"] == 2 and isinstance(row["CHAIR_S"], float) and "F1" in row and row["ci95"]
        assert len(_outputs(out, name)) == 2
    assert rows["vcd"]["method_settings"] == {"method": "vcd", "alpha": 1.0, "beta": 0.1, "noise_step": 500, "seed": 0,
                                              "source": VCD.source}
    assert rows["vcd"]["config"] is None and rows["baseline"]["method_settings"] is None
    assert rows["smoothed+vcd"]["config"]["layers"] == "1:-1" and rows["smoothed+vcd"]["method_settings"]["method"] == "vcd"
    cell = json.loads((out / "cells" / "smoothed+dola" / "cell.json").read_text())
    assert cell["config"]["method"]["method"] == "dola" and cell["config"]["kvsmooth"]["lambda_ref"] == 0.9
    assert "| vcd | method | vcd |" in (out / "results.md").read_text()
    # resumed: the same command regenerates nothing
    before = {a: _outputs(out, a) for a in rows}
    assert main(_argv(data, out, f"tiny-{family}", "--arms", arms, *ML)) == 0
    assert {a: _outputs(out, a) for a in rows} == before


def test_the_vcd_arm_answers_what_the_method_answers_directly(data, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(data, out, "tiny-llava", "--arms", "baseline,vcd")) == 0
    bundle = hf_bundle(*load_tiny_vlm("tiny-llava"))
    items = get_benchmark("chair")(data["coco"]).items(2, 0)
    with VCD().around_generate(bundle.model):
        direct = [t for t, _ in bundle.generate(items, {"max_new_tokens": 5, "do_sample": False})]
    assert _outputs(out, "vcd") == direct
    assert _outputs(out, "vcd") != _outputs(out, "baseline")  # the contrast changes these answers


def test_method_parameters_in_a_sweep(data, tmp_path):
    out = tmp_path / "sweep"
    assert main(_argv(data, out, "tiny-llava", "--arms", "baseline", "--grid", "sweep",
                      "--axis", "vcd.alpha=0.5,1.0", "--axis", "vcd.noise_step=500,999")) == 0
    rows = _rows(out)
    assert set(rows) == {"baseline", "vcd.alpha=0.5-vcd.noise_step=500", "vcd.alpha=0.5-vcd.noise_step=999",
                         "vcd.alpha=1.0-vcd.noise_step=500", "vcd.alpha=1.0-vcd.noise_step=999"}
    r = rows["vcd.alpha=0.5-vcd.noise_step=999"]
    assert (r["method_settings"]["alpha"], r["method_settings"]["noise_step"], r["config"]) == (0.5, 999, None)
    out2 = tmp_path / "mixed"
    assert main(_argv(data, out2, "tiny-llava", "--arms", "baseline", "--grid", "sweep", "--axis", "lambda_ref=0.5,0.9",
                      "--axis", "dola.relative_top=0.1")) == 0
    r = _rows(out2)["lambda_ref=0.9-dola.relative_top=0.1"]
    assert r["config"]["lambda_ref"] == 0.9 and r["method_settings"]["method"] == "dola"


def test_text_model_runs_the_methods_that_apply(data, tmp_path, capsys):
    out = tmp_path / "text"
    argv = _argv(data, out, "tiny-text", "--arms", "baseline,smoothed,dola,smoothed+dola", benchmark="grounded",
                 loader="tiny_vlms:load_tiny_text")
    assert main(argv) == 0, capsys.readouterr().err
    assert list(_rows(out)) == ["baseline", "smoothed", "dola", "smoothed+dola"]
    capsys.readouterr()
    bad = _argv(data, tmp_path / "text-vcd", "tiny-text", "--arms", "baseline,vcd", benchmark="grounded",
                loader="tiny_vlms:load_tiny_text")
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: vcd:") and "text-only" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("arms,extra,msg", [
    ("baseline,smoothed+pai", [], "cannot run inside a KVSmooth session"),
    ("baseline,baseline+vcd", [], "baseline is the unsmoothed baseline, nothing to combine"),
    ("baseline,vcdd", [], "or a method (dola, middle-layer, pai, vcd"),
    ("baseline,vcd", ["--method-set", "vcd.gamma=1"], "has no parameter gamma"),
    ("baseline,vcd", ["--method-set", "alpha=1"], "METHOD.PARAM=VALUE"),
    ("baseline,middle-layer", [], "layers 5..18"),
])
def test_method_arm_mistakes_are_named(data, tmp_path, capsys, arms, extra, msg):
    assert main(_argv(data, tmp_path / "bad", "tiny-llava", "--arms", arms, *extra)) == 2
    assert msg in capsys.readouterr().err


def test_the_paper_frontier_shows_every_arm(data, tmp_path):
    out = tmp_path / "frontier"
    assert main(_argv(data, out, "tiny-llava", "--arms", "baseline,smoothed,vcd,pai,dola,smoothed+vcd")) == 0
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "frontier.png" in json.loads((out / "results.json").read_text())["plots"]
