"""The ablation scripts' plumbing (cells, resume, tables, plots) with a stand-in metric and a tiny model."""

import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import tiny_llama

EXP = Path(__file__).resolve().parents[2] / "experiments"
sys.path.insert(0, str(EXP))

import ablation_common  # noqa: E402
import layer_ablation  # noqa: E402
import scorer_ablation  # noqa: E402
import sweep  # noqa: E402

from kvsmooth_hooks import smooth  # noqa: E402


@pytest.fixture
def fake(monkeypatch):
    """A metric that really generates with the session and reports the mean lambda as 'CHAIR_S'."""
    calls = []
    model = tiny_llama()

    def metric(model_, tok, cfg, args, cell_dir):
        calls.append(cfg)
        ids = torch.randint(3, 128, (2, 6), generator=torch.Generator().manual_seed(args.seed))
        if cfg is None:
            model_.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
            return {"CHAIR_S": 0.0, "Recall": 50.0}
        with smooth(model_, cfg) as s:
            model_.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
        lam = s.trace.tensor("lambda") if s.trace.runs and s.trace.runs[-1].n_steps else torch.zeros(1)
        return {"CHAIR_S": float(lam.mean() * 100), "Recall": 50.0, "CHAIR_I": 1.0, "Precision": 2.0, "F1": 3.0, "Len": 4.0}

    monkeypatch.setitem(ablation_common.METRICS, "fake", metric)
    monkeypatch.setattr(ablation_common, "load_model", lambda name, *a: (model, None))
    return calls


def test_layer_ablation_runs_resumes_and_plots(fake, tmp_path, capsys):
    out = tmp_path / "layers"
    argv = ["--metric", "fake", "--out", str(out), "--layers-total", "6", "--window-size", "2", "--range-step", "3"]
    assert layer_ablation.main(argv) == 0
    recs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    names = [r["cell"] for r in recs]
    assert names[:3] == ["baseline", "off", "paper"]
    assert "single-5" in names and "window-0-2" in names and "prefix-3" in names and "suffix-3" in names
    off = next(r for r in recs if r["cell"] == "off")
    assert off["CHAIR_S"] == 0.0  # lambda is 0 in the control arm
    single = next(r for r in recs if r["cell"] == "single-2")
    assert single["config"]["layers"] == [2] and single["CHAIR_S"] > 0
    n_calls = len(fake)
    assert layer_ablation.main(argv) == 0  # rerun: every cell is already there
    assert len(fake) == n_calls
    assert (out / "layer_ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert "| cell | kind | layers | CHAIR_S" in (out / "results.md").read_text()
    assert "reproduce with: python" in capsys.readouterr().out


def test_scorer_ablation_and_sweep(fake, tmp_path):
    out = tmp_path / "scorers"
    assert scorer_ablation.main(["--metric", "fake", "--out", str(out), "--config", str(_cfg(tmp_path)),
                                 "--scorers", "row_entropy,random", "--sites", "cache,kv_proj"]) == 0
    recs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert [r["cell"] for r in recs] == ["baseline", "off", "row_entropy-cache", "random-cache", "row_entropy-kv_proj", "random-kv_proj"]
    assert (out / "scorer_ablation.png").exists()
    out = tmp_path / "sweep"
    assert sweep.main(["--metric", "fake", "--out", str(out), "--config", str(_cfg(tmp_path)),
                       "--grid", "lambda_ref=0.3,0.9", "--grid", "targets=key,key+value"]) == 0
    recs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2 + 4
    cell = next(r for r in recs if r["cell"] == "lambda_ref=0.3-targets=key+value")
    assert cell["config"]["targets"] == ["key", "value"] and cell["config"]["lambda_ref"] == 0.3
    assert (out / "sweep_frontier.png").exists()


def _cfg(tmp_path):
    from kvsmooth_hooks import KVSmoothConfig

    return KVSmoothConfig(layers="1:-1").save(tmp_path / "base.yaml")
