"""Issue 12's kernel-op budget per smoothed layer and decode step, counted with experiments/count_kernels.py."""

import pytest
import torch

import count_kernels
from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig, smooth


def _ops_per_step(model, cfg, ids):
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def vanilla(m, inp, n):
        m.generate(**inp, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def smoothed(m, inp, n):
        with smooth(m, cfg):
            m.generate(**inp, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    with torch.no_grad():
        base, _ = count_kernels.profile_decode(model, inputs, 4, vanilla)
        ours, ops = count_kernels.profile_decode(model, inputs, 4, smoothed)
    return base, ours, ops


@pytest.mark.parametrize("site,per_layer", [("cache", 1), ("kv_proj", 2)])
def test_kernel_budget_default_config(site, per_layer):
    """Issue 12 targets 1 and 4 on a tiny Llama: at most 3 added kernel ops per smoothed layer and decode step
    at the default config (row_entropy, trace on), and the marginal cost of a smoothed layer: its logits op
    (baddbmm), plus at kv_proj one fused blend of its key and value (Llama reads its key projection only after the
    value projection ran: the value hook blends both)."""
    model = tiny_llama(layers=16)  # as deep as a small LM: the fixed per-step ops spread over 12 smoothed layers
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))
    base, all_layers, ops = _ops_per_step(model, KVSmoothConfig(site=site), ids)  # default layers 3..14: 12 layers
    _, half, _ = _ops_per_step(model, KVSmoothConfig(site=site, layers="3:9"), ids)  # 6 layers
    assert base > 100
    assert (all_layers - base) / 12 <= 3, ops
    assert all_layers / base <= 1.10, ops
    assert all_layers - half == 6 * per_layer, ops
    if site == "kv_proj":
        assert ops.get("aten::_foreach_lerp_", 0) == 12 and "aten::lerp_" not in ops, ops


def test_kv_proj_blends_key_in_its_own_hook_where_the_attention_reads_it_first():
    """Qwen 3 normalises the key projection's output (k_norm) before the value projection runs: one lerp_ per
    projection, each in its own hook (a deferred key blend would not reach the attention)."""
    from tiny_models import build

    model = build("qwen3")
    ids = torch.randint(3, 128, (1, 10), generator=torch.Generator().manual_seed(0))
    _, _, ops = _ops_per_step(model, KVSmoothConfig(site="kv_proj", layers="all"), ids)
    assert ops.get("aten::lerp_", 0) == 2 * 2 and "aten::_foreach_lerp_" not in ops, ops
