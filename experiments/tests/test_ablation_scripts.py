"""The ablation scripts are thin entry points over the runner: their defaults, their spellings, and that the
grids they ask for run (tiny random text model, grounded proxy, a few scenes)."""

import json
import sys
from pathlib import Path

import pytest

EXP = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXP))

import layer_ablation  # noqa: E402
import scorer_ablation  # noqa: E402
import sweep  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _common(tmp_path, out):
    cfg = tmp_path / "base.yaml"
    cfg.write_text('layers: "1:-1"\n')
    return ["--model", "tiny-text", "--loader", "tiny_vlms:load_tiny_text", "--n", "2", "--max-new-tokens", "4",
            "--config", str(cfg), "--bootstrap", "20", "--no-progress", "--out", str(out)]


def _arms(out):
    return {r["arm"]: r for r in json.loads((out / "results.json").read_text())["arms"]}


def test_layer_ablation_defaults_and_grid(tmp_path):
    assert layer_ablation.DEFAULTS[:4] == ["--model", "smollm2", "--benchmark", "grounded"]
    out = tmp_path / "layers"
    argv = _common(tmp_path, out) + ["--window-size", "2", "--range-step", "2"]
    assert layer_ablation.run(argv) == 0
    arms = _arms(out)
    assert list(arms)[:3] == ["baseline", "off", "paper"]
    assert {"single-0", "single-3", "window-0-2", "prefix-2", "suffix-2"} <= set(arms)
    assert arms["single-3"]["config"]["layers"] == [3] and arms["single-3"]["kind"] == "single"
    assert (out / "layers.png").read_bytes()[:4] == b"\x89PNG"
    cmd = (out / "command.txt").read_text()
    assert "--grid layers" in cmd and "--model tiny-text" in cmd and "smollm2" not in cmd  # user options replace defaults
    before = (out / "cells" / "single-0" / "records.rank0-of1.jsonl").read_text()
    assert layer_ablation.run(argv) == 0  # rerun: resumes with nothing left to do
    assert (out / "cells" / "single-0" / "records.rank0-of1.jsonl").read_text() == before


def test_scorer_ablation_grid(tmp_path):
    out = tmp_path / "scorers"
    assert scorer_ablation.run(_common(tmp_path, out) + ["--scorers", "row_entropy,random"]) == 0
    assert list(_arms(out)) == ["baseline", "off", "row_entropy-cache", "random-cache", "row_entropy-kv_proj",
                                "random-kv_proj"]
    assert (out / "scorers.png").exists()


def test_sweep_translates_grid_axes(tmp_path):
    assert sweep.translate(["--grid", "lambda_ref=0.3,0.9", "--grid=window=5", "--grid", "layers"]) == \
        ["--axis", "lambda_ref=0.3,0.9", "--axis=window=5", "--grid", "layers"]
    out = tmp_path / "sweep"
    assert sweep.run(_common(tmp_path, out) + ["--grid", "lambda_ref=0.3,0.9", "--grid", "targets=key,key+value"]) == 0
    arms = _arms(out)
    assert len(arms) == 2 + 4
    cell = arms["lambda_ref=0.3-targets=key+value"]
    assert cell["config"]["targets"] == ["key", "value"] and cell["config"]["lambda_ref"] == 0.3
    assert (out / "frontier.png").exists()
    out1 = tmp_path / "sweep1"
    assert sweep.run(_common(tmp_path, out1) + ["--grid", "lambda_ref=0.3,0.9"]) == 0
    assert (out1 / "sweep_lambda_ref.png").exists()
