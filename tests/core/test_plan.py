"""Config resolution against models, per-head control, plan/trace export, and the CLI."""

import csv
import json

import pytest
import torch

from helpers import tiny_llama
from kvsmooth_hooks import ConfigError, KVSmoothConfig, PlanError, SmoothingPlan, Trace, resolve, smooth
from kvsmooth_hooks.cli import main as cli


@pytest.fixture(scope="module")
def model():
    return tiny_llama()  # 6 layers, 4 query heads, 2 KV heads


def gen(model, n=16, **kw):
    torch.manual_seed(5)
    ids = torch.randint(3, 128, (2, 8))
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                          return_dict_in_generate=True, **kw)


def test_resolution_defaults_and_slices(model):
    plan = resolve(KVSmoothConfig(), model)
    assert plan.enabled.shape == (6, 2)
    assert plan.active_layers() == [3, 4]  # 3..L-2
    assert resolve(KVSmoothConfig(layers="all"), model).active_layers() == list(range(6))
    assert resolve(KVSmoothConfig(layers="::2"), model).active_layers() == [0, 2, 4]
    assert resolve(KVSmoothConfig(layers=[0, -1]), model).active_layers() == [0, 5]


def test_overrides_apply_in_order_later_wins(model):
    cfg = KVSmoothConfig(layers="all", overrides=[
        {"layers": [1, 2], "lambda_ref": 0.5, "targets": ["value"]},
        {"layers": [2], "lambda_ref": 0.3},
        {"layers": [2], "heads": [1], "enabled": False},
        {"layers": [0], "enabled": False},
    ])
    plan = resolve(cfg, model)
    assert plan.lambda_ref[1].tolist() == [0.5, 0.5]
    assert plan.lambda_ref[2].tolist() == pytest.approx([0.3, 0.3])
    assert plan.key[1].tolist() == [False, False] and plan.value[1].tolist() == [True, True]
    assert plan.enabled[2].tolist() == [True, False]
    assert not plan.enabled[0].any()
    assert plan.lambda_ref[3].tolist() == pytest.approx([0.9, 0.9])


def test_out_of_range_indices_say_the_model_sizes(model):
    with pytest.raises(PlanError, match="layer 40 is out of range for this model's 6 layers"):
        resolve(KVSmoothConfig(layers=[40]), model)
    with pytest.raises(PlanError, match=r"overrides\[0\].heads: KV head 5 is out of range; this model has 2 KV heads"):
        resolve(KVSmoothConfig(overrides=[{"layers": [1], "heads": [5]}]), model)
    with pytest.raises(PlanError, match="cannot vary between the KV heads of a layer"):
        resolve(KVSmoothConfig(overrides=[{"layers": [1], "heads": [0], "window": 4}]), model)
    with pytest.raises(ConfigError, match="scorer 'random' has no parameter 'sed'"):  # now at config time
        KVSmoothConfig.from_dict({"scorer": {"name": "random", "sed": 1}})


def test_disabled_kv_head_is_bit_identical_to_unhooked_while_others_change(model):
    base = gen(model)
    cfg = KVSmoothConfig(layers="1:-1", overrides=[{"layers": "all", "heads": [1], "enabled": False}])
    with smooth(model, cfg):
        out = gen(model, n=2)  # one decode step: both runs share the same tokens so far
    ref = gen(model, n=2)
    for l in range(1, 5):
        for name in ("keys", "values"):
            a, b = getattr(out.past_key_values.layers[l], name), getattr(ref.past_key_values.layers[l], name)
            assert torch.equal(a[:, 1], b[:, 1]), (l, name)  # KV head 1: untouched, bit for bit
            assert not torch.equal(a[:, 0, -1], b[:, 0, -1]), (l, name)  # KV head 0: smoothed
    assert base.sequences.shape[1] == 24


def test_preset_off_equals_unhooked(model):
    base = gen(model)
    with smooth(model, KVSmoothConfig.preset("off", layers="all")):
        out = gen(model)
    assert torch.equal(base.sequences, out.sequences)


