"""Core invariants of the hook machinery on tiny random Llamas (no downloads)."""

import copy

import pytest
import torch
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from helpers import reference_cache_decode, reference_kvproj_decode, tiny_llama
from kvsmooth_hooks import KVSmoothConfig, SessionError, UnsupportedModelError, attach, smooth

LAYERS = [1, 2, 3, 4]
CFG = dict(layers="1:-1")


def count_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def kvsmooth_registry_keys():
    return [k for k in AttentionInterface._global_mapping if "kvsmooth" in k] + [
        k for k in AttentionMaskInterface._global_mapping if "kvsmooth" in k
    ]


@pytest.fixture
def model():
    return tiny_llama()



def gen(model, ids, mask, n=12, **kw):
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, **kw)


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_hooks_one_per_layer_inside_none_after(model, batch, site):
    """cache site: one attention-row listener per smoothed layer, no module hook per layer (every layer's entries are
    read from the decoder's cache when the forward ends); kv_proj: one hook on each of k_proj and v_proj."""
    from kvsmooth_hooks.core.probe import _LISTENERS

    assert count_hooks(model) == 0
    attn = [model.model.layers[i].self_attn for i in range(6)]
    with smooth(model, KVSmoothConfig(site=site, **CFG)) as session:
        assert {i for i in range(6) if id(attn[i]) in _LISTENERS} == set(LAYERS)
        per_site = 0 if site == "cache" else 2
        for i in range(6):
            n = len(attn[i]._forward_hooks) + len(attn[i].k_proj._forward_hooks) + len(attn[i].v_proj._forward_hooks)
            assert n == (per_site if i in LAYERS else 0), i
        assert count_hooks(model) == per_site * len(LAYERS) + 2  # + decoder pre/post hooks
        assert len(session.handles) == count_hooks(model)
        gen(model, *batch)
    assert count_hooks(model) == 0
    assert not any(id(a) in _LISTENERS for a in attn)
    assert kvsmooth_registry_keys() == []
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_lambda_zero_is_identity_and_outputs_return_after_exit(model, batch, site):
    ids, mask = batch
    base = gen(model, ids, mask, output_logits=True, return_dict_in_generate=True)
    for cfg in (KVSmoothConfig(site=site, policy="fixed", lambda_ref=0.0, **CFG), KVSmoothConfig.preset("off", site=site, layers="all")):
        with smooth(model, cfg) as s:
            out = gen(model, ids, mask, output_logits=True, return_dict_in_generate=True)
        assert torch.equal(out.sequences, base.sequences)
        assert all(torch.equal(a, b) for a, b in zip(out.logits, base.logits))
        assert s.trace.tensor("lambda").abs().max() == 0
    with smooth(model, KVSmoothConfig(site=site, **CFG)):
        smoothed = gen(model, ids, mask, n=20)
    assert not torch.equal(smoothed, gen(model, ids, mask, n=20))  # smoothing does change this model
    after = gen(model, ids, mask, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(after.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(after.logits, base.logits))


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_exception_inside_context_removes_everything(model, batch, site):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with smooth(model, KVSmoothConfig(site=site, **CFG)):
            gen(model, *batch, n=3)
            raise Boom
    assert count_hooks(model) == 0 and kvsmooth_registry_keys() == []

    def bad_forward_hook(mod, args, out):  # generation itself raises mid-way
        raise Boom

    handle = model.model.layers[5].mlp.register_forward_hook(bad_forward_hook)
    try:
        with pytest.raises(Boom):
            with smooth(model, KVSmoothConfig(site=site, **CFG)):
                gen(model, *batch, n=3)
    finally:
        handle.remove()
    assert count_hooks(model) == 0 and kvsmooth_registry_keys() == []
    assert not hasattr(model, "_kvsmooth_session")


def test_cache_site_matches_reference_loop(model, batch):
    ids, mask = batch
    with smooth(model, KVSmoothConfig(**CFG)) as s:
        out = gen(model, ids, mask, n=24, return_dict_in_generate=True)
    ref_tokens, ref_cache, ref_lams = reference_cache_decode(model, ids, mask, 24, LAYERS)
    assert torch.equal(out.sequences[:, ids.shape[1]:], ref_tokens)
    valid = torch.cat([mask, torch.ones(2, 23, dtype=mask.dtype)], 1).bool()
    for l in range(6):
        for name in ("keys", "values"):
            a = getattr(out.past_key_values.layers[l], name)
            b = getattr(ref_cache.layers[l], name)
            diff = (a - b).abs().amax(dim=(1, 3))  # [B, T]
            assert diff[valid].max() < 1e-4, (l, name)
    lam = s.trace.tensor("lambda")  # [S, B, La, H]
    for j, l in enumerate(LAYERS):
        for seq in range(2):
            assert torch.allclose(lam[:, seq, j, 0], torch.tensor(ref_lams[l][seq]), atol=1e-6)


def test_kv_proj_site_matches_its_reference_loop(model, batch):
    ids, mask = batch
    with smooth(model, KVSmoothConfig(site="kv_proj", **CFG)):
        out = gen(model, ids, mask, n=24, return_dict_in_generate=True)
    ref_tokens, ref_cache = reference_kvproj_decode(model, ids, mask, 24, LAYERS)
    assert torch.equal(out.sequences[:, ids.shape[1]:], ref_tokens)
    valid = torch.cat([mask, torch.ones(2, 23, dtype=mask.dtype)], 1).bool()
    for l in range(6):
        diff = (out.past_key_values.layers[l].keys - ref_cache.layers[l].keys).abs().amax(dim=(1, 3))
        assert diff[valid].max() < 1e-4


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_left_padded_batch_equals_each_prompt_alone(model, site):
    torch.manual_seed(3)
    a, b = torch.randint(3, 128, (1, 9)), torch.randint(3, 128, (1, 5))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.cat([torch.ones(1, 9), torch.cat([torch.zeros(1, 4), torch.ones(1, 5)], 1)]).long()
    cfg = KVSmoothConfig(site=site, **CFG)
    with smooth(model, cfg):
        together = gen(model, ids, mask, n=16)
        alone_a = gen(model, a, torch.ones_like(a), n=16)
        alone_b = gen(model, b, torch.ones_like(b), n=16)
    assert torch.equal(together[0, 9:], alone_a[0, 9:])
    assert torch.equal(together[1, 9:], alone_b[0, 5:])


def test_right_padding_is_refused(model):
    ids = torch.randint(3, 128, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with smooth(model, KVSmoothConfig(**CFG)):
        with pytest.raises(SessionError, match="padding_side = 'left'"):
            gen(model, ids, mask, n=3)
    assert count_hooks(model) == 0


def test_sampling_and_trace_shapes(model, batch):
    with smooth(model, KVSmoothConfig(**CFG)) as s:
        torch.manual_seed(0)
        out = model.generate(input_ids=batch[0], attention_mask=batch[1], max_new_tokens=8, do_sample=True, top_k=20)
        gen(model, *batch, n=5)
    assert out.shape == (2, 15)
    assert len(s.trace) == 2  # one run per generate call; state reset in between
    assert s.trace.tensor("lambda", run=0).shape == (7, 2, 4, 2)
    assert s.trace.tensor("lambda", run=1).shape == (4, 2, 4, 2)
    lam = s.trace.tensor("lambda", run=1)
    assert lam.min() >= 0.7 - 1e-6 and lam.max() <= 1.0 + 1e-6  # clip band of lambda_ref 0.9


def test_beam_search_state_follows_cache_reorders(model, batch):
    ids, mask = batch
    with smooth(model, KVSmoothConfig(**CFG)) as s:
        calls = []
        original = s.state.reorder
        s.state.reorder = lambda idx: (calls.append(idx.clone()), original(idx))
        out = gen(model, ids, mask, n=10, num_beams=3, num_return_sequences=2)
    assert out.shape == (4, 17)
    assert calls, "beam search never reordered the smoothing state"
    assert s.trace.tensor("lambda").shape[1] == 6  # 2 prompts x 3 beams


def test_two_models_side_by_side():
    m1, m2 = tiny_llama(seed=0), tiny_llama(seed=1)
    ids = torch.randint(3, 128, (1, 6))
    mask = torch.ones_like(ids)
    with smooth(m1, KVSmoothConfig(**CFG)):
        alone1 = gen(m1, ids, mask, n=12)
    with smooth(m2, KVSmoothConfig(site="kv_proj", **CFG)):
        alone2 = gen(m2, ids, mask, n=12)
    with smooth(m1, KVSmoothConfig(**CFG)) as s1, smooth(m2, KVSmoothConfig(site="kv_proj", **CFG)) as s2:
        assert s1.probe.key == s2.probe.key == "sdpa_kvsmooth"  # one shared implementation, listeners per module
        both1, both2 = gen(m1, ids, mask, n=12), gen(m2, ids, mask, n=12)
    assert torch.equal(both1, alone1) and torch.equal(both2, alone2)
    assert kvsmooth_registry_keys() == []


def test_one_session_per_model_and_attach_handle(model, batch):
    handle = attach(model, KVSmoothConfig(**CFG))
    try:
        with pytest.raises(SessionError, match="already has an active kvsmooth session"):
            attach(model, KVSmoothConfig(**CFG))
        gen(model, *batch, n=4)
        assert len(handle.trace) == 1
    finally:
        handle.remove()
    assert count_hooks(model) == 0


def test_pipeline_works_inside_session(model):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, pipeline

    vocab = {f"w{i}": i for i in range(128)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w1"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w1", pad_token="w0", eos_token="w2")
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    base = pipe("w5 w9 w17 w33", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    with smooth(model, KVSmoothConfig(policy="fixed", lambda_ref=0.0, **CFG)):
        same = pipe("w5 w9 w17 w33", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    with smooth(model, KVSmoothConfig(**CFG)) as s:
        pipe("w5 w9 w17 w33", max_new_tokens=10, do_sample=False)
    assert same == base
    assert s.trace.tensor("lambda").shape[0] == 9


def test_unsupported_models_are_named():
    from transformers import MambaConfig, MambaForCausalLM

    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, state_size=4))
    with pytest.raises(UnsupportedModelError, match="MambaForCausalLM: no self-attention layer .*MambaMixer"):
        smooth(mamba, KVSmoothConfig())
    with pytest.raises(UnsupportedModelError, match="Linear is not a Hugging Face"):
        smooth(torch.nn.Linear(2, 2), KVSmoothConfig())


def test_row_capture_matches_eager_probabilities():
    """The probe's row equals eager attention probabilities within 1e-5 (GQA and padding)."""
    from kvsmooth_hooks.core.probe import query_probs

    model = tiny_llama()
    ids = torch.randint(3, 128, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    captured = {}
    model.set_attn_implementation("eager")
    eager = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    with smooth(model, KVSmoothConfig(layers="all")) as s:
        for i, rt in s.layers.items():
            def listener(module, query, key, m, kwargs, weights, i=i):
                assert weights is None  # sdpa ran, not eager
                captured[i] = query_probs(module, query, key, m, kwargs, rows=slice(None))
            s.probe.listen(rt.attn, listener)
        s.kind = "decode"
        model(input_ids=ids, attention_mask=mask)
    for i in range(6):
        got = captured[i]
        assert (got - eager[i]).abs()[1].max() < 1e-5
        assert (got - eager[i]).abs()[0, :, 3:].max() < 1e-5  # padded query rows are meaningless


def test_head_granularity_gives_per_kv_head_lambdas(model, batch):
    with smooth(model, KVSmoothConfig(granularity="head", **CFG)) as s:
        gen(model, *batch, n=20)
    score = s.trace.tensor("score")
    assert score.shape[-1] == 2 and not torch.equal(score[..., 0], score[..., 1])
    # on random weights every head's entropy grows with the context, so FIFO ranks coincide;
    # the linear policy shows the per-head coefficients directly
    with smooth(model, KVSmoothConfig(granularity="head", policy="linear", **CFG)) as s:
        gen(model, *batch, n=20)
    lam = s.trace.tensor("lambda")
    assert not torch.equal(lam[..., 0], lam[..., 1])


@pytest.mark.parametrize("from_step", ["prefill", "decode"])
def test_cache_site_layer_writing_another_cache_raises(batch, from_step):
    """The cache site reads every layer's entries from the decoder's cache when the forward ends; a layer whose
    attention writes some other cache object must raise, not be skipped silently: never written (from the prefill
    on) or no longer rewritten (from the first decode step on: its keys stay the same tensor)."""
    from transformers import DynamicCache

    model = tiny_llama()
    attn = model.model.layers[2].self_attn
    other = [DynamicCache(config=model.config)]
    original = attn.forward

    def forward(hidden_states, *args, **kwargs):
        if from_step == "prefill" or hidden_states.shape[1] == 1:
            for name in ("cache", "past_key_values"):
                if kwargs.get(name) is not None:
                    if from_step == "decode" and not other[0].get_seq_length(2):  # a copy of the prompt's cache
                        other[0] = copy.deepcopy(kwargs[name])
                    kwargs[name] = other[0]
        return original(hidden_states, *args, **kwargs)

    attn.forward = forward
    match = "did not write the cache" if from_step == "prefill" else "did not change during this decode step"
    with pytest.raises((SessionError, UnsupportedModelError), match=f"layer 2.*{match}"):
        with smooth(model, KVSmoothConfig(**CFG)):
            gen(model, *batch)
    del attn.forward
    with smooth(model, KVSmoothConfig(**CFG)):  # the same model without the detour smooths fine
        gen(model, *batch)
