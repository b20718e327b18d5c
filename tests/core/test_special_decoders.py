"""Decoders whose earlier results were wrong (issue 20): AXK2's and HY-V4's sparse indexer (its attention applies the indexer's
mask only when the implementation is named "eager" / "sdpa": the session must not rename it, lambda 0 must stay
bit-identical) and Musicgen / Musicgen Melody (the decoder runs batch x codebooks ids summed into one stream per
sequence: one smoothing state per sequence)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kvsmooth_hooks import KVSmoothConfig, smooth

from kvsmooth_hooks.tiny_configs import build

pytestmark = pytest.mark.usefixtures("one_thread")
KW = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)


def _logits(model, config=None, **inp):
    if config is None:
        return torch.stack(model.generate(**inp, **KW).logits)
    with smooth(model, config) as session:
        out = torch.stack(model.generate(**inp, **KW).logits)
    return out, session


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("name", ["AXK2ForCausalLM", "HYV4ForCausalLM"])  # HY-V4 also has attention sinks
def test_sparse_indexer_lambda_zero_is_bit_identical(name, site):
    model = build(name, overrides={"index_topk": 4})  # the indexer keeps 4 of 12+ positions
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
    ids = torch.randint(4, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    base = _logits(model, input_ids=ids)
    zero, session = _logits(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0), input_ids=ids)
    assert torch.equal(zero, base)
    assert session.probe is None  # rows read inline: the implementation keeps its name
    smoothed, session = _logits(model, KVSmoothConfig(layers="all", site=site), input_ids=ids)
    assert session.trace.tensor("lambda").gt(0).all()  # every decode step smoothed every layer


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
@pytest.mark.parametrize("name", ["MusicgenForConditionalGeneration", "MusicgenMelodyForConditionalGeneration"])
def test_musicgen_codebook_batch_is_one_state_per_sequence(name, site):
    model = build(name)
    model.audio_encoder.decode = lambda *a, **k: SimpleNamespace(audio_values=torch.zeros(1))  # tiny codec: no audio
    model.generation_config.eos_token_id = None
    ids = torch.randint(4, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    inp = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    base = _logits(model, **inp)
    zero, _ = _logits(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0), **inp)
    smoothed, session = _logits(model, KVSmoothConfig(layers="all", site=site), **inp)
    assert torch.equal(zero, base)
    assert not torch.equal(smoothed, base)
    assert session.trace.tensor("lambda").shape[1] == 2  # two sequences, not 2 x codebooks


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_a_generate_that_feeds_its_whole_sequence_every_step_is_refused(site):
    """XLM's generate feeds the whole sequence plus a mask token at every step (several tokens a forward, no chunked
    prefill): no step is a decode step, so a session would smooth nothing. It must say so, not return unsmoothed text."""
    from kvsmooth_hooks import SessionError

    model = build("XLMWithLMHeadModel")
    ids = torch.randint(5, 50, (1, 5), generator=torch.Generator().manual_seed(0))
    cfg = KVSmoothConfig(layers="all", site=site, scorer={"name": "key_similarity"})
    with pytest.raises(SessionError, match="feeds its whole sequence again at every step"):
        with smooth(model, cfg):
            model.generate(ids, max_new_tokens=3, do_sample=False)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
