"""TransformerLens 4 ``TransformerBridge`` (``pip install kvsmooth-hooks[lens4]``): the same ``smooth(bridge, cfg)``
call, on both sites, equal to the session on the Hugging Face model it wraps (tokens and coefficients), and to
the hand-written reference loops.

Skips unless TransformerLens 4.x is installed (the ``[lens]`` extra installs 3.9, which has no bridge).
"""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest
import torch

try:
    _TL = metadata.version("transformer-lens")
except metadata.PackageNotFoundError:  # pragma: no cover - depends on the environment
    _TL = None
if _TL is None or not _TL.startswith("4."):
    pytest.skip(f"TransformerBridge needs TransformerLens 4.x (installed: {_TL})", allow_module_level=True)

from helpers import reference_cache_decode, tiny_llama  # noqa: E402
from kvsmooth_hooks import KVSmoothConfig, UnsupportedModelError, get_adapter, smooth  # noqa: E402
from kvsmooth_hooks.core.adapters.bridge import fix_bridge_cache  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
N = 8


def _boot(hf, folder):
    """A bridge over ``hf``, booted offline from a folder holding its config and a word-level tokenizer."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformer_lens.model_bridge import TransformerBridge

    vocab = {f"t{i}": i for i in range(hf.config.vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t0", bos_token="t1",
                              eos_token="t2").save_pretrained(folder)
    hf.config.save_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TransformerBridge.boot_transformers(str(folder), hf_model=hf)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = tiny_llama(layers=2, attn="eager")
    twin = tiny_llama(layers=2, attn="eager")  # same seed: the unwrapped copy the bridge results are compared to
    bridge = _boot(hf, tmp_path_factory.mktemp("bridge"))
    return twin, bridge


def _ids():
    return torch.randint(3, 128, (1, 7), generator=torch.Generator().manual_seed(3))


def _bridge_generate(bridge, ids):
    return bridge.generate(ids, max_new_tokens=N, do_sample=False, use_past_kv_cache=True, verbose=False)


def test_unfixed_bridge_cache_is_refused_then_fixed(pair):
    twin, bridge = pair
    if not getattr(bridge.original_model.model.layers[0].self_attn, "_kvsmooth_cache_fix", False):
        with pytest.raises(UnsupportedModelError, match="fix_bridge_cache"):
            with smooth(bridge, KVSmoothConfig(layers="all")):
                pass
    fix_bridge_cache(bridge)
    ids = _ids()
    plain = twin.generate(ids, max_new_tokens=N, do_sample=False)
    assert torch.equal(_bridge_generate(bridge, ids), plain)  # cached generation now equals Hugging Face's


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_bridge_equals_hf_session(pair, site):
    twin, bridge = pair
    fix_bridge_cache(bridge)
    ids = _ids()
    assert get_adapter(bridge).name == "transformer_bridge"
    base = _bridge_generate(bridge, ids)
    with smooth(bridge, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0)):
        assert torch.equal(_bridge_generate(bridge, ids), base)  # lambda 0: bit-identical tokens
    with smooth(bridge, KVSmoothConfig(layers="all", site=site)) as s:
        mine = _bridge_generate(bridge, ids)
    with smooth(twin, KVSmoothConfig(layers="all", site=site)) as t:
        theirs = twin.generate(ids, max_new_tokens=N, do_sample=False)
    assert not torch.equal(mine, base)
    assert torch.equal(mine, theirs)
    assert torch.allclose(s.trace.tensor("lambda"), t.trace.tensor("lambda"))
    n = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in bridge.modules())
    with smooth(bridge, KVSmoothConfig(layers="all", site=site)):
        pass
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in bridge.modules()) == n


def test_bridge_cache_site_matches_reference_loop(pair):
    twin, bridge = pair
    fix_bridge_cache(bridge)
    ids = _ids()
    ref_tokens, _, _ = reference_cache_decode(twin, ids, torch.ones_like(ids), N, layers=[0, 1])
    with smooth(bridge, KVSmoothConfig(layers="all", site="cache")):
        mine = _bridge_generate(bridge, ids)
    assert torch.equal(mine[:, ids.shape[1]:], ref_tokens)
