"""A cache that reports 0 cached positions while its attention layers hold some (transformers 5.25's RecurrentGemma)
would make every decode step look like a new prompt, so nothing would be smoothed: refused with a clear error."""

import pytest
import torch
from transformers import DynamicCache

from kvsmooth_hooks import KVSmoothConfig, UnsupportedModelError, smooth
from tests.helpers import CACHE_KW, no_eos, tiny_llama


class _ZeroLengthCache(DynamicCache):
    """Holds its keys like any DynamicCache but reports no positions (what the 5.25 RecurrentGemma cache does)."""

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_cache_reporting_no_positions_is_refused(site):
    model = no_eos(tiny_llama(layers=4))
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    cfg = KVSmoothConfig(layers=[1, 2], site=site)
    with pytest.raises(UnsupportedModelError, match="reports 0 cached positions while cache layer 0 holds 6"):
        with smooth(model, cfg):
            model.generate(ids, max_new_tokens=3, do_sample=False, **{CACHE_KW: _ZeroLengthCache(config=model.config)})
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_ordinary_cache_is_not_refused():
    """The check reads nothing that a working cache would trip (the test above can fail only on the zero report)."""
    model = no_eos(tiny_llama(layers=4))
    ids = torch.randint(0, model.config.vocab_size, (1, 6))
    with smooth(model, KVSmoothConfig(layers=[1, 2])) as s:
        model.generate(ids, max_new_tokens=3, do_sample=False, **{CACHE_KW: DynamicCache(config=model.config)})
    assert s.trace.tensor("lambda").shape[0] == 2  # two decode steps smoothed (the third token needs no forward)