def test_targets_value_only_leaves_keys_untouched(model):
    with smooth(model, KVSmoothConfig(layers="1:-1", targets=["value"])):
        out = gen(model, n=2)
    ref = gen(model, n=2)
    assert torch.equal(out.past_key_values.layers[2].keys, ref.past_key_values.layers[2].keys)
    assert not torch.equal(out.past_key_values.layers[2].values, ref.past_key_values.layers[2].values)


def test_plan_safetensors_round_trip_and_shape_check(model, tmp_path):
    cfg = KVSmoothConfig(granularity="head", overrides=[{"layers": [2], "heads": [0], "lambda_ref": 0.4}])
    plan = resolve(cfg, model)
    path = plan.save(tmp_path / "plan.safetensors")
    back = SmoothingPlan.load(path, model=model)
    assert back == plan
    assert back.lambda_ref[2, 0].item() == pytest.approx(0.4)
    other = tiny_llama(layers=4)
    with pytest.raises(PlanError, match="this plan was made for LlamaForCausalLM with .*'n_layers': 6.*has .*'n_layers': 4"):
        SmoothingPlan.load(path, model=other)
    with smooth(model, back) as s:  # a session runs from an imported plan
        gen(model, n=4)
    assert s.plan is back


def test_trace_export_regenerates_from_file_alone(model, tmp_path):
    cfg = KVSmoothConfig(layers="1:-1", granularity="head")
    with smooth(model, cfg, record_deltas=True) as s:
        gen(model, n=6)
    path = s.trace.save(tmp_path / "run.safetensors")
    back = Trace.load(path)
    assert back.config == cfg
    assert back.layers == [1, 2, 3, 4]
    for name in ("score", "rank", "lambda", "dk", "dv"):
        assert torch.equal(back.tensor(name), s.trace.tensor(name)), name
    assert back.tensor("lambda").shape == (5, 2, 4, 2)
    assert back.tensor("dk").abs().sum() > 0
    rows = list(csv.DictReader(open(s.trace.to_csv(tmp_path / "run.csv"))))
    assert len(rows) == 5 * 2 * 4 * 2
    assert set(rows[0]) == {"run", "sequence", "step", "layer", "head", "score", "rank", "lambda", "dk", "dv"}


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model):
    d = tmp_path_factory.mktemp("tiny")
    model.config.save_pretrained(d)
    return d


def test_cli_config_commands(tmp_path, capsys):
    out = tmp_path / "c.yaml"
    assert cli(["config", "init", "--preset", "minigpt-4", "-o", str(out)]) == 0
    assert KVSmoothConfig.from_file(out).lambda_ref == 0.5
    assert cli(["config", "validate", str(out)]) == 0
    assert cli(["config", "show", str(out)]) == 0
    assert "lambda_ref: 0.5" in capsys.readouterr().out
    assert cli(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"].startswith("KVSmoothConfig")
    bad = tmp_path / "bad.json"
    bad.write_text('{"window": 0}')
    assert cli(["config", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "window" in err.splitlines()[0]


def test_cli_plan_and_export(tmp_path, model_dir, model, capsys):
    cfg = tmp_path / "c.yaml"
    KVSmoothConfig(layers="all", overrides=[{"layers": [0], "heads": [1], "enabled": False}]).save(cfg)
    assert cli(["plan", str(cfg), "--model", str(model_dir)]) == 0
    table = capsys.readouterr().out
    assert "6 layers x 2 KV heads" in table and "    0 | KV0.90  .     " in table
    out = tmp_path / "plan.safetensors"
    assert cli(["export", "--preset", "llava-1.5", "--model", str(model_dir), "-o", str(out)]) == 0
    assert SmoothingPlan.load(out, model=model).active_layers() == [3, 4]
    KVSmoothConfig(layers=[9]).save(cfg)
    assert cli(["plan", str(cfg), "--model", str(model_dir)]) == 2
    assert "layer 9 is out of range for this model's 6 layers" in capsys.readouterr().err
    assert cli(["plan", str(cfg), "--model", str(tmp_path / "nope")]) == 2
