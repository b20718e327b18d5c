"""The runner with the paper's protocol pieces (issue 23): templates recorded and applied, --protocol, the
protocol record, frontier / length / per-cell trace figures, and records at every batch size equal batch 1."""

import json

import pytest

from kvsmooth_hooks.runner.cli import main
from runner_args import records, vlm_argv

pytestmark = pytest.mark.usefixtures("one_thread")


def test_template_is_applied_and_recorded(data, tmp_path, monkeypatch):
    import kvsmooth_hooks.templates as templates

    seen = []
    real = templates.format_prompt
    monkeypatch.setattr(templates, "format_prompt", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    out = tmp_path / "run"
    assert main(vlm_argv(data, out, "tiny-llava", "chair", "--n", "2", "--set", "template=opera-llava-1.5-bare")) == 0
    run = json.loads((out / "run.json").read_text())
    assert "opera-llava-1.5-bare" in json.dumps(run)  # the template is part of the run's key
    assert seen and all(t.startswith("USER: <image> ") and t.endswith(" ASSISTANT:") for t in seen)
    res = json.loads((out / "results.json").read_text())
    rec = res["protocol_record"]
    assert rec["template"]["text"] == "USER: {image} {question} ASSISTANT:" and rec["n_items"] == 2
    assert rec["decoding"]["max_new_tokens"] == 5 and rec["decoding"]["batch_size_used"] == 1
    assert rec["metric_rule"].startswith("CHAIR") and rec["versions"]["torch"]
    assert {"frontier.png", "frontier_recall.png", "chair_vs_length.png"} <= set(res["plots"])
    assert (out / "frontier.png").stat().st_size > 5000


def test_chair_run_merges_each_arm_once(data, tmp_path, monkeypatch):
    """The length figure draws the records the tables were made of: every arm's records are merged (read back from
    the rank files and written to records.jsonl) once."""
    from kvsmooth_hooks.runner.store import CellStore

    merged = []
    real = CellStore.merge
    monkeypatch.setattr(CellStore, "merge", lambda self, ids: merged.append(self.dir.name) or real(self, ids))
    out = tmp_path / "run"
    assert main(vlm_argv(data, out, "tiny-llava", "chair", "--n", "2", "--bootstrap", "0")) == 0
    assert sorted(merged) == ["baseline", "smoothed"]
    assert "chair_vs_length.png" in json.loads((out / "results.json").read_text())["plots"]


def test_metric_rule_is_the_benchmarks_own():
    """A benchmark declares its metric rule (chair: the CHAIR rule); the name "chair" alone means nothing."""
    from kvsmooth_hooks.benchmarks import get_benchmark
    from kvsmooth_hooks.benchmarks.base import Benchmark
    from kvsmooth_hooks.protocols import CHAIR_RULE
    from kvsmooth_hooks.runner.paper import metric_rule

    assert get_benchmark("chair").metric_rule == CHAIR_RULE

    class Named(Benchmark):
        """Captions scored my way.

        More text."""

        name, modality = "chair", "text"

    class Ruled(Named):
        name, metric_rule = "mine", "CHAIR as in my paper"

    assert metric_rule(Named(None)) == "Captions scored my way."
    assert metric_rule(Ruled(None)) == "CHAIR as in my paper"


def test_protocol_kvsmooth_chair(data, tmp_path):
    out = tmp_path / "run"
    assert main(vlm_argv(data, out, "tiny-llava", None, "--protocol", "kvsmooth-chair", "--set", "family=llava-1.5",
                     "--n", "2", "--arms", "baseline,smoothed")) == 0
    res = json.loads((out / "results.json").read_text())
    s = res["settings"]
    assert s["benchmark"] == "chair" and s["protocol"] == "kvsmooth-chair" and s["template"]["name"] == "opera-llava-1.5"
    assert res["protocol_record"]["question"] == "Please describe this image in detail."
    assert res["protocol_record"]["protocol"] == "kvsmooth-chair"


def test_protocol_and_template_mistakes_exit_2(data, tmp_path, capsys):
    assert main(vlm_argv(data, tmp_path / "a", "tiny-qwen2_vl", None, "--protocol", "kvsmooth-chair")) == 2
    assert "--set family=" in capsys.readouterr().err
    assert main(vlm_argv(data, tmp_path / "a2", "tiny-llava", None, "--protocol", "kvsmooth-chair")) == 2  # 4 layers
    assert "layers '3:-1' select none" in capsys.readouterr().err
    assert main(vlm_argv(data, tmp_path / "b", "tiny-llava", "chair", "--template", "llava")) == 2
    assert "unknown template 'llava'" in capsys.readouterr().err
    assert main(vlm_argv(data, tmp_path / "c", "minigpt4", "chair", "--n", "1", "--template", "opera-minigpt4",
                     loader="tiny_vlms:load_minigpt4_like")) == 2
    assert "accepts_template=True" in capsys.readouterr().err
    assert main(vlm_argv(data, tmp_path / "d", "tiny-llava", None)) == 2
    assert "--benchmark is required" in capsys.readouterr().err


def test_protocol_family_without_a_preset_asks_for_arms(data, tmp_path, capsys):
    """Shikra has the protocol's template but no preset: without --arms the run stops at once, naming the family
    and the fix (it used to fail later with "--arms: 'None' is not ..."); with --arms it runs."""
    assert main(vlm_argv(data, tmp_path / "a", "tiny-llava", None, "--protocol", "kvsmooth-chair", "--set", "family=shikra",
                     "--n", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "family 'shikra'" in err[0] and "give --arms" in err[0] and "None" not in err[0]
    out = tmp_path / "b"
    assert main(vlm_argv(data, out, "tiny-llava", None, "--protocol", "kvsmooth-chair", "--set", "family=shikra",
                     "--n", "1", "--arms", "baseline,smoothed", "--bootstrap", "0")) == 0
    assert json.loads((out / "run.json").read_text())["template"]["name"] == "opera-shikra"


def test_trace_writes_per_cell_heatmaps(data, tmp_path):
    out = tmp_path / "run"
    assert main(vlm_argv(data, out, "tiny-llava", "pope", "--n", "2", "--trace")) == 0
    cell = out / "cells" / "smoothed"
    assert (cell / "trace.safetensors").exists() and (cell / "trace_lambda.png").exists()
    assert (cell / "trace_score.png").exists() and not (out / "cells" / "baseline" / "trace.safetensors").exists()


CASES = [("tiny-llava", "chair", ["--n", "3"]), ("tiny-qwen2_vl", "pope", ["--set", "split=adversarial", "--n", "4"]),
         ("tiny-instructblip", "amber", ["--set", "task=all"]), ("tiny-llava", "objhal", []),
         ("tiny-llava", "opope", ["--n", "4"]), ("tiny-text", "grounded", ["--n", "5"])]


@pytest.mark.parametrize("model,benchmark,extra", CASES, ids=[c[1] for c in CASES])
def test_records_at_every_batch_size_equal_batch_1(data, tmp_path, model, benchmark, extra):
    loader = "tiny_vlms:load_tiny_text" if benchmark == "grounded" else "tiny_vlms:load_tiny_vlm"
    outs = {}
    for bs in ("1", "4", "auto"):
        out = tmp_path / f"b{bs}"
        assert main(vlm_argv(data, out, model, benchmark, *extra, "--batch-size", bs, "--bootstrap", "0",
                         loader=loader)) == 0
        outs[bs] = {arm: [(r["id"], r["output"], r["new_tokens"]) for r in records(out, arm)]
                    for arm in ("baseline", "smoothed")}
    assert outs["4"] == outs["1"] and outs["auto"] == outs["1"]
