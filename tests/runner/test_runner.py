"""The experiment runner end to end on CPU: tiny random LLaVA / Qwen2-VL / InstructBLIP / MiniGPT-4-shaped /
text models, synthetic data in each benchmark's official layout, baseline + smoothed arms, a layer grid,
refusal of mixed settings, resume, and two processes under torchrun."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import kvsmooth_hooks
from helpers import ROOT, TESTS
from runner_args import records as _records, rows as _rows, text_argv as _text_argv, vlm_argv
from tiny_vlms import record_sessions
from kvsmooth_hooks.runner.store import RecordsWarning
from kvsmooth_hooks.runner.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def sessions(monkeypatch):
    """Every session the runner opens, with its trace on."""
    return record_sessions(monkeypatch)


BENCH = {  # benchmark: (extra args, expected items)
    "chair": (["--n", "3"], 3),
    "pope": (["--set", "split=adversarial", "--n", "4"], 4),
    "amber": (["--set", "task=all"], 9),
    "objhal": ([], 4),
    "opope": (["--n", "4"], 2),
}
CASES = [(f"tiny-{fam}", b, *BENCH[b]) for b in BENCH for fam in ("llava", "qwen2_vl", "instructblip")] + \
    [("tiny-text", "grounded", ["--n", "3"], 3)]


@pytest.mark.parametrize("model,benchmark,extra,n_items", CASES, ids=[f"{c[1]}-{c[0][5:]}" for c in CASES])
def test_every_benchmark_baseline_and_smoothed(data, tmp_path, sessions, capsys, model, benchmark, extra, n_items):
    loader = "tiny_vlms:load_tiny_text" if benchmark == "grounded" else "tiny_vlms:load_tiny_vlm"
    out = tmp_path / "run"
    assert main(vlm_argv(data, out, model, benchmark, *extra, loader=loader)) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    bench = kvsmooth_hooks.benchmarks.get_benchmark(benchmark)
    assert [r["arm"] for r in res["arms"]] == ["baseline", "smoothed"]
    for row in res["arms"]:
        assert row["n"] >= 1
        shown = [m for m in bench.metrics if m in row]
        assert shown and all(isinstance(row[m], float) for m in shown), row
        assert row["ci95"], "every row carries bootstrap intervals"
        if benchmark == "amber":  # AMBER's combined score has no column-sum bootstrap: items are resampled
            lo, hi = row["ci95"]["AMBER"]
            assert lo <= hi
        recs = _records(out, row["arm"])
        assert len(recs) == n_items and all(isinstance(r["output"], str) and r["new_tokens"] == 5 for r in recs)
    assert res["arms"][1]["config"]["layers"] == "1:-1" and res["arms"][0]["config"] is None
    # the smoothed arm ran inside sessions that smoothed (lambda > 0) and removed their hooks
    assert len(sessions) == n_items
    assert all(not s.attached and float(s.trace.tensor("lambda").max()) > 0 for s in sessions)
    md = (out / "results.md").read_text()
    assert "| baseline |" in md and "[" in md
    assert (out / "command.txt").read_text().startswith("python -m kvsmooth_hooks.run --model " + model)
    assert json.loads((out / "machine.json").read_text())["torch"]


def test_layer_grid_with_intervals_and_plot(data, tmp_path):
    out = tmp_path / "grid"
    argv = vlm_argv(data, out, "tiny-llava", "pope", "--n", "4", "--grid", "layers", "--window-size", "2",
                 "--range-step", "2")
    assert main(argv) == 0
    rows = {r["arm"]: r for r in json.loads((out / "results.json").read_text())["arms"]}
    assert list(rows)[:3] == ["baseline", "off", "paper"]
    assert {"single-0", "single-3", "window-0-2", "window-2-4", "prefix-2", "suffix-2"} <= set(rows)
    assert rows["single-2"]["config"]["layers"] == [2] and rows["window-2-4"]["config"]["layers"] == "2:4"
    # lambda = 0 control arm is token-identical to the baseline
    assert [r["output"] for r in _records(out, "off")] == [r["output"] for r in _records(out, "baseline")]
    assert (out / "layers.png").read_bytes()[:4] == b"\x89PNG"
    csv_head = (out / "results.csv").read_text().splitlines()[0]
    assert "Accuracy_lo" in csv_head and "layers" in csv_head


def test_refuses_other_settings_and_resumes_item_by_item(data, tmp_path, capsys, monkeypatch):
    from kvsmooth_hooks.runner import models

    asked = []
    real = models.hf_bundle

    def counting(model, processor):
        b = real(model, processor)
        inner = b.generate

        def generate(items, gen):
            asked.extend(it.id for it in items)
            return inner(items, gen)

        b.generate = generate
        return b

    monkeypatch.setattr(models, "hf_bundle", counting)
    out = tmp_path / "run"
    argv = vlm_argv(data, out, "tiny-llava", "chair", "--n", "3")
    assert main(argv) == 0
    first = {arm: _records(out, arm) for arm in ("baseline", "smoothed")}
    assert len(asked) == 6
    # other --n into the same folder: refused, naming the setting and both values
    capsys.readouterr()
    assert main(vlm_argv(data, out, "tiny-llava", "chair", "--n", "4")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "n: 3 there, 4 now" in err and "another --out" in err
    # a changed arm config is refused too, naming the field
    other = tmp_path / "other.yaml"
    other.write_text('layers: "1:-1"\nlambda_ref: 0.5\n')
    bad = vlm_argv(data, out, "tiny-llava", "chair", "--n", "3")
    bad[bad.index("--config") + 1] = str(other)
    assert main(bad) == 2
    assert "config.lambda_ref: 0.9 there, 0.5 now" in capsys.readouterr().err
    # an interrupted run: the smoothed arm lost its last record and half a line; only that item is redone
    rank_file = out / "cells" / "smoothed" / "records.rank0-of1.jsonl"
    lines = rank_file.read_text().splitlines(keepends=True)
    rank_file.write_text("".join(lines[:2]) + lines[2][:10])
    asked.clear()
    with pytest.warns(RecordsWarning, match="records.rank0-of1.jsonl: 1 line.* line 3"):
        assert main(argv) == 0
    assert asked == [first["smoothed"][2]["id"]]
    again = _records(out, "smoothed")
    assert [(r["id"], r["output"]) for r in again] == [(r["id"], r["output"]) for r in first["smoothed"]]
    asked.clear()
    assert main(argv) == 0 and asked == []  # everything done: nothing generated


def _strip(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None and
                    shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_processes_equal_one_process(data, tmp_path):
    args = ["--model", "tiny-llava", "--loader", "tiny_vlms:load_tiny_vlm", "--benchmark", "pope", "--data",
            str(data["coco"]), "--config", str(data["cfg"]), "--items", "5", "--max-new-tokens", "4", "--grid", "layers",
            "--parts", "single", "--single-step", "2", "--bootstrap", "20", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(args + ["--out", str(one)]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "29531", "-m", "kvsmooth_hooks.run",
                           *args, "--out", str(two)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = sorted(p.name for p in (one / "cells").iterdir())
    assert arms == sorted(p.name for p in (two / "cells").iterdir()) and "single-2" in arms
    for arm in arms:
        assert sorted(p.name for p in (two / "cells" / arm).glob("records.rank*")) == \
            ["records.rank0-of2.jsonl", "records.rank1-of2.jsonl"]
        assert _strip(_records(two, arm)) == _strip(_records(one, arm)), arm
    assert (two / "command.txt").read_text().startswith("torchrun --nproc-per-node 2 -m kvsmooth_hooks.run")


def test_minigpt4_shaped_loader_smooths_the_inner_llama(data, tmp_path, sessions):
    out = tmp_path / "mg"
    assert main(vlm_argv(data, out, "minigpt4-like", "chair", "--n", "2", loader="tiny_vlms:load_minigpt4_like")) == 0
    assert len(sessions) == 2
    assert all(type(s.model).__name__ == "LlamaForCausalLM" for s in sessions)
    lam = sessions[0].trace.tensor("lambda")  # [steps, batch, layers, kv heads]
    assert lam.shape[0] >= 3 and float(lam.max()) > 0  # decode steps after an inputs_embeds prompt were smoothed
    assert json.loads((out / "results.json").read_text())["model_info"]["class"] == "MiniGPT4Like"


def _no_model(*a, **k):
    raise AssertionError("the model must not be loaded when the inputs are bad")


def test_input_errors_name_the_problem(data, tmp_path, capsys, monkeypatch):
    import tiny_vlms

    monkeypatch.setattr(tiny_vlms, "load_tiny_vlm", _no_model)
    out = tmp_path / "x"
    cases = [
        (["--benchmark", "nope"], "unknown benchmark 'nope'; available: amber, chair"),
        (["--set", "colour=red"], "benchmark 'pope' has no option colour"),
        (["--set", "split=sideways"], "split one of random, popular, adversarial"),
        (["--benchmark", "grounded", "--set", "min_objects=many"], "--set min_objects='many': expected int"),
        (["--arms", "baseline,sharp"], "--arms: 'sharp' is not baseline"),
        (["--grid-file", str(tmp_path / "none.yaml")], "--grid-file"),
    ]
    for extra, msg in cases:
        argv = vlm_argv(data, out, "tiny-llava", "pope", *extra)
        assert main(argv) == 2
        assert msg in capsys.readouterr().err, extra
    argv = vlm_argv(data, out, "tiny-llava", "chair")
    argv[argv.index("--data") + 1] = str(tmp_path / "missing")
    assert main(argv) == 2
    assert "--data" in capsys.readouterr().err
    assert main(vlm_argv(data, out, "m", "pope", loader="no_such_module:load")) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err


def test_kvsmooth_run_subcommand(data, tmp_path):
    from kvsmooth_hooks.cli import main as kvsmooth

    out = tmp_path / "cli"
    assert kvsmooth(["run", *vlm_argv(data, out, "tiny-text", "grounded", "--n", "2", "--arms", "baseline,off",
                                   loader="tiny_vlms:load_tiny_text")]) == 0
    assert _strip(_records(out, "off")) == _strip(_records(out, "baseline"))
    assert (out / "command.txt").read_text().startswith("python -m kvsmooth_hooks.run --model tiny-text")


# ---------------------------------------------------------------------- the runner's silent mistakes, refused
def test_config_arms_with_one_stem_or_a_keyword_stem_are_named_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, lam in (("a/cfg.yaml", 0.5), ("b/cfg.yaml", 0.7), ("baseline.yaml", 0.9)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f'layers: "1:-1"\nlambda_ref: {lam}\n')
    out = tmp_path / "r1"
    assert main(_text_argv(tmp_path, out, "--arms", "baseline,a/cfg.yaml,b/cfg.yaml")) == 0
    rows = _rows(out)
    assert list(rows) == ["baseline", "a-cfg", "b-cfg"]  # b/cfg.yaml is run, not dropped
    assert rows["a-cfg"]["config"]["lambda_ref"] == 0.5 and rows["b-cfg"]["config"]["lambda_ref"] == 0.7
    out = tmp_path / "r2"
    assert main(_text_argv(tmp_path, out, "--arms", "baseline,baseline.yaml")) == 0
    rows = _rows(out)
    assert list(rows) == ["baseline", "baseline.yaml"] and rows["baseline.yaml"]["config"]["lambda_ref"] == 0.9
    assert rows["baseline"]["config"] is None
    out = tmp_path / "r3"
    assert main(_text_argv(tmp_path, out, "--arms", "baseline.yaml")) == 0
    assert list(_rows(out)) == ["baseline.yaml"]  # a smoothed arm is never reported as `baseline`


def test_reserved_arm_names_are_refused(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("arms:\n  - name: ..\n    set: {lambda_ref: 0.5}\n")
    out = tmp_path / "run"
    assert main(_text_argv(tmp_path, out, "--grid-file", str(grid))) == 2
    assert "arm name '..' cannot be a folder name" in capsys.readouterr().err
    assert not (out / "cells").exists() and not (out / "records.rank0-of1.jsonl").exists()


def test_a_broken_benchmark_plugin_is_named_and_hides_no_other(monkeypatch):
    import importlib.metadata as md

    from kvsmooth_hooks.benchmarks import registry
    from kvsmooth_hooks.benchmarks.base import BenchmarkError

    eps = [md.EntryPoint("broken", "no_such_plugin_module:Bench", registry.ENTRY_POINT_GROUP),
           md.EntryPoint("working", "kvsmooth_hooks.benchmarks.pope:Pope", registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(md, "entry_points", lambda group=None: [e for e in eps if e.group == group])
    monkeypatch.setattr(registry, "BENCHMARKS", registry.BENCHMARKS.fresh_copy())  # entry points not loaded yet
    assert registry.get_benchmark("working").name == "pope"
    assert registry.get_benchmark("chair").name == "chair"
    with pytest.raises(BenchmarkError, match=r"unknown benchmark 'nope'; .*\(broken plugins: broken\)"):
        registry.get_benchmark("nope")
    with pytest.raises(BenchmarkError, match=r"--benchmark 'broken': .*no_such_plugin_module:Bench failed to load"):
        registry.get_benchmark("broken")


def test_a_last_record_without_newline_is_kept_in_one_rerun(tmp_path, monkeypatch):
    from kvsmooth_hooks.runner import models

    asked = []
    real = models.hf_bundle

    def counting(model, processor):
        b = real(model, processor)
        inner = b.generate
        b.generate = lambda items, gen: asked.extend(it.id for it in items) or inner(items, gen)
        return b

    monkeypatch.setattr(models, "hf_bundle", counting)
    out = tmp_path / "run"
    argv = _text_argv(tmp_path, out)
    assert main(argv) == 0
    before = _records(out, "smoothed")
    rank_file = out / "cells" / "smoothed" / "records.rank0-of1.jsonl"
    # a crash after the first item's line was written but before its newline: the second item is still to do
    rank_file.write_text(rank_file.read_text().splitlines()[0])
    asked.clear()
    assert main(argv) == 0 and asked == [before[1]["id"]]  # the finished record is kept, one rerun finishes
    assert _strip(_records(out, "smoothed")) == _strip(before)


def test_one_process_checks_each_cell_once(tmp_path, monkeypatch):
    """Rank 0 checks (or writes) every cell.json before the barrier; only the other ranks check after it."""
    from kvsmooth_hooks.runner.store import CellStore

    checked = []
    real = CellStore.check
    monkeypatch.setattr(CellStore, "check", lambda self, *a: checked.append(self.dir.name) or real(self, *a))
    assert main(_text_argv(tmp_path, tmp_path / "run")) == 0
    assert sorted(checked) == ["baseline", "smoothed"]


@pytest.mark.parametrize("name", ["smollm2", "SmolLM2-135M", "smollm2-135m-instruct"])
def test_every_smollm2_alias_loads_the_packaged_model(name, monkeypatch):
    """--model takes the same SmolLM2 names in the runner as in kvsmooth plan / export (one list)."""
    import kvsmooth_hooks.models as top
    from kvsmooth_hooks.runner.models import load_bundle
    from tiny_vlms import load_tiny_text

    loaded = []
    monkeypatch.setattr(top, "load_smollm2", lambda quiet=False: loaded.append(name) or load_tiny_text(name))
    bundle = load_bundle(name, device="cpu")
    assert loaded == [name] and bundle.modality == "text"


def test_two_runs_into_one_folder(tmp_path, capsys):
    from kvsmooth_hooks.runner.store import RunLock

    out = tmp_path / "run"
    with RunLock(out):  # another run holds the folder
        assert main(_text_argv(tmp_path, out)) == 2
    assert "another run (pid" in capsys.readouterr().err and not (out / "cells").exists()
    assert main(_text_argv(tmp_path, out)) == 0


@pytest.mark.parametrize("extra,msg", [
    (["--grid", "layers", "--window-size", "0"], "--window-size 0: must be between 1 and the model's 4 layers"),
    (["--grid", "layers", "--range-step", "-1"], "--range-step -1: must be between 1"),
    (["--grid", "layers", "--single-step", "0"], "--single-step 0: must be between 1"),
    (["--grid", "layers", "--parts", "single,middle"], "--parts 'single,middle': choose among"),
    (["--bootstrap", "-5"], "--bootstrap -5: must be at least 0"),
])
def test_degenerate_grids_and_counts_are_refused(tmp_path, capsys, extra, msg):
    assert main(_text_argv(tmp_path, tmp_path / "run", *extra)) == 2
    assert msg in capsys.readouterr().err


def test_grid_file_with_duplicate_keys_is_refused(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("arms:\n  - name: a\n    set: {lambda_ref: 0.5, lambda_ref: 0.9}\n")
    assert main(_text_argv(tmp_path, tmp_path / "run", "--grid-file", str(grid))) == 2
    assert "duplicate key 'lambda_ref'" in capsys.readouterr().err


def test_an_arm_that_selects_no_layer_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_text_argv(tmp_path, out, layers="3:-1")) == 2  # the paper's layers on a 4-layer model
    assert "arm 'smoothed': layers '3:-1' select none of this model's 4 layers" in capsys.readouterr().err
    assert not list(out.glob("cells/*/records*"))


def test_eval_refuses_a_negative_bootstrap(tmp_path, capsys):
    from kvsmooth_hooks.cli import main as kvsmooth

    gt = tmp_path / "gt.json"
    gt.write_text('{"1": ["dog"]}')
    caps = tmp_path / "c.jsonl"
    caps.write_text('{"image_id": 1, "caption": "A dog."}\n')
    assert kvsmooth(["eval", "chair", str(caps), "--gt-objects", str(gt), "--bootstrap", "-5"]) == 2
    assert "--bootstrap -5: must be at least 0" in capsys.readouterr().err
