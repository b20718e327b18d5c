"""Vision-language models: only the language decoder is hooked; image tokens are prompt tokens."""

import pytest
import torch

from archs import VLMS
from kvsmooth_hooks import KVSmoothConfig, UnsupportedModelError, get_adapter, smooth


@pytest.fixture(scope="module", params=sorted(VLMS))
def vlm(request):
    return request.param, *VLMS[request.param]()


def gen(model, ids, extra, n=8):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **extra, max_new_tokens=n,
                          do_sample=False, output_logits=True, return_dict_in_generate=True)


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_vlm_generate_smooths_the_language_decoder_only(vlm, site):
    name, model, ids, extra = vlm
    ad = get_adapter(model)
    decoder = ad.decoder()
    base = gen(model, ids, extra)

    def counts():  # transformers itself may keep output-recording hooks on the vision tower
        return {n: len(m._forward_hooks) + len(m._forward_pre_hooks) for n, m in model.named_modules()}

    before = counts()
    with smooth(model, KVSmoothConfig(layers="all", site=site)) as s:
        hooked = {n for n, c in counts().items() if c > before[n]}
        out = gen(model, ids, extra)
    assert counts() == before
    prefix = next(n for n, m in model.named_modules() if m is decoder)
    assert hooked and all(n.startswith(prefix) for n in hooked), hooked  # no hook outside the language decoder
    assert not any("vision" in n or "visual" in n or "qformer" in n for n in hooked)
    assert any(not torch.equal(a, b) for a, b in zip(out.logits, base.logits))
    assert s.trace.runs[-1].prompt_len == ids.shape[1]  # image tokens are prompt: never smoothed
    assert s.trace.tensor("lambda").shape[:2] == (7, 2)
    with smooth(model, KVSmoothConfig.preset("off", layers="all", site=site)):
        off = gen(model, ids, extra)
    assert torch.equal(off.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(off.logits, base.logits))


def test_encoder_decoder_language_models_are_refused():
    from transformers import (InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipQFormerConfig,
                              InstructBlipVisionConfig, T5Config)

    tc = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    vc = InstructBlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=16, patch_size=8)
    qc = InstructBlipQFormerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, encoder_hidden_size=32)
    model = InstructBlipForConditionalGeneration(InstructBlipConfig(vision_config=vc.to_dict(), qformer_config=qc.to_dict(),
                                                                    text_config=tc.to_dict(), num_query_tokens=2))
    with pytest.raises(UnsupportedModelError, match="encoder-decoder model"):
        smooth(model, KVSmoothConfig())
