"""The method arms on the real SmolLM2-135M (marked slow): DoLa runs alone and with KVSmooth through the runner,
its contrast equals the original step over the model's own hidden states, and image methods are refused."""

import json

import pytest
import torch

from kvsmooth_hooks.methods import DoLa
from kvsmooth_hooks.methods.dola import candidate_layers, dola_logits
from kvsmooth_hooks.runner.cli import main

pytestmark = pytest.mark.slow


def test_dola_on_smollm2_equals_the_step_over_its_hidden_states(smollm2):
    model, tok = smollm2
    enc = tok(["The capital of France is"], return_tensors="pt")
    out = DoLa().generate(model, **enc, max_new_tokens=3, do_sample=False, output_logits=True,
                          return_dict_in_generate=True)
    head = model.get_output_embeddings()
    cands = candidate_layers("low", model.config.num_hidden_layers, tied_embeddings=True)
    assert cands[0] == 2  # tied head: no early exit from the embeddings (transformers' dola_layers rule)
    p = enc["input_ids"].shape[1]
    for k, got in enumerate(out.logits):
        with torch.no_grad():
            full = model(out.sequences[:, : p + k], output_hidden_states=True)
        prem = torch.stack([head(full.hidden_states[j][:, -1]).float() for j in cands])
        want, _ = dola_logits(full.logits[:, -1].float(), prem, 0.1)
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got)) and torch.allclose(got[finite], want[finite], atol=1e-3)


def test_runner_method_arms_on_smollm2(tmp_path, capsys):
    out = tmp_path / "smol"
    argv = ["--model", "smollm2", "--benchmark", "grounded", "--n", "2", "--max-new-tokens", "12", "--no-progress",
            "--bootstrap", "20", "--out", str(out)]
    assert main(argv + ["--arms", "baseline,smoothed,dola,smoothed+dola"]) == 0, capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())["arms"]
    assert [r["arm"] for r in rows] == ["baseline", "smoothed", "dola", "smoothed+dola"]
    assert rows[2]["method_settings"]["layers"] == "low"
    capsys.readouterr()
    assert main(argv[:-1] + [str(tmp_path / "v"), "--arms", "baseline,pai"]) == 2
    assert "text-only" in capsys.readouterr().err
