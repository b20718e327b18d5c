"""Misuse found by an adversarial pass (issue 10, items 1-10): each gets the right result or a clear error.

Every test here failed on 619ede0 (the release before the session core was rebuilt)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers as T
from transformers import DynamicCache

from helpers import tiny_llama
from kvsmooth_hooks import (ConfigError, KVSmoothConfig, PlanError, SessionError, SmoothingPlan, Trace,
                            UnsupportedModelError, attach, resolve, smooth)

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = dict(layers="1:-1")


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def _prompt(batch=1, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (batch, n), generator=g)
    return ids, torch.ones_like(ids)


def gen(model, ids, mask, n=8, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, **kw)


# 1 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [{"prompt_lookup_num_tokens": 4}, "assistant"])
def test_assisted_and_prompt_lookup_decoding_are_refused(model, mode):
    kw = {"assistant_model": tiny_llama(layers=2, seed=3)} if mode == "assistant" else mode
    name = "assisted decoding" if mode == "assistant" else "prompt-lookup decoding"
    ids, mask = _prompt()
    with smooth(model, KVSmoothConfig(**CFG)):
        with pytest.raises(SessionError, match=name):
            gen(model, ids, mask, **kw)
        gen(model, ids, mask, n=3)  # the session still works after the refusal


# 2 -------------------------------------------------------------------------------------------------
def _manual_greedy(model, ids, n, cache=None):
    out = model(input_ids=ids, use_cache=True, cache=cache)
    toks = []
    for _ in range(n):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(nxt)
        out = model(input_ids=nxt, cache=out.past_key_values, use_cache=True)
    return torch.cat(toks, 1)


@pytest.mark.parametrize("scorer", ["row_entropy", "key_similarity"])
def test_manual_decode_loop_equals_smoothed_generate(model, scorer):
    ids, mask = _prompt()
    cfg = KVSmoothConfig(scorer=scorer, **CFG)
    with smooth(model, cfg):
        ref = gen(model, ids, mask, n=10)[:, ids.shape[1]:]
    plain = _manual_greedy(model, ids, 10)
    with smooth(model, cfg) as s, torch.no_grad():
        manual = _manual_greedy(model, ids, 10)  # the model makes its own cache in the first forward
    assert torch.equal(manual, ref) and not torch.equal(manual, plain)
    assert s.trace.tensor("lambda").shape[0] == 10


def test_manual_loop_at_kv_proj_smooths_from_the_second_step_it_sees(model):
    ids, _ = _prompt()
    plain = _manual_greedy(model, ids, 12)
    with smooth(model, KVSmoothConfig(site="kv_proj", **CFG)), torch.no_grad():
        manual = _manual_greedy(model, ids, 12)
    assert not torch.equal(manual, plain)


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_generate_continues_a_cache_made_before_the_session(model, site):
    ids, mask = _prompt(n=7)
    with smooth(model, KVSmoothConfig(site=site, **CFG)):
        ref = gen(model, ids, mask, n=8)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
    with smooth(model, KVSmoothConfig(site=site, **CFG)) as s:
        out = gen(model, ids, mask, n=8, cache=cache)
    assert torch.equal(out, ref)  # the prompt's last token is prompt, not a smoothed decode step
    assert len(s.trace) == 1 and s.trace.tensor("lambda").shape[0] == 7


# 3 -------------------------------------------------------------------------------------------------
def _tampered(tmp_path, plan, meta=None, **tensors):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    good = plan.save(tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as fh:
        old = dict(fh.metadata())
    data = load_file(str(good))
    data.update(tensors)
    path = tmp_path / "bad.safetensors"
    save_file(data, str(path), metadata={**old, **(meta or {})})
    return path


def test_plan_files_are_validated_on_load(model, tmp_path):
    plan = resolve(KVSmoothConfig(**CFG), model)
    nan = plan.lambda_ref.clone()
    nan[2, 1] = float("nan")
    cases = [
        ({"lambda_ref": nan}, None, r"lambda_ref'\[2, 1\].*outside"),
        ({"lambda_ref": torch.full_like(plan.lambda_ref, 7.5)}, None, "lambda_ref.*7.5 is outside"),
        ({"window": torch.zeros_like(plan.window)}, None, "window.*0 is outside"),
        ({}, {"policy": json.dumps(["yolo"] * 6)}, r"policy'\[0\]: 'yolo' is not one of"),
        ({}, {"config": "{not json"}, "metadata 'config': not valid JSON"),
        ({}, {"policy": json.dumps(["linear"])}, "policy': must be a list of 6 entries"),
        ({}, {"scorer": json.dumps([{"name": "column_mass", "lag": -5}] * 6)}, "parameter 'lag'"),
        ({"window": torch.ones(3, 2, dtype=torch.int64)}, None, "tensor 'window': shape"),
    ]
    for tensors, meta, match in cases:
        path = _tampered(tmp_path, plan, meta, **tensors)
        with pytest.raises(PlanError, match=match) as info:
            SmoothingPlan.load(path)
        assert "bad.safetensors" in str(info.value)


def test_trace_records_the_plan_that_ran(model):
    plan = resolve(KVSmoothConfig(**CFG), model)
    plan.lambda_ref[2] = 0.3  # an edited plan: its config no longer says what runs
    with smooth(model, plan) as s:
        gen(model, *_prompt(), n=2)
    assert s.trace.notes["plan"]["lambda_ref"][1] == pytest.approx([0.3, 0.3])


# 4 -------------------------------------------------------------------------------------------------
def test_two_models_from_one_config_object_any_order():
    cfg = T.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        initializer_range=0.25)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    m1 = T.LlamaForCausalLM(cfg).eval()
    m2 = T.LlamaForCausalLM(cfg).eval()
    assert m1.config is m2.config
    ids, mask = _prompt()
    base1, base2 = gen(m1, ids, mask), gen(m2, ids, mask)
    kv = KVSmoothConfig(layers="all")
    with smooth(m1, kv):
        alone1 = gen(m1, ids, mask)
    with smooth(m2, kv):
        alone2 = gen(m2, ids, mask)
    for first_out in (True, False):
        s1, s2 = attach(m1, kv), attach(m2, kv)
        assert torch.equal(gen(m1, ids, mask), alone1) and torch.equal(gen(m2, ids, mask), alone2)
        (s1 if first_out else s2).remove()
        assert torch.equal(gen(m1 if not first_out else m2, ids, mask), alone1 if not first_out else alone2)
        (s2 if first_out else s1).remove()
        assert torch.equal(gen(m1, ids, mask), base1) and torch.equal(gen(m2, ids, mask), base2)
        assert cfg._attn_implementation == "sdpa"


# 5 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_flex_attention_is_refused_clearly(site):
    m = tiny_llama(layers=2, attn="flex_attention")
    with pytest.raises(UnsupportedModelError, match="flex_attention.*'sdpa' or 'eager'"):
        with smooth(m, KVSmoothConfig(site=site, layers="all")):
            gen(m, *_prompt(), n=2)


# 6 -------------------------------------------------------------------------------------------------
def _grad_steps(model, site):
    ids, _ = _prompt()
    cache = DynamicCache(config=model.config)
    with smooth(model, KVSmoothConfig(site=site, **CFG)):
        out = model(input_ids=ids, cache=cache, use_cache=True)
        out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
        out.logits.sum().backward()


def test_gradients_cache_site_clear_error_kv_proj_works():
    model = tiny_llama(layers=3)
    with pytest.raises(SessionError, match="autograd.*kv_proj"):
        _grad_steps(model, "cache")
    model.zero_grad()
    _grad_steps(model, "kv_proj")
    assert model.model.layers[1].self_attn.k_proj.weight.grad is not None


# 7 -------------------------------------------------------------------------------------------------
def test_set_attn_implementation_inside_session_and_deepcopy_are_clear():
    model = tiny_llama(layers=3)
    with smooth(model, KVSmoothConfig(**CFG)):
        model.set_attn_implementation("eager")
        with pytest.raises(SessionError, match="set_attn_implementation"):
            gen(model, *_prompt(), n=2)
    model.set_attn_implementation("sdpa")
    with smooth(model, KVSmoothConfig(**CFG)):
        with pytest.raises(SessionError, match="deepcopy"):
            copy.deepcopy(model)
    clone = copy.deepcopy(model)  # after removal: a clean copy
    with smooth(clone, KVSmoothConfig(**CFG)) as s:
        gen(clone, *_prompt(), n=2)
    assert len(s.trace) == 1


# 8 -------------------------------------------------------------------------------------------------
def test_trace_memory_is_bounded(model):
    ids, mask = _prompt()
    with smooth(model, KVSmoothConfig(**CFG), trace=False) as s:
        for _ in range(3):
            gen(model, ids, mask, n=2)
    assert len(s.trace) == 0
    with smooth(model, KVSmoothConfig(**CFG), trace_runs=2) as s:
        for _ in range(4):
            gen(model, ids, mask, n=2)
    assert len(s.trace) == 2


def test_trace_reorder_is_linear_and_exact():
    tr = Trace([0], 1)
    tr.begin_run(3, 4)
    rows, perms = [], []
    g = torch.Generator().manual_seed(0)
    expected = []
    for step in range(6):
        r = torch.rand(3, 1, 1, generator=g)
        tr.record(**{"lambda": r, "score": r, "rank": r})
        rows.append(r)
        expected = [e.clone() for e in expected] + [r.clone()]
        p = torch.randint(0, 3, (3,), generator=g)
        first = tr.runs[-1].steps["lambda"][0]
        tr.reorder(p)
        assert tr.runs[-1].steps["lambda"][0] is first  # nothing re-indexed at reorder time
        expected = [e.index_select(0, p) for e in expected]
    assert torch.equal(tr.tensor("lambda"), torch.stack(expected))


# 9 -------------------------------------------------------------------------------------------------
def test_config_edges_give_clear_errors(tmp_path, model):
    for data, match in (({"window": 1e9}, "window: Input should be"), ({"window": 10**9}, "window: .*less than or equal to 4096"),
                        ({"window": True}, "window: Input should be a valid integer"),
                        ({"lambda_ref": True}, "lambda_ref: must be a number")):
        with pytest.raises(ConfigError, match=match):
            KVSmoothConfig.from_dict(data)
    files = (("dup.yaml", b"window: 5\nwindow: 7\n", "dup.yaml.*duplicate key 'window'"),
             ("dup.json", b'{"window": 5, "window": 7}', "dup.json.*duplicate key 'window'"),
             ("latin.yaml", "scorer: caf\xe9\n".encode("latin-1"), "latin.yaml' is not UTF-8"),
             ("deep.json", b"[" * 5000 + b"]" * 5000, "deep.json.*nested too deeply"),
             ("deep.yaml", b"a: " + b"[" * 100 + b"]" * 100, "deep.yaml.*nested too deeply"))
    for name, content, match in files:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=match):
            KVSmoothConfig.from_file(tmp_path / name)
    with pytest.raises(PlanError, match=r"overrides\[0\].layers: '10:20' selects no layer of this 6-layer model"):
        resolve(KVSmoothConfig(overrides=[{"layers": "10:20", "lambda_ref": 0.1}]), model)


def test_cli_config_validate_rejects_bad_scorer_params(tmp_path, capsys):
    from kvsmooth_hooks.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("scorer: {name: column_mass, params: {lag: -5}}\n")
    assert main(["config", "validate", str(path)]) != 0
    assert "lag" in capsys.readouterr().err
    schema = KVSmoothConfig.json_schema()
    forms = schema["$defs"]["ScorerSpec"]["anyOf"]
    lag = [f for f in forms if f.get("title") == "scorer 'column_mass'"][0]["properties"]["params"]["properties"]["lag"]
    assert lag["minimum"] == 1 and lag["type"] == "integer"


# 10 ------------------------------------------------------------------------------------------------
def test_smooth_prefill_with_record_deltas_at_cache_site(model):
    with smooth(model, KVSmoothConfig(smooth_prefill=True, **CFG), record_deltas=True) as s:
        gen(model, *_prompt(), n=4)
    assert s.trace.tensor("dk").shape[0] == 3 and float(s.trace.tensor("dk").max()) > 0


def test_resume_guard_ignores_toolkit_version(tmp_path):
    from kvsmooth_hooks.runner.store import RunSettingsError, guard

    cfg = KVSmoothConfig().to_dict()
    guard(tmp_path / "run.json", {"config": cfg, "n": 5}, "a run")
    guard(tmp_path / "run.json", {"config": {**cfg, "toolkit_version": "9.9.9"}, "n": 5}, "a run")
    with pytest.raises(RunSettingsError, match="config.window: 15 there, 3 now"):
        guard(tmp_path / "run.json", {"config": {**cfg, "window": 3}, "n": 5}, "a run")


def test_all_padding_row_is_named(model):
    ids, mask = _prompt(batch=2)
    mask[1] = 0
    with smooth(model, KVSmoothConfig(**CFG)):
        with pytest.raises(SessionError, match=r"sequence\(s\) \[1\] of the batch are padding only"):
            gen(model, ids, mask, n=2)


def test_reentering_the_same_session_keeps_hooks(model):
    s = smooth(model, KVSmoothConfig(**CFG))
    with s:
        n = len(s.handles)
        with s:
            pass
        assert s.attached and len(s.handles) == n
        gen(model, *_prompt(), n=2)
    assert not s.attached and len(s.trace) == 1


def test_continued_generate_is_a_new_trace_run(model):
    ids, mask = _prompt()
    with smooth(model, KVSmoothConfig(**CFG)) as s:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                             return_dict_in_generate=True)
        more = torch.cat([out.sequences, torch.tensor([[5, 6]])], 1)
        model.generate(input_ids=more, attention_mask=torch.ones_like(more), cache=out.past_key_values,
                       max_new_tokens=4, do_sample=False)
    assert len(s.trace) == 2
    assert [s.trace.tensor("lambda", run).shape[0] for run in (0, 1)] == [3, 3]


def _tiny_gemma3():
    txt = dict(vocab_size=160, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=256, initializer_range=0.25, num_key_value_heads=2, head_dim=8,
               sliding_window=4, layer_types=["sliding_attention", "full_attention"])
    vis = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
               patch_size=4)
    torch.manual_seed(0)
    m = T.Gemma3ForConditionalGeneration(T.Gemma3Config(text_config=txt, vision_config=vis, mm_tokens_per_image=4,
                                                       image_token_index=150, boi_token_index=151,
                                                       eoi_token_index=152)).eval()
    m.generation_config.eos_token_id = None
    return m


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_gemma3_multimodal_dict_masks(site):
    m = _tiny_gemma3()
    text = torch.randint(3, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([torch.full((2, 4), 150), text], 1)  # 4 image tokens + text
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # second prompt: text only, left padded (one image for the batch)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=(ids == 150).long(),
                  pixel_values=torch.randn(1, 3, 16, 16))
    with smooth(m, KVSmoothConfig(site=site, layers="all")) as s:
        m.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert s.state.first_index.tolist() == [0, 4]  # padding read from Gemma 3's mask dict
    assert s.trace.tensor("lambda").shape[:2] == (4, 2) and float(s.trace.tensor("lambda").max()) > 0


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_chunked_prefill_is_prompt_not_draft_verification(model, site):
    """generate(prefill_chunk_size=...) feeds the prompt in chunks: more prompt, not an error, same tokens;
    a left padding longer than the first chunk is still read right."""
    ids, mask = _prompt(batch=2, n=9)
    ids[1, :4], mask[1, :4] = 0, 0
    cfg = KVSmoothConfig(site=site, scorer="first_token_mass", **CFG)
    with smooth(model, cfg) as whole:
        ref = gen(model, ids, mask, n=6)
    with smooth(model, cfg) as chunked:
        out = gen(model, ids, mask, n=6, prefill_chunk_size=3)
    assert torch.equal(out, ref)
    assert chunked.state.first_index.tolist() == [0, 4]
    torch.testing.assert_close(chunked.trace.tensor("lambda"), whole.trace.tensor("lambda"))


def test_smooth_prefill_refuses_a_chunked_prompt(model):
    ids, mask = _prompt(n=9)
    with smooth(model, KVSmoothConfig(smooth_prefill=True, **CFG)):
        with pytest.raises(SessionError, match="smooth_prefill needs the whole prompt in one forward"):
            gen(model, ids, mask, n=3, prefill_chunk_size=4)
