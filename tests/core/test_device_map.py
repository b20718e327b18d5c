"""accelerate ``device_map``: per-sequence state lives on each layer's device; a split model keeps working.

A CPU-only machine cannot hold two real devices, so the split here is CPU + disk offload (accelerate
hooks move the offloaded layers' weights in at execution time); the GPU command is in docs/adapters.md.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")

from helpers import no_eos, tiny_llama  # noqa: E402
from kvsmooth_hooks import KVSmoothConfig, Session, get_adapter, smooth  # noqa: E402
from kvsmooth_hooks.core.adapters import GenericAdapter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
N = 8


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from transformers import LlamaForCausalLM

    model = tiny_llama(layers=4, initializer_range=0.25)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.layers.2": "disk", "model.layers.3": "disk",
                  "model.norm": "cpu", "lm_head": "cpu"}
    split = LlamaForCausalLM.from_pretrained(path, device_map=device_map, offload_folder=str(path / "offload"))
    return model, no_eos(split.eval())


def _batch():
    torch.manual_seed(2)
    ids = torch.randint(3, 128, (2, 9))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    return ids, mask


@pytest.mark.parametrize("site", ["cache", "kv_proj"])
def test_split_model_matches_the_whole_model(pair, site):
    model, split = pair
    assert split.hf_device_map["model.layers.3"] == "disk"
    ad = get_adapter(split)
    assert str(ad.layer_device(3)) == "cpu"  # offloaded: weights on meta, accelerate's execution device
    ids, mask = _batch()
    cfg = KVSmoothConfig(layers="all", site=site)
    with smooth(model, cfg) as s1:
        a = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
    with smooth(split, cfg) as s2:
        b = split.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, do_sample=False)
        assert all(str(rt.device) == "cpu" for rt in s2.layers.values())
    assert torch.equal(a, b)
    assert float(s2.trace.tensor("lambda").max()) > 0
    torch.testing.assert_close(s2.trace.tensor("lambda"), s1.trace.tensor("lambda"), atol=1e-6, rtol=0)


def test_groups_are_per_device():
    """Layers on different devices never share a batched coefficient group (no cross-device stack)."""
    model = tiny_llama(layers=4)

    class TwoDevices(GenericAdapter):
        def layer_device(self, layer):
            return torch.device("cuda", layer // 2)  # only read here, nothing is allocated

    s = Session(model, KVSmoothConfig(layers="all"), adapter=TwoDevices(model)).attach()
    try:
        assert len(s.groups) == 2
        assert [[rt.index for rt in g.layers] for g in s.groups] == [[0, 1], [2, 3]]
        assert {str(g.layers[0].device) for g in s.groups} == {"cuda:0", "cuda:1"}
    finally:
        s.remove()
