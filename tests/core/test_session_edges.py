"""Smaller edges of the session core (issue 22): plan files that contradict themselves, long-lived traces, empty
prompts. Every test here failed on 92b7202."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig, PlanError, SessionError, SmoothingPlan, resolve, smooth

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = dict(layers="1:-1")


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=4)


def _rewritten(tmp_path, plan, meta=None, **tensors):
    """``plan`` saved, then its tensors / metadata replaced by hand."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = plan.save(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as fh:
        old = dict(fh.metadata())
    data = load_file(str(good))
    data.update(tensors)
    path = tmp_path / "edited.safetensors"
    save_file(data, str(path), metadata={**old, **(meta or {})})
    return path


def test_a_plan_whose_config_contradicts_its_tensors_is_refused(model, tmp_path):
    plan = resolve(KVSmoothConfig(lambda_ref=0.9, **CFG), model)
    lam = plan.lambda_ref.clone()
    lam[2, 1] = 0.3
    other = KVSmoothConfig(lambda_ref=0.5, **CFG).to_json()
    cases = [({"lambda_ref": lam}, None, r"tensor 'lambda_ref'\[2, 1\] is 0.3 but its embedded config gives 0.9"),
             ({}, {"config": other}, r"tensor 'lambda_ref'\[0, 0\] is 0.9 but its embedded config gives 0.5"),
             ({"enabled": torch.ones_like(plan.enabled, dtype=torch.uint8)}, None,
              r"tensor 'enabled'\[0, 0\] is 1 but its embedded config gives 0"),
             ({}, {"policy": json.dumps(["linear"] * 4)}, r"metadata 'policy'\[0\] is 'linear' but its embedded config "
                                                           "gives 'fifo_rank'")]
    for tensors, meta, match in cases:
        with pytest.raises(PlanError, match=match) as info:
            SmoothingPlan.load(_rewritten(tmp_path, plan, meta, **tensors))
        assert "edited.safetensors" in str(info.value) and "export" in str(info.value)
    assert SmoothingPlan.load(plan.save(tmp_path / "same.safetensors")) == plan  # an unedited plan still loads


def test_a_plan_of_a_model_with_unsmoothable_layers_still_loads(tmp_path):
    """Hybrid models' plans skip the layers without a KV cache of their own: not a contradiction."""
    from kvsmooth_hooks.tiny_configs import build

    plan = resolve(KVSmoothConfig(layers="all"), build("JambaForCausalLM"))  # layer 0 is a Mamba mixer
    assert not bool(plan.enabled[0].any()) and bool(plan.enabled[1].all())
    assert SmoothingPlan.load(plan.save(tmp_path / "p.safetensors")) == plan


def test_a_fractional_window_in_a_plan_is_refused(model, tmp_path):
    plan = resolve(KVSmoothConfig(window=3, **CFG), model)
    window = plan.window.to(torch.float32)
    window[1, 0] = 2.7
    with pytest.raises(PlanError, match=r"tensor 'window'\[1, 0\]: 2.7 is not a whole number"):
        SmoothingPlan.load(_rewritten(tmp_path, plan, window=window))


def test_the_default_trace_is_bounded_and_says_so(model):
    ids = torch.randint(3, 128, (1, 4), generator=torch.Generator().manual_seed(0))
    with smooth(model, KVSmoothConfig(**CFG)) as s:
        assert s.trace.max_runs == 100
        s.trace.max_runs = 3  # the default bound, reached sooner
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    assert len(s.trace) == 3
    dropped = [w for w in caught if "keeps the latest 3 runs" in str(w.message)]
    assert len(dropped) == 1 and "trace_runs" in str(dropped[0].message)
    with smooth(model, KVSmoothConfig(**CFG), trace_runs=None) as s:  # keep every run, as asked
        assert s.trace.max_runs is None


def test_an_empty_prompt_is_a_clear_error(model):
    with smooth(model, KVSmoothConfig(**CFG)):
        with pytest.raises(SessionError, match="the prompt is empty"):
            model.generate(input_ids=torch.empty(1, 0, dtype=torch.long), max_new_tokens=3)
